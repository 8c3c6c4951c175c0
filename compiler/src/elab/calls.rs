//! `forward` bodies and calls → inlined Graph IR: statements run in a `Frame`, a call of
//! a sub-block is inlined under its instance path as scope (`blocks.0.attn`), `repeat`
//! copies run in order, and an error inside a library block is reported at the user's
//! call. P-tuning's virtual tokens are spliced in and out here.

use super::forward::{Builder, Frame, RValue, MAX_DEPTH};
use super::instance::{Instance, Member};
use super::value::Value;
use crate::error::{suggest, Error, FileId};
use crate::graph::dim::Dim;
use crate::graph::op::Op;
use crate::graph::types::DType;
use crate::graph::ValueId;
use modelc_grammar::ast::{self, CopiesKind, Expr, ExprKind, Span, StmtKind};
use modelc_grammar::Diagnostic;

impl Builder<'_> {
    /// Runs a `forward` body in `frame`; returns what it returns.
    pub(super) fn body(&mut self, fwd: &ast::Forward, frame: &mut Frame) -> Result<RValue, Error> {
        for stmt in &fwd.body {
            match &stmt.kind {
                StmtKind::Let { names, value } => {
                    let v = self.expr(value, frame)?;
                    let values = match (names.len(), v) {
                        (1, v) => vec![v],
                        (n, RValue::Tuple(items)) if items.len() == n => items,
                        (n, other) => {
                            let found = match &other {
                                RValue::Tuple(items) => format!("{} values", items.len()),
                                _ => "one value".into(),
                            };
                            return Err(self.err(
                                frame,
                                Diagnostic::error(format!("{n} names but {found}"), value.span)
                                    .with_label("cannot be split"),
                            ));
                        }
                    };
                    for (name, v) in names.iter().zip(values) {
                        if let Some((_, first)) = frame.locals.get(&name.name) {
                            return Err(self.err(
                                frame,
                                Diagnostic::error(format!("`{}` is assigned twice", name.name), name.span)
                                    .with_label("second assignment")
                                    .with_secondary(*first, "first assigned here")
                                    .with_help("values are single-assignment: give the new value its own name"),
                            ));
                        }
                        frame.locals.insert(name.name.clone(), (v, name.span));
                    }
                }
                StmtKind::AuxLoss { name, value } | StmtKind::Metric { name, value } => {
                    let v = self.expr(value, frame)?;
                    let v = self.scalar_tensor(v, frame, value.span, matches!(stmt.kind, StmtKind::AuxLoss { .. }))?;
                    let full = frame.join(&name.name);
                    match stmt.kind {
                        StmtKind::AuxLoss { .. } => self.graph.aux_losses.push((full, v)),
                        _ => self.graph.metrics.push((full, v)),
                    }
                }
                StmtKind::Return(e) => {
                    if let Some(after) = fwd.body.last().filter(|last| last.span != stmt.span) {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("`return` must be the last statement", after.span)
                                .with_label("never runs")
                                .with_secondary(stmt.span, "returns here"),
                        ));
                    }
                    let v = self.expr(e, frame)?;
                    let v = match &frame.instance.prompt {
                        Some(site) => self.drop_prompt(v, site, frame, e.span)?,
                        None => v,
                    };
                    if let Some(ret) = &fwd.ret {
                        self.check_return(ret, &v, frame, e.span)?;
                    }
                    return Ok(v);
                }
            }
        }
        let span = fwd.ret.as_ref().map_or(Span::default(), |t| t.span);
        Err(self.err(frame, Diagnostic::error("`forward` ends without `return`", span).with_label("nothing returned")))
    }

    pub(super) fn scalar_tensor(&mut self, v: RValue, frame: &Frame, span: Span, aux: bool) -> Result<ValueId, Error> {
        let what = if aux { "an `aux_loss`" } else { "a `metric`" };
        // A metric may also be a vector of statically known length (per-expert load): it
        // is reported as a JSON array.
        let vector =
            |ty: &crate::graph::types::TensorType| !aux && ty.rank() == 1 && ty.shape[0].as_constant().is_some();
        match v {
            RValue::Tensor(t) if self.ty(t).rank() == 0 || vector(self.ty(t)) => Ok(t),
            RValue::Tensor(t) => Err(self.err(
                frame,
                Diagnostic::error(
                    format!(
                        "{what} must be a scalar{}, found {}",
                        if aux { "" } else { " or a vector of known length" },
                        self.ty(t).shape_text()
                    ),
                    span,
                )
                .with_label("not a scalar")
                .with_help("reduce it first, for example with `mean(x)`"),
            )),
            RValue::Static(Value::Int(i)) => Ok(self.scalar(i as f64, DType::F32, frame)),
            RValue::Static(Value::Float(x)) => Ok(self.scalar(x, DType::F32, frame)),
            _ => Err(self.err(frame, Diagnostic::error(format!("{what} must be a number"), span).with_label("here"))),
        }
    }

    pub(super) fn flatten_tensors(
        &self,
        v: &RValue,
        out: &mut Vec<ValueId>,
        frame: &Frame,
        span: Span,
    ) -> Result<(), Error> {
        match v {
            RValue::Tensor(t) => out.push(*t),
            RValue::Tuple(items) | RValue::List(items) => {
                for i in items {
                    self.flatten_tensors(i, out, frame, span)?;
                }
            }
            _ => return Err(self.err(frame, Diagnostic::error("a model returns tensors", span).with_label("here"))),
        }
        Ok(())
    }

    pub(super) fn call_instance(
        &mut self,
        instance: &Instance,
        prefix: String,
        args: &[(Option<String>, RValue, Span)],
        caller: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err(caller, Diagnostic::error("calls nested too deeply", span).with_label("here")));
        }
        let fwd = self.forward_def(instance)?;
        let mut frame = Frame::new(instance, prefix, self);
        // Match arguments to the signature, then unify each tensor with its type.
        let mut given: Vec<Option<(RValue, Span)>> = vec![None; fwd.params.len()];
        let mut positional = 0;
        for (name, value, aspan) in args {
            let i = match name {
                None => {
                    positional += 1;
                    positional - 1
                }
                Some(n) => match fwd.params.iter().position(|p| &p.name.name == n) {
                    Some(i) => i,
                    None => {
                        let mut d = Diagnostic::error(
                            format!("`{}.forward` has no argument `{n}`", instance.block_name),
                            *aspan,
                        )
                        .with_label("unknown keyword argument");
                        if let Some(s) = suggest(n, fwd.params.iter().map(|p| p.name.name.as_str())) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        return Err(self.err(caller, d));
                    }
                },
            };
            if i >= fwd.params.len() {
                return Err(self.err(
                    caller,
                    Diagnostic::error(
                        format!("`{}` takes {} argument(s)", instance.block_name, fwd.params.len()),
                        *aspan,
                    )
                    .with_label("extra argument"),
                ));
            }
            if given[i].is_some() {
                return Err(self.err(
                    caller,
                    Diagnostic::error(format!("`{}` is given twice", fwd.params[i].name.name), *aspan)
                        .with_label("second value"),
                ));
            }
            given[i] = Some((value.clone(), *aspan));
        }
        for (p, g) in fwd.params.iter().zip(given) {
            let value = match g {
                Some((RValue::Tensor(t), aspan)) => {
                    let actual = self.ty(t).clone();
                    let ty = p.ty.clone();
                    if let Err(e) = self.declared_type(&ty, &mut frame, Some(&actual)) {
                        // Report at the call, in the caller's file, with both shapes.
                        let expected = self.type_text(&ty, &frame);
                        return Err(self.err(
                            caller,
                            Diagnostic::error(
                                format!(
                                    "`{}` expects `{}` as {expected}, found {}",
                                    instance.block_name,
                                    p.name.name,
                                    if expected == actual.shape_text() {
                                        actual.to_string()
                                    } else {
                                        actual.shape_text()
                                    }
                                ),
                                aspan,
                            )
                            .with_label(format!("this is {}", actual.shape_text()))
                            .with_help(e.diag.message.clone()),
                        ));
                    }
                    RValue::Tensor(t)
                }
                Some((other, _)) => other,
                None => match &p.default {
                    Some(d) => RValue::Static(frame.scope(self).eval(d)?),
                    None => {
                        return Err(self.err(
                            caller,
                            Diagnostic::error(
                                format!("missing argument `{}` of `{}`", p.name.name, instance.block_name),
                                span,
                            )
                            .with_label(format!("`{}` is required", p.name.name)),
                        ))
                    }
                },
            };
            frame.locals.insert(p.name.name.clone(), (value, p.name.span));
        }
        self.depth += 1;
        let result = self.body(&fwd, &mut frame);
        self.depth -= 1;
        result.map_err(|e| self.at_user_call(e, instance, caller, span))
    }

    /// An error inside a library block (the stdlib, an imported file) reached from the
    /// user's own file is reported at the user's call, where it can be fixed; where it
    /// arose inside the library goes into the help.
    pub(super) fn at_user_call(&self, mut e: Error, instance: &Instance, caller: &Frame, span: Span) -> Error {
        let root = FileId(0);
        if e.file == root || caller.file(self) != root {
            return e;
        }
        let inner = self.program.source(e.file);
        let place = format!("{}:{}", inner.name, inner.position(e.diag.span.start));
        let detail = if e.diag.label.is_empty() { String::new() } else { format!(" ({})", e.diag.label) };
        let help = format!("it arises inside `{}` at {place}{detail}", instance.block_name);
        e.diag.help = Some(match e.diag.help.take() {
            Some(h) => format!("{help}; {h}"),
            None => help,
        });
        e.diag.span = span;
        e.diag.label = format!("in this call of `{}`", instance.block_name);
        e.diag.secondary.clear();
        e.file = root;
        e
    }

    pub(super) fn call(
        &mut self,
        callee: &Expr,
        args: &[ast::Arg],
        frame: &mut Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        let ExprKind::Name(f) = &callee.kind else {
            return Err(self.err(
                frame,
                Diagnostic::error("only named blocks and primitives can be called", callee.span).with_label("here"),
            ));
        };
        let sub = if frame.locals.contains_key(&f.name) {
            None
        } else {
            frame.instance.members.iter().find_map(|m| match m {
                Member::Sub(s) if s.name == f.name => Some(s),
                _ => None,
            })
        };
        let mut values = Vec::with_capacity(args.len());
        for a in args {
            let value = match (&a.name, &a.value.kind, sub) {
                // A primitive's option may be a bare word (`gelu(x, approx: tanh)`).
                (Some(_), ExprKind::Name(n), None) => {
                    self.expr(&a.value, frame).unwrap_or_else(|_| RValue::Static(Value::Symbol(n.name.clone())))
                }
                _ => self.expr(&a.value, frame)?,
            };
            values.push((a.name.as_ref().map(|n| n.name.clone()), value, a.value.span));
        }
        match sub {
            Some(sub) => self.call_sub(&f.name, sub, &values, frame, span),
            None => self.primitive(&f.name, f.span, &values, frame, span),
        }
    }

    /// Inlines a call of sub-block `sub`; `repeat` copies run in order, the first
    /// positional argument flowing through them and the rest going to each.
    pub(super) fn call_sub(
        &mut self,
        name: &str,
        sub: &super::instance::Sub,
        args: &[(Option<String>, RValue, Span)],
        frame: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        match sub.copies {
            None => {
                let out = self.call_instance(&sub.instance, frame.join(name), args, frame, span)?;
                match &frame.instance.prompt {
                    Some(site) if site.after == name => self.prepend_prompt(out, site, frame, span),
                    _ => Ok(out),
                }
            }
            Some((CopiesKind::Repeat, n)) => {
                if !args.iter().any(|a| a.0.is_none()) {
                    return Err(self.err(
                        frame,
                        Diagnostic::error(
                            format!("`{name}` repeats a block: pass what flows through the copies positionally"),
                            span,
                        )
                        .with_label("no positional argument")
                        .with_help(format!(
                            "each copy's output is the next copy's first positional argument, as in `{name}(x)`"
                        )),
                    ));
                }
                let mut args = args.to_vec();
                let mut out = RValue::Static(Value::None);
                for i in 0..n {
                    out = self.call_instance(&sub.instance, format!("{}.{i}", frame.join(name)), &args, frame, span)?;
                    if let Some(first) = args.iter_mut().find(|a| a.0.is_none()) {
                        first.1 = out.clone();
                    }
                }
                Ok(out)
            }
            Some((CopiesKind::Stack, n)) => self.call_stacked(sub, n, args, frame, span),
        }
    }

    /// P-tuning: the embedding `[B, T, d]` with the prompt encoder's `[n, d]` in front,
    /// `[B, n + T, d]`.
    pub(super) fn prepend_prompt(
        &mut self,
        embedded: RValue,
        site: &super::instance::PromptSite,
        frame: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        let RValue::Tensor(e) = embedded else {
            return Err(
                self.err(frame, Diagnostic::error("P-tuning's embedding returned no tensor", span).with_label("here"))
            );
        };
        let shape = self.ty(e).shape.clone();
        if shape.len() != 3 {
            return Err(self.err(
                frame,
                Diagnostic::error(
                    format!("P-tuning needs the embedding to give `[B, T, d]`, it gives {}", self.ty(e).shape_text()),
                    span,
                )
                .with_label("embedding called here"),
            ));
        }
        let encoder = frame.instance.members.iter().find_map(|m| match m {
            Member::Sub(s) if s.name == site.encoder => Some(s),
            _ => None,
        });
        let Some(encoder) = encoder else {
            return Err(
                self.err(frame, Diagnostic::error("P-tuning's prompt encoder is missing", span).with_label("here"))
            );
        };
        let RValue::Tensor(p) = self.call_sub(&site.encoder, encoder, &[], frame, span)? else {
            return Err(
                self.err(frame, Diagnostic::error("the prompt encoder returned no tensor", span).with_label("here"))
            );
        };
        let n = Dim::constant(site.tokens);
        let one = self.node(
            Op::Reshape { shape: vec![Dim::constant(1), n.clone(), shape[2].clone()] },
            vec![p],
            frame,
            span,
        )?;
        let wide =
            self.node(Op::Broadcast { shape: vec![shape[0].clone(), n, shape[2].clone()] }, vec![one], frame, span)?;
        Ok(RValue::Tensor(self.node(Op::Concat { axis: 1 }, vec![wide, e], frame, span)?))
    }

    /// P-tuning: the model's output without the virtual positions (axis 1 from `n`).
    pub(super) fn drop_prompt(
        &mut self,
        out: RValue,
        site: &super::instance::PromptSite,
        frame: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        let n = Dim::constant(site.tokens);
        match out {
            RValue::Tensor(t) if self.ty(t).rank() >= 2 && self.ty(t).shape[1].sub(&n).is_symbolic() => {
                let end = self.ty(t).shape[1].clone();
                Ok(RValue::Tensor(self.node(Op::Slice { axis: 1, start: n, end }, vec![t], frame, span)?))
            }
            _ => Err(self.err(
                frame,
                Diagnostic::error("P-tuning needs a model whose output has a position axis (`[B, T, ...]`)", span)
                    .with_label("this output")
                    .with_help("the virtual tokens are dropped from axis 1 of the output"),
            )),
        }
    }
}
