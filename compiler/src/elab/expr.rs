//! Expressions → values: names resolve to locals, bound dims, members (weights become
//! `param` nodes, buffers their expression) and compile-time values; operators on tensors
//! become Graph IR nodes, on compile-time values they are evaluated.

use super::eval::Scope;
use super::forward::{member_name, Builder, Frame, RValue};
use super::instance::Member;
use super::value::Value;
use crate::error::{suggest, Error};
use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Op, Unary};
use crate::graph::types::{DType, TensorType};
use crate::graph::ValueId;
use modelc_grammar::ast::{self, BinaryOp, Expr, ExprKind, ItemKind, MemberKind, Span, UnaryOp};
use modelc_grammar::Diagnostic;

impl Builder<'_> {
    pub(super) fn expr(&mut self, e: &Expr, frame: &mut Frame) -> Result<RValue, Error> {
        match &e.kind {
            ExprKind::Int { value, .. } => Ok(RValue::Static(Value::Int(*value))),
            ExprKind::Float { value, .. } => Ok(RValue::Static(Value::Float(*value))),
            ExprKind::Str(s) => Ok(RValue::Static(Value::Str(s.clone()))),
            ExprKind::Bool(b) => Ok(RValue::Static(Value::Bool(*b))),
            ExprKind::None => Ok(RValue::Static(Value::None)),
            ExprKind::Name(n) => self.name(&n.name, n.span, frame),
            ExprKind::Field { base, name } => self.field(base, name, frame),
            ExprKind::Tuple(items) => {
                Ok(RValue::Tuple(items.iter().map(|i| self.expr(i, frame)).collect::<Result<_, _>>()?))
            }
            ExprKind::List(items) => {
                Ok(RValue::List(items.iter().map(|i| self.expr(i, frame)).collect::<Result<_, _>>()?))
            }
            ExprKind::If { cond, then, otherwise } => match self.condition(cond, frame)? {
                RValue::Static(Value::Bool(true)) => self.expr(then, frame),
                RValue::Static(Value::Bool(false)) => self.expr(otherwise, frame),
                _ => Err(self.err(
                    frame,
                    Diagnostic::error("an `if` condition must be known at compile time", cond.span)
                        .with_label("depends on tensor values")
                        .with_help("choose between tensors elementwise with `where(cond, a, b)`"),
                )),
            },
            ExprKind::Unary { .. } => {
                // A chain of prefix operators is applied innermost first, without recursion.
                let mut ops = Vec::new();
                let mut inner = e;
                while let ExprKind::Unary { op, operand } = &inner.kind {
                    ops.push((*op, inner.span));
                    inner = operand;
                }
                let mut v = self.expr(inner, frame)?;
                for (op, span) in ops.into_iter().rev() {
                    v = self.unary(op, v, frame, span)?;
                }
                Ok(v)
            }
            ExprKind::Binary { op, lhs, rhs } if !matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Pow) => {
                // `a + b - c ...` nests to the left: walk the left spine, then fold forwards.
                let mut rest = vec![(*op, rhs.as_ref(), e.span)];
                let mut cur = lhs.as_ref();
                while let ExprKind::Binary { op, lhs, rhs } = &cur.kind {
                    if matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Pow) {
                        break;
                    }
                    rest.push((*op, rhs.as_ref(), cur.span));
                    cur = lhs;
                }
                let mut v = self.expr(cur, frame)?;
                for (op, rhs, span) in rest.into_iter().rev() {
                    let r = self.expr(rhs, frame)?;
                    v = self.binary(op, v, r, frame, span, rhs.span)?;
                }
                Ok(v)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.expr(lhs, frame)?;
                // `w == none or w > 2`: a decided compile-time `and`/`or` skips its right side.
                if let (BinaryOp::And, RValue::Static(Value::Bool(false)))
                | (BinaryOp::Or, RValue::Static(Value::Bool(true))) = (op, &l)
                {
                    return Ok(l);
                }
                let r = self.expr(rhs, frame)?;
                self.binary(*op, l, r, frame, e.span, rhs.span)
            }
            ExprKind::Call { callee, args } => self.call(callee, args, frame, e.span),
        }
    }

    /// An `if` condition, elaborated with block parameters taking precedence.
    pub(super) fn condition(&mut self, cond: &Expr, frame: &mut Frame) -> Result<RValue, Error> {
        let before = std::mem::replace(&mut frame.prefer_static, true);
        let v = self.expr(cond, frame);
        frame.prefer_static = before;
        v
    }

    pub(super) fn name(&mut self, name: &str, span: Span, frame: &mut Frame) -> Result<RValue, Error> {
        if let Some((v, _)) = frame.locals.get(name) {
            return Ok(v.clone());
        }
        if frame.prefer_static {
            if let Some((_, v)) = frame.instance.statics.iter().rev().find(|(k, _)| k == name) {
                return Ok(RValue::Static(v.clone()));
            }
        }
        if let Some(d) = frame.symbols.get(name) {
            return Ok(RValue::Dim(d.clone()));
        }
        // Members: weights and buffers are tensors here.
        for m in &frame.instance.members {
            match m {
                Member::Weight(w) if w.name == name => {
                    let full = frame.join(name);
                    let dtype = w.dtype.as_deref().and_then(DType::parse).unwrap_or(self.act);
                    let shape = w.shape.iter().map(|&d| Dim::constant(d)).collect();
                    return Ok(RValue::Tensor(self.param(full, TensorType::new(dtype, shape))));
                }
                Member::Buffer { name: b } if b == name => return self.buffer(name, frame),
                Member::Sub(s) if s.name == name => {
                    return Err(self.err(
                        frame,
                        Diagnostic::error(format!("`{name}` is a sub-block: call it, as in `{name}(x)`"), span)
                            .with_label("not a tensor"),
                    ))
                }
                _ => {}
            }
        }
        if let Some((_, v)) = frame.instance.statics.iter().rev().find(|(k, _)| k == name) {
            return Ok(RValue::Static(v.clone()));
        }
        // Dtype names are values where a dtype is expected: `cast(x, f32)`.
        if DType::parse(name).is_some() {
            return Ok(RValue::Static(Value::Symbol(name.to_string())));
        }
        let scope = frame.scope(self);
        match scope.eval(&Expr { kind: ExprKind::Name(ast::Ident { name: name.to_string(), span }), span }) {
            Ok(v) => Ok(RValue::Static(v)),
            Err(_) => {
                let mut names: Vec<String> = frame.locals.keys().cloned().collect();
                names.extend(frame.symbols.keys().cloned());
                names.extend(frame.instance.members.iter().filter_map(member_name).map(str::to_string));
                names.extend(scope.visible_names());
                let mut d =
                    Diagnostic::error(format!("unknown name `{name}`"), span).with_label("not found in this scope");
                if let Some(s) = suggest(name, names.iter().map(String::as_str)) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                Err(self.err(frame, d))
            }
        }
    }

    pub(super) fn param(&mut self, full: String, ty: TensorType) -> ValueId {
        if let Some(&v) = self.params.get(&full) {
            return v;
        }
        let v = self.graph.push(Op::Param { name: full.clone() }, Vec::new(), ty, "");
        self.params.insert(full, v);
        v
    }

    /// A buffer is its expression, elaborated once per instance from compile-time values.
    pub(super) fn buffer(&mut self, name: &str, frame: &mut Frame) -> Result<RValue, Error> {
        if let Some(v) = frame.buffers.get(name) {
            return Ok(v.clone());
        }
        let item = self.program.item(frame.instance.block);
        let ItemKind::Block(def) = &item.kind else { unreachable!("instances are of blocks") };
        let scope = frame.scope(self);
        let expr = find_buffer(&def.members, name, &scope)?
            .ok_or_else(|| self.err(frame, Diagnostic::error(format!("buffer `{name}` not found"), Span::default())))?;
        // A buffer is compile-time: it sees parameters and constants, not `forward`'s values.
        let locals = std::mem::take(&mut frame.locals);
        let v = self.expr(&expr, frame);
        frame.locals = locals;
        let v = v?;
        frame.buffers.insert(name.to_string(), v.clone());
        Ok(v)
    }

    pub(super) fn field(&mut self, base: &Expr, name: &ast::Ident, frame: &mut Frame) -> Result<RValue, Error> {
        // `embed.weight`: a parameter of a sub-block.
        if let ExprKind::Name(n) = &base.kind {
            if !frame.locals.contains_key(&n.name) {
                let sub = frame.instance.members.iter().find_map(|m| match m {
                    Member::Sub(s) if s.name == n.name => Some(s),
                    _ => None,
                });
                if let Some(sub) = sub {
                    if sub.copies.is_some() {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("a field of copied blocks is ambiguous", name.span)
                                .with_label("which copy?"),
                        ));
                    }
                    let w = sub.instance.members.iter().find_map(|m| match m {
                        Member::Weight(w) if w.name == name.name => Some(w),
                        _ => None,
                    });
                    let Some(w) = w else {
                        let names = sub.instance.members.iter().filter_map(member_name);
                        let mut d =
                            Diagnostic::error(format!("`{}` has no parameter `{}`", n.name, name.name), name.span)
                                .with_label("not found");
                        if let Some(s) = suggest(&name.name, names) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        return Err(self.err(frame, d));
                    };
                    let full = format!("{}.{}", frame.join(&n.name), w.name);
                    let dtype = w.dtype.as_deref().and_then(DType::parse).unwrap_or(self.act);
                    let ty = TensorType::new(dtype, w.shape.iter().map(|&d| Dim::constant(d)).collect());
                    return Ok(RValue::Tensor(self.param(full, ty)));
                }
            }
        }
        // `route.load`, `route.overflow`.
        if let ExprKind::Name(n) = &base.kind {
            if let Some((RValue::Route { combine, logits, k }, _)) = frame.locals.get(&n.name).cloned() {
                let span = base.span.to(name.span);
                return match name.name.as_str() {
                    "load" => Ok(RValue::Tensor(self.node(Op::MoeLoad { k }, vec![combine], frame, span)?)),
                    "overflow" => {
                        Ok(RValue::Tensor(self.node(Op::MoeOverflow { k }, vec![logits, combine], frame, span)?))
                    }
                    other => Err(self.err(
                        frame,
                        Diagnostic::error(format!("a route has no field `{other}`"), name.span)
                            .with_label("unknown field")
                            .with_help("a route has `load` (per expert) and `overflow`"),
                    )),
                };
            }
        }
        // `Norm.pre` and other compile-time fields.
        let scope = frame.scope(self);
        let e = Expr {
            kind: ExprKind::Field { base: Box::new(base.clone()), name: name.clone() },
            span: base.span.to(name.span),
        };
        scope.eval(&e).map(RValue::Static)
    }

    pub(super) fn binary(
        &mut self,
        op: BinaryOp,
        l: RValue,
        r: RValue,
        frame: &mut Frame,
        span: Span,
        rhs_span: Span,
    ) -> Result<RValue, Error> {
        // `x == none` asks whether an optional argument was given.
        if matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
            let is_none = |v: &RValue| matches!(v, RValue::Static(Value::None));
            if is_none(&l) != is_none(&r) && (matches!(l, RValue::Tensor(_)) || matches!(r, RValue::Tensor(_))) {
                return Ok(RValue::Static(Value::Bool(op == BinaryOp::Ne)));
            }
        }
        match (l, r) {
            (RValue::Static(a), RValue::Static(b)) => {
                frame.scope(self).apply_binary(op, a, b, span, rhs_span).map(RValue::Static)
            }
            (RValue::Dim(a), RValue::Dim(b)) => {
                dim_binary(op, &a, &b).map(RValue::Dim).ok_or_else(|| self.op_error(frame, op, span))
            }
            (RValue::Dim(a), RValue::Static(Value::Int(b))) => {
                dim_binary(op, &a, &Dim::constant(b)).map(RValue::Dim).ok_or_else(|| self.op_error(frame, op, span))
            }
            (RValue::Static(Value::Int(a)), RValue::Dim(b)) => {
                dim_binary(op, &Dim::constant(a), &b).map(RValue::Dim).ok_or_else(|| self.op_error(frame, op, span))
            }
            (l, r) => {
                // A number takes the dtype of the tensor on the other side.
                let dtype = match (&l, &r) {
                    (RValue::Tensor(t), _) | (_, RValue::Tensor(t)) => Some(self.ty(*t).dtype),
                    _ => None,
                };
                let a = self.tensor_like(l, dtype, frame, span)?;
                let b = self.tensor_like(r, dtype, frame, span)?;
                let op = match op {
                    BinaryOp::MatMul => Op::MatMul,
                    BinaryOp::Add => Op::Binary(Binary::Add),
                    BinaryOp::Sub => Op::Binary(Binary::Sub),
                    BinaryOp::Mul => Op::Binary(Binary::Mul),
                    BinaryOp::Div => Op::Binary(Binary::Div),
                    BinaryOp::Rem => Op::Binary(Binary::Rem),
                    BinaryOp::Pow => Op::Binary(Binary::Pow),
                    BinaryOp::Eq => Op::Binary(Binary::Eq),
                    BinaryOp::Ne => Op::Binary(Binary::Ne),
                    BinaryOp::Lt => Op::Binary(Binary::Lt),
                    BinaryOp::Le => Op::Binary(Binary::Le),
                    BinaryOp::Gt => Op::Binary(Binary::Gt),
                    BinaryOp::Ge => Op::Binary(Binary::Ge),
                    BinaryOp::And => Op::Binary(Binary::And),
                    BinaryOp::Or => Op::Binary(Binary::Or),
                    BinaryOp::Then | BinaryOp::From => return Err(self.op_error(frame, op, span)),
                };
                Ok(RValue::Tensor(self.node(op, vec![a, b], frame, span)?))
            }
        }
    }

    /// One prefix operator applied to an elaborated value.
    pub(super) fn unary(&mut self, op: UnaryOp, v: RValue, frame: &mut Frame, span: Span) -> Result<RValue, Error> {
        match (op, v) {
            (_, RValue::Static(s)) => {
                let scope = frame.scope(self);
                let zero = Value::Int(0);
                match op {
                    UnaryOp::Neg => scope.apply_binary(BinaryOp::Sub, zero, s, span, span).map(RValue::Static),
                    UnaryOp::Not => match s {
                        Value::Bool(b) => Ok(RValue::Static(Value::Bool(!b))),
                        other => Err(scope.type_error(format!("`not` needs a bool, found {}", other.kind()), span)),
                    },
                }
            }
            (UnaryOp::Neg, RValue::Dim(d)) => Ok(RValue::Dim(d.neg())),
            (UnaryOp::Neg, RValue::Tensor(t)) => {
                Ok(RValue::Tensor(self.node(Op::Unary(Unary::Neg), vec![t], frame, span)?))
            }
            (UnaryOp::Not, RValue::Tensor(t)) => {
                Ok(RValue::Tensor(self.node(Op::Unary(Unary::Not), vec![t], frame, span)?))
            }
            _ => Err(self.err(frame, Diagnostic::error("this operator does not apply here", span).with_label("here"))),
        }
    }

    pub(super) fn op_error(&self, frame: &Frame, op: BinaryOp, span: Span) -> Error {
        self.err(
            frame,
            Diagnostic::error(format!("`{}` does not apply to these values", op.symbol()), span).with_label("here"),
        )
    }

    /// A tensor for an operand: tensors as they are, numbers as scalars of `dtype`
    /// (default: the activation dtype, or `i32` for a dim).
    pub(super) fn tensor_like(
        &mut self,
        v: RValue,
        dtype: Option<DType>,
        frame: &Frame,
        span: Span,
    ) -> Result<ValueId, Error> {
        match v {
            RValue::Tensor(t) => Ok(t),
            RValue::Static(Value::Int(i)) => Ok(self.scalar(i as f64, dtype.unwrap_or(DType::I32), frame)),
            RValue::Static(Value::Float(x)) => match dtype {
                Some(d) if !d.is_float() && x.fract() != 0.0 => Err(self.err(
                    frame,
                    Diagnostic::error(format!("{x:?} does not fit a {} tensor", d.name()), span)
                        .with_label("fractional number")
                        .with_help("cast the tensor to a float dtype first, as in `cast(x, f32)`"),
                )),
                _ => Ok(self.scalar(x, dtype.unwrap_or(self.act), frame)),
            },
            RValue::Static(Value::Bool(b)) => Ok(self.scalar(f64::from(u8::from(b)), DType::Bool, frame)),
            RValue::Dim(d) => match d.as_constant() {
                Some(c) => Ok(self.scalar(c as f64, dtype.unwrap_or(DType::I32), frame)),
                None => Err(self.err(
                    frame,
                    Diagnostic::error(format!("the dim {d} is only known at run time here"), span)
                        .with_label("symbolic dim")
                        .with_help("use it in shapes, `arange` or `reshape`; as a number, take it from a tensor"),
                )),
            },
            RValue::Static(other) => Err(self.err(
                frame,
                Diagnostic::error(format!("expected a tensor or a number, found {}", other.kind()), span)
                    .with_label("here"),
            )),
            RValue::Route { .. } => Err(self.err(
                frame,
                Diagnostic::error("expected a tensor, found a route", span)
                    .with_label("here")
                    .with_help("use a route with `moe_dispatch`, `moe_combine`, `moe_balance`, `.load` or `.overflow`"),
            )),
            RValue::Tuple(_) | RValue::List(_) => Err(self.err(
                frame,
                Diagnostic::error("expected a tensor, found a tuple or list", span)
                    .with_label("here")
                    .with_help("take it apart first: `a, b = ...`"),
            )),
        }
    }
}

pub(super) fn dim_binary(op: BinaryOp, a: &Dim, b: &Dim) -> Option<Dim> {
    match op {
        BinaryOp::Add => Some(a.add(b)),
        BinaryOp::Sub => Some(a.sub(b)),
        BinaryOp::Mul => Some(a.mul(b)),
        BinaryOp::Div => a.div_exact(b),
        _ => None,
    }
}

/// The expression of buffer `name`, in the `if` branches that instantiation took.
pub(super) fn find_buffer(members: &[ast::Member], name: &str, scope: &Scope) -> Result<Option<Expr>, Error> {
    for m in members {
        match &m.kind {
            MemberKind::Buffer { name: n, value } if n.name == name => return Ok(Some(value.clone())),
            MemberKind::If { cond, then, otherwise } => {
                let found = if scope.condition(cond)? {
                    find_buffer(then, name, scope)?
                } else {
                    match otherwise {
                        Some(ast::Else::If(inner)) => find_buffer(std::slice::from_ref(inner), name, scope)?,
                        Some(ast::Else::Body(body)) => find_buffer(body, name, scope)?,
                        None => None,
                    }
                };
                if found.is_some() {
                    return Ok(found);
                }
            }
            _ => {}
        }
    }
    Ok(None)
}
