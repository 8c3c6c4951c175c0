//! Signatures → bound types: a `forward`'s declared tensor types are evaluated and
//! unified with the values passed. A dim name that is not a compile-time value (`B`,
//! `T`) binds to what it meets, `...` binds the leading dims, and a mismatch is an error
//! that shows both shapes; the return value is checked the same way.

use super::forward::{floor_div, Builder, Frame, RValue};
use crate::error::Error;
use crate::graph::dim::Dim;
use crate::graph::types::{DType, TensorType};
use modelc_grammar::ast::{self, BinaryOp, Expr, ExprKind, Span, TypeKind};
use modelc_grammar::Diagnostic;

impl Builder<'_> {
    /// A declared tensor type with its dims evaluated; unknown dim names become symbols.
    pub(super) fn declared_type(
        &mut self,
        ty: &ast::Type,
        frame: &mut Frame,
        actual: Option<&TensorType>,
    ) -> Result<TensorType, Error> {
        let TypeKind::Tensor { dtype, dims } = &ty.kind else {
            return Err(self.err(
                frame,
                Diagnostic::error("`forward` arguments and results are tensors", ty.span)
                    .with_label("not a tensor type")
                    .with_help("write a shape, as in `x: [B, T, d]` or `ids: i32[B, T]`"),
            ));
        };
        let dtype = match dtype {
            Some(d) => DType::parse(&d.name).ok_or_else(|| {
                self.err(
                    frame,
                    Diagnostic::error(format!("unknown dtype `{}`", d.name), d.span).with_label("not a dtype"),
                )
            })?,
            None => actual.map_or(self.act, |a| a.dtype),
        };
        let ellipsis_at = dims.iter().position(|d| matches!(d, ast::Dim::Ellipsis(_)));
        let mut shape = Vec::new();
        let n_fixed = dims.len() - usize::from(ellipsis_at.is_some());
        if let (Some(a), Some(_)) = (actual, ellipsis_at) {
            if a.rank() < n_fixed {
                return Err(self.err(
                    frame,
                    Diagnostic::error(format!("expected at least {n_fixed} dims, found {}", a.shape_text()), ty.span),
                ));
            }
        } else if let Some(a) = actual {
            if a.rank() != dims.len() {
                return Err(self.mismatch(frame, ty, a, ty.span));
            }
        }
        for (i, d) in dims.iter().enumerate() {
            match d {
                ast::Dim::Ellipsis(span) => {
                    let lead = match actual {
                        Some(a) => a.shape[..a.rank() - n_fixed].to_vec(),
                        None => match &frame.ellipsis {
                            Some(l) => l.clone(),
                            None => {
                                return Err(self.err(
                                    frame,
                                    Diagnostic::error("`...` here has no dims to stand for", *span)
                                        .with_label("unbound `...`")
                                        .with_help("`...` in a result type repeats the `...` of an argument"),
                                ))
                            }
                        },
                    };
                    match &frame.ellipsis {
                        Some(prev) if actual.is_some() && *prev != lead => {
                            return Err(self.mismatch(frame, ty, actual.expect("checked"), ty.span));
                        }
                        _ => frame.ellipsis = Some(lead.clone()),
                    }
                    shape.extend(lead);
                }
                ast::Dim::Expr(e) => {
                    let actual_dim = actual.map(|a| {
                        let j = match ellipsis_at {
                            Some(at) if i > at => a.rank() - (dims.len() - i),
                            _ => i,
                        };
                        a.shape[j].clone()
                    });
                    // An unbound name binds to the dim it meets.
                    if let ExprKind::Name(n) = &e.kind {
                        let known = frame.symbols.contains_key(&n.name)
                            || frame.instance.statics.iter().any(|(k, _)| *k == n.name)
                            || self.program.modules[frame.module].names.contains_key(&n.name);
                        if !known {
                            let dim = actual_dim.clone().unwrap_or_else(|| Dim::symbol(&n.name));
                            frame.symbols.insert(n.name.clone(), dim.clone());
                            shape.push(dim);
                            continue;
                        }
                    }
                    let dim = self.dim_value(e, frame)?;
                    if let Some(a) = &actual_dim {
                        if *a != dim {
                            return Err(self.mismatch(frame, ty, actual.expect("checked"), ty.span));
                        }
                    }
                    shape.push(dim);
                }
            }
        }
        let out = TensorType::new(dtype, shape);
        if let Some(a) = actual {
            let dtype_ok = match dtype_written(ty) {
                Some(_) => a.dtype == out.dtype,
                None => true,
            };
            if !dtype_ok {
                return Err(self.err(
                    frame,
                    Diagnostic::error(format!("expected {out}, found {a}"), ty.span).with_label("dtype differs"),
                ));
            }
        }
        Ok(out)
    }

    pub(super) fn mismatch(&self, frame: &Frame, ty: &ast::Type, actual: &TensorType, span: Span) -> Error {
        let expected = self.type_text(ty, frame);
        self.err(
            frame,
            Diagnostic::error(format!("expected {expected}, found {}", actual.shape_text()), span)
                .with_label("shape mismatch"),
        )
    }

    /// The declared type with what is known substituted, for messages: `[B, T, 256]`.
    pub(super) fn type_text(&self, ty: &ast::Type, frame: &Frame) -> String {
        let TypeKind::Tensor { dims, .. } = &ty.kind else { return "a tensor".into() };
        let dims: Vec<String> = dims
            .iter()
            .map(|d| match d {
                ast::Dim::Ellipsis(_) => "...".to_string(),
                ast::Dim::Expr(e) => match &e.kind {
                    ExprKind::Name(n) if frame.symbols.contains_key(&n.name) => frame.symbols[&n.name].to_string(),
                    _ => self
                        .dim_value(e, frame)
                        .map(|d| d.to_string())
                        .unwrap_or_else(|_| modelc_grammar::format::flat(e)),
                },
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }

    /// A dim expression: constants, block parameters and bound symbols, with `+ - * /`.
    pub(super) fn dim_value(&self, e: &Expr, frame: &Frame) -> Result<Dim, Error> {
        match &e.kind {
            ExprKind::Name(n) if frame.symbols.contains_key(&n.name) => Ok(frame.symbols[&n.name].clone()),
            ExprKind::Binary { op, lhs, rhs }
                if matches!(op, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div) =>
            {
                let (l, r) = (self.dim_value(lhs, frame)?, self.dim_value(rhs, frame)?);
                Ok(match op {
                    BinaryOp::Add => l.add(&r),
                    BinaryOp::Sub => l.sub(&r),
                    BinaryOp::Mul => l.mul(&r),
                    _ if l.as_constant().is_some() && r.as_constant().is_some_and(|c| c != 0) => {
                        Dim::constant(floor_div(l.as_constant().unwrap_or(0), r.as_constant().unwrap_or(1)))
                    }
                    _ => l.div_exact(&r).ok_or_else(|| {
                        self.err(
                            frame,
                            Diagnostic::error(format!("{l} is not divisible by {r}"), e.span).with_label("inexact dim"),
                        )
                    })?,
                })
            }
            _ => {
                let n = frame.scope(self).int(e, "a dim")?;
                Ok(Dim::constant(n))
            }
        }
    }

    pub(super) fn check_return(
        &mut self,
        ret: &ast::Type,
        v: &RValue,
        frame: &mut Frame,
        span: Span,
    ) -> Result<(), Error> {
        match (&ret.kind, v) {
            (TypeKind::Tuple(types), RValue::Tuple(values)) if types.len() == values.len() => {
                for (t, v) in types.iter().zip(values) {
                    self.check_return(t, v, frame, span)?;
                }
                Ok(())
            }
            (TypeKind::Tensor { .. }, RValue::Tensor(t)) => {
                let actual = self.ty(*t).clone();
                self.declared_type(ret, frame, Some(&actual)).map(|_| ()).map_err(|mut e| {
                    e.diag.span = span;
                    e.diag.label = format!("returns {}", actual.shape_text());
                    e.diag.message = format!("wrong return shape: {}", e.diag.message);
                    e
                })
            }
            _ => Err(self.err(
                frame,
                Diagnostic::error(format!("`forward` is declared to return {}", self.type_text(ret, frame)), span)
                    .with_label("returns something else"),
            )),
        }
    }
}

pub(super) fn dtype_written(ty: &ast::Type) -> Option<&ast::Ident> {
    match &ty.kind {
        TypeKind::Tensor { dtype, .. } => dtype.as_ref(),
        _ => None,
    }
}
