//! Bound primitive calls → Graph IR nodes, for the elementwise, reduction, movement and
//! indexing primitives of `PRIMITIVES`. Each builder reads arguments the signature has
//! already typed; the nodes' shape rules (`Op::infer`) check the shapes.

use super::einops;
use super::forward::{Builder, Frame, RValue};
use super::primitives::{static_ints, Call};
use super::value::Value;
use crate::error::Error;
use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Op, Reduce, Unary};
use crate::graph::types::DType;
use modelc_grammar::Diagnostic;
use std::collections::HashMap;

type Built = Result<RValue, Error>;

impl Builder<'_> {
    /// The error for a parameter the signature requires but the call lacks (binding
    /// reports it first; this keeps builders free of `expect`).
    pub(super) fn missing(&self, call: &Call, name: &str, frame: &Frame) -> Error {
        self.err(
            frame,
            Diagnostic::error(format!("`{}` needs `{name}`", call.prim.name), call.span).with_label("missing argument"),
        )
    }

    fn one(&mut self, op: Op, x: crate::graph::ValueId, call: &Call, frame: &Frame) -> Built {
        Ok(RValue::Tensor(self.node(op, vec![x], frame, call.span)?))
    }
}

pub(super) fn gelu(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    // `approx:` is only ever `tanh` (the signature's one word); `none` is the exact form.
    let u = if c.get("approx").is_some() { Unary::GeluTanh } else { Unary::Gelu };
    let x = b.tensor_arg(c, "x", frame)?;
    b.one(Op::Unary(u), x, c, frame)
}

pub(super) fn softcap(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let cap = c.number("cap").ok_or_else(|| b.missing(c, "cap", frame))?;
    b.one(Op::Softcap { cap }, x, c, frame)
}

pub(super) fn cast(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let to = match c.get("dtype") {
        Some((RValue::Static(Value::Symbol(s)), _)) => DType::parse(s),
        _ => None,
    };
    let to = to.ok_or_else(|| b.missing(c, "dtype", frame))?;
    b.one(Op::Cast { to }, x, c, frame)
}

/// `op(a, y)` where a number `y` takes `a`'s dtype: `pow`, and `min`/`max` of two.
fn binary_with(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>, op: Binary) -> Built {
    let a = b.tensor_arg(c, "x", frame)?;
    let dt = b.ty(a).dtype;
    let (y, span) = c.get("y").ok_or_else(|| b.missing(c, "y", frame))?;
    let y = b.tensor_like(y.clone(), Some(dt), frame, span)?;
    Ok(RValue::Tensor(b.node(Op::Binary(op), vec![a, y], frame, c.span)?))
}

pub(super) fn pow(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    binary_with(b, c, frame, Binary::Pow)
}

pub(super) fn max(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    match c.get("y") {
        Some(_) => binary_with(b, c, frame, Binary::Max),
        None => reduction(b, c, frame, Reduce::Max),
    }
}

pub(super) fn min(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    match c.get("y") {
        Some(_) => binary_with(b, c, frame, Binary::Min),
        None => reduction(b, c, frame, Reduce::Min),
    }
}

pub(super) fn where_(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let cond = b.tensor_arg(c, "cond", frame)?;
    let value = |name: &str| c.get(name).map_or(RValue::Static(Value::None), |(v, _)| v.clone());
    let (x, y) = (value("a"), value("b"));
    // A number branch takes the dtype of the tensor branch.
    let dt = match (&x, &y) {
        (RValue::Tensor(t), _) | (_, RValue::Tensor(t)) => Some(b.ty(*t).dtype),
        _ => None,
    };
    let x = b.tensor_like(x, dt, frame, c.span)?;
    let y = b.tensor_like(y, dt, frame, c.span)?;
    Ok(RValue::Tensor(b.node(Op::Where, vec![cond, x, y], frame, c.span)?))
}

pub(super) fn dropout(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let p = c.number("p").unwrap_or(0.0);
    if p == 0.0 {
        return Ok(RValue::Tensor(x));
    }
    // Each dropout gets its own mask stream, numbered in graph order.
    let key = b.graph.nodes.iter().filter(|n| matches!(n.op, Op::Dropout { .. })).count() as u64;
    b.one(Op::Dropout { p, key }, x, c, frame)
}

/// `sum mean var logsumexp max min (x, axis:, keepdim:)`: over all axes without `axis:`.
pub(super) fn reduction(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>, kind: Reduce) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let rank = b.ty(x).rank();
    let axes = b.axes_arg(c, "axis", rank, frame)?;
    let keepdim = c.bool("keepdim");
    b.one(Op::Reduce { kind, axes, keepdim }, x, c, frame)
}

pub(super) fn softmax(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let axis = b.axis_arg(c, "axis", b.ty(x).rank(), frame)?;
    b.one(Op::Softmax { axis }, x, c, frame)
}

pub(super) fn log_softmax(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let axis = b.axis_arg(c, "axis", b.ty(x).rank(), frame)?;
    b.one(Op::LogSoftmax { axis }, x, c, frame)
}

