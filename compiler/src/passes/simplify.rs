//! Graph IR → Graph IR with constants folded, exact identities applied and movement and
//! cast chains shortened. Every rule is exact under both of the interpreter's precisions
//! and keeps each value's type, so no result changes by a bit:
//!
//! - **Constants**: an op whose arguments are all scalar constants becomes a constant,
//!   computed by the interpreter itself (the oracle's semantics, not a second copy).
//!   Only when every argument is exactly representable in its dtype: at native precision
//!   a constant is rounded to its dtype before use, in f64 it is not, and folding must
//!   agree with both.
//! - **Identities**: `x*1`, `1*x`, `x/1` (floats), `x+(-0)`, `x-0` become `x` when the
//!   node's type is `x`'s (no broadcast, no dtype change). `x+0` is not `x`: `-0 + 0` is
//!   `+0`. `x*0` is not `0` for infinities, NaN or negative `x` (`-3 * 0 = -0`), so it folds
//!   only when `x` is known finite and non-negative (`arange`, `one_hot`).
//! - **Movement**: reshape of reshape, transpose of transpose (composed, or removed when
//!   the identity), broadcast of broadcast, when the outer node is the inner one's only
//!   reader (else the inner value stays alive and its argument lives longer too: the
//!   backward's transposes would keep both a value and its transpose, raising the
//!   activation peak); reshape, transpose, broadcast and slice that change nothing.
//! - **Casts**: a cast to the dtype its argument already has is removed only when the
//!   argument already holds what the cast would make: in the f64 oracle an `f32` value is
//!   an unrounded f64 and `cast to=f32` rounds it, so only a value that is itself a cast to
//!   that dtype (or an exact constant, an `arange`, a comparison) qualifies. A round trip
//!   through another dtype (`f32 → bf16 → f32`) loses precision and is never removed.

use super::{push_node, take_nodes, Remap};
use crate::graph::op::{Binary, Op, Unary};
use crate::graph::types::{DType, TensorType};
use crate::graph::{Graph, Node, ValueId};
use crate::interp;

/// What a node becomes.
enum Rewrite {
    /// An existing value (of the node's type).
    Value(ValueId),
    /// Another op on other arguments (of the node's type).
    Node(Op, Vec<ValueId>),
}

pub fn run(mut graph: Graph) -> Result<Graph, String> {
    let readers = readers(&graph);
    let (nodes, mut out) = take_nodes(&mut graph);
    let mut map = Remap::with_capacity(nodes.len());
    // Per new node: the old node it was made for, and whether other old nodes became it.
    let mut origin: Vec<Option<usize>> = Vec::with_capacity(nodes.len());
    let mut shared: Vec<bool> = Vec::with_capacity(nodes.len());
    for (j, node) in nodes.into_iter().enumerate() {
        let args: Vec<ValueId> = node.args.iter().map(|a| map.get(*a)).collect();
        let sole_reader = |v: ValueId| {
            let i = v.0 as usize;
            !shared.get(i).copied().unwrap_or(true) && origin[i].is_some_and(|k| readers[k] == 1)
        };
        let rewritten = rewrite(&mut out, &node.op, &args, &node.ty, &sole_reader);
        // Nodes a rule added (a zero constant) were made for no old node.
        origin.resize(out.nodes.len(), None);
        shared.resize(out.nodes.len(), false);
        let id = match rewritten {
            // A rule only proposes; the type is checked here, so no rule changes one.
            Some(Rewrite::Value(v)) if *out.ty(v) == node.ty => {
                shared[v.0 as usize] = true;
                v
            }
            Some(Rewrite::Node(op, new_args)) if infers(&out, &op, &new_args, &node.ty) => {
                push_node(&mut out, Node { op, args: new_args, ..node })
            }
            _ => push_node(&mut out, Node { args, ..node }),
        };
        origin.resize(out.nodes.len(), Some(j));
        shared.resize(out.nodes.len(), false);
        map.push(id);
    }
    map.finish(&graph, &mut out);
    Ok(out)
}

/// How many nodes and named or returned values read each node.
fn readers(g: &Graph) -> Vec<usize> {
    let mut n = vec![0; g.nodes.len()];
    let named = g.aux_losses.iter().chain(&g.metrics).chain(&g.grads).chain(&g.updates).map(|(_, v)| v);
    for v in g.nodes.iter().flat_map(|node| &node.args).chain(&g.outputs).chain(named) {
        n[v.0 as usize] += 1;
    }
    n
}

