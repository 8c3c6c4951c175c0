//! Mixed precision: `precision = mixed(compute: bf16|f16, master: f32)`. Parameters stay
//! f32 (the master weights the optimizer updates); the pass inserts the casts that make
//! the contractions run in the compute dtype and keeps what loses accuracy in it in f32,
//! the policy of PyTorch's autocast:
//! - **low**: `matmul` and `attention` cast their float inputs to the compute dtype;
//! - **f32**: reductions (the statistics of the norms), softmax, log-softmax, the loss,
//!   cumulative sums and the MoE router's statistics cast their inputs up to f32;
//! - everything else (elementwise, movement, embedding) runs in the widest float dtype of
//!   its tensor inputs, so a residual stream that is f32 stays f32 and a matmul's output
//!   stays in the compute dtype through the ops that follow it. Scalar constants take the
//!   op's dtype instead of widening it.
//!
//! The casts are ordinary `cast` nodes (visible in `emit --stage ir`), so autodiff gives
//! the backward pass the same dtypes: a cotangent is cast back where its value was.

use crate::graph::op::Op;
use crate::graph::types::{DType, TensorType};
use crate::graph::{Graph, ValueId};
use std::collections::HashMap;

/// Where an op computes.
enum Class {
    /// In the compute dtype.
    Low,
    /// In f32.
    Full,
    /// In the widest float dtype of its tensor inputs.
    Widest,
    /// As written: leaves, and the casts the model wrote itself.
    AsWritten,
}

fn class(op: &Op) -> Class {
    // A cast the model wrote keeps its dtype: it is the model's own precision decision.
    if op.is_leaf() || matches!(op, Op::Cast { .. }) {
        Class::AsWritten
    } else if op.is_contraction() {
        Class::Low
    } else if op.is_precision_sensitive() {
        Class::Full
    } else {
        Class::Widest
    }
}

fn width(d: DType) -> u8 {
    match d {
        DType::F64 => 3,
        DType::F32 => 2,
        DType::F16 | DType::BF16 => 1,
        DType::I32 | DType::I64 | DType::Bool => 0,
    }
}

/// The graph with mixed-precision casts; its loss (`outputs[0]`), aux losses and metrics
/// are f32.
pub fn mixed(graph: &Graph, compute: DType) -> Result<Graph, String> {
    if !matches!(compute, DType::BF16 | DType::F16) {
        return Err(format!("mixed precision computes in bf16 or f16, not {}", compute.name()));
    }
    let mut out = Graph { dim_defs: graph.dim_defs.clone(), ..Graph::default() };
    let mut map: Vec<ValueId> = Vec::with_capacity(graph.nodes.len());
    let mut casts: HashMap<(ValueId, DType), ValueId> = HashMap::new();
    for node in &graph.nodes {
        let args: Vec<ValueId> = node.args.iter().map(|a| map[a.0 as usize]).collect();
        let is_scalar = |g: &Graph, v: ValueId| matches!(g.nodes[v.0 as usize].op, Op::Scalar { .. });
        let target = match class(&node.op) {
            Class::Low => Some(compute),
            Class::Full => Some(DType::F32),
            Class::Widest => args
                .iter()
                .filter(|&&a| out.ty(a).dtype.is_float() && !is_scalar(&out, a))
                .map(|&a| out.ty(a).dtype)
                .max_by_key(|&d| width(d)),
            Class::AsWritten => None,
        };
        let args = match target {
            None => args,
            Some(t) => args.into_iter().map(|a| cast(&mut out, &mut casts, a, t, &node.scope)).collect(),
        };
        let ty = if args.is_empty() {
            // A leaf's type is its declaration's.
            node.ty.clone()
        } else {
            let types: Vec<&TensorType> = args.iter().map(|a| out.ty(*a)).collect();
            node.op.infer(&types).map_err(|e| format!("mixed precision in {}: {e}", node.scope))?
        };
        map.push(out.push(node.op.clone(), args, ty, &node.scope));
    }
    let mut full = |out: &mut Graph, v: ValueId| cast(out, &mut casts, map[v.0 as usize], DType::F32, "loss");
    out.outputs = graph.outputs.iter().map(|&v| full(&mut out, v)).collect();
    out.aux_losses = graph.aux_losses.iter().map(|(n, v)| (n.clone(), full(&mut out, *v))).collect();
    out.metrics = graph.metrics.iter().map(|(n, v)| (n.clone(), full(&mut out, *v))).collect();
    Ok(out)
}

/// `v` in dtype `to`: itself, a cast (one per value and dtype), or for a scalar
/// constant a scalar of that dtype.
fn cast(g: &mut Graph, casts: &mut HashMap<(ValueId, DType), ValueId>, v: ValueId, to: DType, scope: &str) -> ValueId {
    let ty = g.ty(v).clone();
    if !ty.dtype.is_float() || ty.dtype == to {
        return v;
    }
    if let Some(&c) = casts.get(&(v, to)) {
        return c;
    }
    let c = match g.nodes[v.0 as usize].op {
        Op::Scalar { value } => g.push(Op::Scalar { value }, Vec::new(), TensorType::new(to, ty.shape), scope),
        _ => g.push(Op::Cast { to }, vec![v], TensorType::new(to, ty.shape), scope),
    };
    casts.insert((v, to), c);
    c
}