pub(super) fn cumsum(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let axis = b.axis_arg(c, "axis", b.ty(x).rank(), frame)?;
    b.one(Op::Cumsum { axis }, x, c, frame)
}

/// `rearrange(x, "pattern", name: size, ...)`: at most a reshape, a transpose and a
/// reshape, planned by `einops`.
pub(super) fn rearrange(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let pattern = match c.get("pattern") {
        Some((RValue::Static(Value::Str(s)), _)) => s.clone(),
        _ => return Err(b.missing(c, "pattern", frame)),
    };
    let pattern_span = c.span_of("pattern");
    let mut sizes = HashMap::new();
    for (k, v, _) in &c.rest {
        let d = match v {
            RValue::Static(Value::Int(i)) => Dim::constant(*i),
            RValue::Dim(d) => d.clone(),
            // The signature types the sizes as dims.
            _ => continue,
        };
        sizes.insert(k.clone(), d);
    }
    let ty = b.ty(x).clone();
    let plan = einops::plan(&pattern, &ty.shape, &sizes).map_err(|why| {
        b.err(
            frame,
            Diagnostic::error(format!("{why} (input is {})", ty.shape_text()), pattern_span)
                .with_label("in this pattern"),
        )
    })?;
    let mut v = x;
    if plan.split != ty.shape {
        v = b.node(Op::Reshape { shape: plan.split.clone() }, vec![v], frame, c.span)?;
    }
    if plan.perm.iter().enumerate().any(|(i, p)| i != *p) {
        v = b.node(Op::Transpose { perm: plan.perm.clone() }, vec![v], frame, c.span)?;
    }
    if b.ty(v).shape != plan.output {
        v = b.node(Op::Reshape { shape: plan.output.clone() }, vec![v], frame, c.span)?;
    }
    Ok(RValue::Tensor(v))
}

pub(super) fn reshape(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let shape = c.shape("shape").ok_or_else(|| b.missing(c, "shape", frame))?;
    b.one(Op::Reshape { shape }, x, c, frame)
}

/// `broadcast_to(x, [dims])` and its alias `broadcast`.
pub(super) fn broadcast(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let shape = c.shape("shape").ok_or_else(|| b.missing(c, "shape", frame))?;
    b.one(Op::Broadcast { shape }, x, c, frame)
}

/// `transpose(x)` swaps the last two axes, `transpose(x, a, b)` swaps two,
/// `transpose(x, (p0, p1, ...))` permutes.
pub(super) fn transpose(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let rank = b.ty(x).rank();
    let axes: Vec<i64> =
        ["a", "b"].iter().filter_map(|n| c.get(n)).flat_map(|(v, _)| static_ints(v).unwrap_or_default()).collect();
    let norm = |a: i64| if a < 0 { a + rank as i64 } else { a };
    let perm: Vec<usize> = match axes.as_slice() {
        [] if rank >= 2 => {
            let mut p: Vec<usize> = (0..rank).collect();
            p.swap(rank - 2, rank - 1);
            p
        }
        [a, bb] if c.get("b").is_some() => {
            let mut p: Vec<usize> = (0..rank).collect();
            let (a, bb) = (norm(*a), norm(*bb));
            if a < 0 || bb < 0 || a as usize >= rank || bb as usize >= rank {
                return Err(b.err(
                    frame,
                    Diagnostic::error(format!("axes {a} and {bb} are out of range for rank {rank}"), c.span)
                        .with_label("here"),
                ));
            }
            p.swap(a as usize, bb as usize);
            p
        }
        // The shape rule checks that this is a permutation.
        many => many.iter().map(|a| norm(*a).max(0) as usize).collect(),
    };
    b.one(Op::Transpose { perm }, x, c, frame)
}

pub(super) fn concat(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let items = match c.get("tensors") {
        Some((RValue::List(items) | RValue::Tuple(items), _)) => items.clone(),
        _ => return Err(b.missing(c, "tensors", frame)),
    };
    let mut ids = Vec::new();
    for i in items {
        ids.push(b.tensor_like(i, None, frame, c.span)?);
    }
    let rank = ids.first().map_or(0, |t| b.ty(*t).rank());
    let axis = b.axis_arg(c, "axis", rank, frame)?;
    Ok(RValue::Tensor(b.node(Op::Concat { axis }, ids, frame, c.span)?))
}

/// `split(x, n, axis:)`: `n` equal slices, as a tuple.
pub(super) fn split(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let parts = c.int("n").ok_or_else(|| b.missing(c, "n", frame))?;
    let axis = b.axis_arg(c, "axis", b.ty(x).rank(), frame)?;
    let len = b.ty(x).shape[axis].clone();
    let piece = len.div_exact(&Dim::constant(parts)).ok_or_else(|| {
        b.err(
            frame,
            Diagnostic::error(format!("cannot split {len} into {parts} equal parts"), c.span)
                .with_label("uneven split"),
        )
    })?;
    let mut out = Vec::new();
    for i in 0..parts {
        let start = piece.mul(&Dim::constant(i));
        let end = piece.mul(&Dim::constant(i + 1));
        out.push(RValue::Tensor(b.node(Op::Slice { axis, start, end }, vec![x], frame, c.span)?));
    }
    Ok(RValue::Tuple(out))
}