/// Whether `op` on `args` has type `ty` (a leaf has the type it is given).
fn infers(g: &Graph, op: &Op, args: &[ValueId], ty: &TensorType) -> bool {
    if args.is_empty() {
        return matches!(op, Op::Scalar { .. }) && ty.rank() == 0;
    }
    let types: Vec<&TensorType> = args.iter().map(|a| g.ty(*a)).collect();
    op.infer(&types).is_ok_and(|t| t == *ty)
}

/// What `op` on `args` simplifies to, if anything. `sole_reader(v)`: the node being
/// rewritten is the only reader of `v`, so a chain through `v` can skip it without keeping
/// it alive longer (a rule never makes the activation peak grow).
fn rewrite(
    g: &mut Graph,
    op: &Op,
    args: &[ValueId],
    ty: &TensorType,
    sole_reader: &dyn Fn(ValueId) -> bool,
) -> Option<Rewrite> {
    if let Some(value) = fold(g, op, args, ty) {
        return Some(Rewrite::Node(Op::Scalar { value }, Vec::new()));
    }
    match (op, args) {
        (Op::Binary(b), &[x, y]) => identity(g, *b, x, y, ty),
        (Op::Reshape { shape }, &[x]) => {
            if g.ty(x).shape == *shape {
                return Some(Rewrite::Value(x));
            }
            match &g.nodes[x.0 as usize] {
                _ if !sole_reader(x) => None,
                Node { op: Op::Reshape { .. }, args, .. } if g.ty(args[0]).shape == *shape => {
                    Some(Rewrite::Value(args[0]))
                }
                Node { op: Op::Reshape { .. }, args, .. } => {
                    Some(Rewrite::Node(Op::Reshape { shape: shape.clone() }, vec![args[0]]))
                }
                _ => None,
            }
        }
        (Op::Transpose { perm }, &[x]) => {
            if is_identity(perm) {
                return Some(Rewrite::Value(x));
            }
            let Node { op: Op::Transpose { perm: inner }, args, .. } = &g.nodes[x.0 as usize] else { return None };
            if !sole_reader(x) {
                return None;
            }
            // Axis i of the outer result is axis perm[i] of the inner one, which is axis
            // inner[perm[i]] of the inner argument.
            let composed: Vec<usize> = perm.iter().map(|&p| inner.get(p).copied()).collect::<Option<_>>()?;
            if is_identity(&composed) {
                Some(Rewrite::Value(args[0]))
            } else {
                Some(Rewrite::Node(Op::Transpose { perm: composed }, vec![args[0]]))
            }
        }
        (Op::Broadcast { shape }, &[x]) => {
            if g.ty(x).shape == *shape {
                return Some(Rewrite::Value(x));
            }
            match &g.nodes[x.0 as usize] {
                Node { op: Op::Broadcast { .. }, args, .. } if sole_reader(x) => {
                    Some(Rewrite::Node(Op::Broadcast { shape: shape.clone() }, vec![args[0]]))
                }
                _ => None,
            }
        }
        (Op::Slice { axis, start, end }, &[x]) => {
            let full = start.as_constant() == Some(0) && g.ty(x).shape.get(*axis) == Some(end);
            full.then_some(Rewrite::Value(x))
        }
        (Op::Cast { to }, &[x]) => (g.ty(x).dtype == *to && holds_cast_result(g, x, *to)).then_some(Rewrite::Value(x)),
        _ => None,
    }
}

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}

/// The value of a deterministic op on scalar constants, when folding it is exact.
fn fold(g: &Graph, op: &Op, args: &[ValueId], ty: &TensorType) -> Option<f64> {
    if args.is_empty() || ty.rank() != 0 || op.is_random() {
        return None;
    }
    let mut mini = Graph::default();
    for &a in args {
        let n = &g.nodes[a.0 as usize];
        let Op::Scalar { value } = n.op else { return None };
        if n.ty.rank() != 0 || !representable(value, n.ty.dtype) {
            return None;
        }
        mini.push(n.op.clone(), Vec::new(), n.ty.clone(), "");
    }
    let args: Vec<ValueId> = (0..args.len() as u32).map(ValueId).collect();
    let result = mini.push(op.clone(), args, ty.clone(), "");
    mini.outputs = vec![result];
    // The oracle's own evaluation (f64, inference: nothing random reaches here).
    let values = interp::run(&mini, &Default::default(), &Default::default(), &interp::Options::default()).ok()?;
    values.last()?.data.first().copied()
}