pub(super) fn slice(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let axis = b.axis_arg(c, "axis", b.ty(x).rank(), frame)?;
    let len = b.ty(x).shape[axis].clone();
    let start = c.dim("start").unwrap_or_else(|| Dim::constant(0));
    let end = c.dim("end").unwrap_or(len);
    b.one(Op::Slice { axis, start, end }, x, c, frame)
}

pub(super) fn pad(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let axis = b.axis_arg(c, "axis", b.ty(x).rank(), frame)?;
    let (before, after) = (c.int("before").unwrap_or(0), c.int("after").unwrap_or(0));
    let value = c.number("value").unwrap_or(0.0);
    b.one(Op::Pad { axis, before, after, value }, x, c, frame)
}

/// `arange(n)` or `arange(start, end[, step])`: `i32[ceil((end - start) / step)]`.
pub(super) fn arange(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let start = c.dim("start").ok_or_else(|| b.missing(c, "start", frame))?;
    let Some(end) = c.dim("end") else {
        // One argument: the length.
        return Ok(RValue::Tensor(b.node(Op::Arange { n: start }, Vec::new(), frame, c.span)?));
    };
    let step = match c.dim("step") {
        None => 1,
        Some(s) => s.as_constant().ok_or_else(|| {
            b.err(
                frame,
                Diagnostic::error(format!("`arange` needs a compile-time step, found the dim {s}"), c.span_of("step"))
                    .with_label("symbolic step"),
            )
        })?,
    };
    let len = end.sub(&start);
    if len.as_constant().is_some_and(|l| l < 0) || step <= 0 {
        return Err(b.err(
            frame,
            Diagnostic::error(format!("`arange({start}, {end}, {step})` is empty or runs backwards"), c.span)
                .with_label("here"),
        ));
    }
    let n = match len.as_constant() {
        // `ceil(l / step)`, written so that it cannot overflow.
        Some(l) => Dim::constant(l / step + i64::from(l % step != 0)),
        None => len
            .div_exact(&Dim::constant(step))
            .ok_or_else(|| b.err(frame, Diagnostic::error("`arange` length is not a whole number of steps", c.span)))?,
    };
    let base = b.node(Op::Arange { n }, Vec::new(), frame, c.span)?;
    let step_v = b.scalar(step as f64, DType::I32, frame);
    let scaled = b.node(Op::Binary(Binary::Mul), vec![base, step_v], frame, c.span)?;
    let out = match start.as_constant() {
        Some(0) => scaled,
        _ => {
            let s = b.tensor_like(RValue::Dim(start.clone()), Some(DType::I32), frame, c.span)?;
            b.node(Op::Binary(Binary::Add), vec![scaled, s], frame, c.span)?
        }
    };
    Ok(RValue::Tensor(out))
}

pub(super) fn embedding(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let table = b.tensor_arg(c, "table", frame)?;
    let ids = b.tensor_arg(c, "ids", frame)?;
    Ok(RValue::Tensor(b.node(Op::Embedding, vec![table, ids], frame, c.span)?))
}

pub(super) fn gather(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let ids = vec![b.tensor_arg(c, "x", frame)?, b.tensor_arg(c, "index", frame)?];
    let axis = b.axis_arg(c, "axis", b.ty(ids[0]).rank(), frame)?;
    Ok(RValue::Tensor(b.node(Op::Gather { axis }, ids, frame, c.span)?))
}

pub(super) fn scatter_add(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let ids = vec![b.tensor_arg(c, "x", frame)?, b.tensor_arg(c, "index", frame)?, b.tensor_arg(c, "src", frame)?];
    let axis = b.axis_arg(c, "axis", b.ty(ids[0]).rank(), frame)?;
    Ok(RValue::Tensor(b.node(Op::ScatterAdd { axis }, ids, frame, c.span)?))
}

pub(super) fn one_hot(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "ids", frame)?;
    let n = c.int("n").ok_or_else(|| b.missing(c, "n", frame))?;
    b.one(Op::OneHot { n }, x, c, frame)
}

/// `topk(x, k)`: the values and the `i32` indices of the `k` largest along the last axis.
pub(super) fn topk(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let x = b.tensor_arg(c, "x", frame)?;
    let k = c.int("k").ok_or_else(|| b.missing(c, "k", frame))?;
    let values = b.node(Op::TopK { k, indices: false }, vec![x], frame, c.span)?;
    let indices = b.node(Op::TopK { k, indices: true }, vec![x], frame, c.span)?;
    Ok(RValue::Tuple(vec![RValue::Tensor(values), RValue::Tensor(indices)]))
}