/// Whether rounding `value` to `dtype` leaves it unchanged, so both interpreter
/// precisions see the same constant.
fn representable(value: f64, dtype: DType) -> bool {
    let rounded = match dtype {
        DType::F32 => value as f32 as f64,
        DType::BF16 => half::bf16::from_f64(value).to_f64(),
        DType::F16 => half::f16::from_f64(value).to_f64(),
        // The interpreter keeps f64, integer and bool values as they are.
        DType::F64 | DType::I32 | DType::I64 | DType::Bool => value,
    };
    rounded.to_bits() == value.to_bits()
}

/// The constant every element of `v` holds: a scalar, or a broadcast or reshape of one.
fn splat(g: &Graph, v: ValueId) -> Option<f64> {
    let n = &g.nodes[v.0 as usize];
    match &n.op {
        Op::Scalar { value } => Some(*value),
        Op::Broadcast { .. } | Op::Reshape { .. } => splat(g, n.args[0]),
        _ => None,
    }
}

/// `x*1`, `x/1`, `x+(-0)`, `x-0` → `x`; `x*0` → `0` for finite non-negative `x`.
fn identity(g: &mut Graph, b: Binary, x: ValueId, y: ValueId, ty: &TensorType) -> Option<Rewrite> {
    let is = |v: ValueId, c: f64| splat(g, v).is_some_and(|s| s.to_bits() == c.to_bits());
    let same = |v: ValueId| *g.ty(v) == *ty;
    match b {
        Binary::Mul if is(y, 1.0) && same(x) => Some(Rewrite::Value(x)),
        Binary::Mul if is(x, 1.0) && same(y) => Some(Rewrite::Value(y)),
        // Integer division floors, so `x/1` is `x` only for floats.
        Binary::Div if is(y, 1.0) && same(x) && ty.dtype.is_float() => Some(Rewrite::Value(x)),
        Binary::Add if is(y, -0.0) && same(x) => Some(Rewrite::Value(x)),
        Binary::Add if is(x, -0.0) && same(y) => Some(Rewrite::Value(y)),
        Binary::Sub if is(y, 0.0) && same(x) => Some(Rewrite::Value(x)),
        Binary::Mul if (is(y, 0.0) && nonnegative_finite(g, x)) || (is(x, 0.0) && nonnegative_finite(g, y)) => {
            let scalar_zero = [x, y].into_iter().find(|&v| {
                matches!(g.nodes[v.0 as usize].op, Op::Scalar { value } if value.to_bits() == 0)
                    && *g.ty(v) == TensorType::scalar(ty.dtype)
            });
            let zero = scalar_zero
                .unwrap_or_else(|| g.push(Op::Scalar { value: 0.0 }, Vec::new(), TensorType::scalar(ty.dtype), ""));
            if ty.rank() == 0 {
                Some(Rewrite::Value(zero))
            } else {
                Some(Rewrite::Node(Op::Broadcast { shape: ty.shape.clone() }, vec![zero]))
            }
        }
        _ => None,
    }
}

/// Whether every element of `v` is finite and `+0` or above, so `v * 0` is `+0`.
fn nonnegative_finite(g: &Graph, v: ValueId) -> bool {
    match g.nodes[v.0 as usize].op {
        Op::Arange { .. } | Op::OneHot { .. } => true,
        Op::Scalar { value } => value.is_finite() && value.is_sign_positive(),
        _ => false,
    }
}

/// Whether every element of `v` (of dtype `to`) is already what `cast to=to` makes of it,
/// in f64 as at native precision.
fn holds_cast_result(g: &Graph, v: ValueId, to: DType) -> bool {
    let n = &g.nodes[v.0 as usize];
    match (&n.op, to) {
        (Op::Cast { to: inner }, _) => *inner == to,
        (Op::Scalar { value }, DType::I32 | DType::I64) => value.trunc().to_bits() == value.to_bits(),
        (Op::Scalar { value }, DType::Bool) => *value == 1.0 || value.to_bits() == 0f64.to_bits(),
        (Op::Scalar { value }, _) => representable(*value, to),
        (Op::Arange { .. }, DType::I32 | DType::I64) => true,
        // One-hot rows are 0 and 1, exact in any float dtype.
        (Op::OneHot { .. }, DType::F32 | DType::F16 | DType::BF16) => true,
        // Comparisons give exactly 0 and 1.
        (Op::Binary(b), DType::Bool) => b.is_predicate(),
        (Op::Unary(Unary::Not), DType::Bool) => true,
        _ => false,
    }
}
