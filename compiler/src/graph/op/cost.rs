//! Each op's cost: FLOPs and bytes moved, from its argument and result types, symbolic
//! in the batch and sequence dims.

use super::*;

impl Op {
    /// FLOPs and bytes moved, from the argument and result types.
    pub fn cost(&self, args: &[&TensorType], out: &TensorType) -> Cost {
        let moved = args.iter().fold(out.bytes(), |acc, a| acc.add(&a.bytes()));
        let per_out = |k: i64| out.numel().mul(&Dim::constant(k));
        let flops = match self {
            // Leaves and pure data movement do no arithmetic.
            Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } | Op::Scalar { .. } | Op::Arange { .. } => {
                return Cost { flops: Dim::constant(0), bytes: out.bytes() }
            }
            Op::Reshape { .. } => return Cost { flops: Dim::constant(0), bytes: Dim::constant(0) },
            Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Embedding
            | Op::Pad { .. }
            | Op::Gather { .. } => Dim::constant(0),
            Op::ScatterAdd { .. } => args[2].numel(),
            // A partial selection: about log2(k) comparisons per element.
            Op::TopK { k, .. } => args[0].numel().mul(&Dim::constant(64 - (*k as u64).leading_zeros() as i64)),
            Op::Unary(u) => per_out(u.flops()),
            Op::Binary(_) | Op::Where | Op::Cast { .. } | Op::OneHot { .. } | Op::Cumsum { .. } => per_out(1),
            Op::Softcap { .. } => per_out(3),
            Op::Dropout { .. } | Op::Noise { .. } => per_out(2),
            Op::Reduce { .. } => args[0].numel(),
            // max, subtract, exp, sum, divide.
            Op::Softmax { .. } | Op::LogSoftmax { .. } => per_out(5),
            Op::MatMul => {
                let k = args[0].shape.last().cloned().unwrap_or_else(|| Dim::constant(1));
                out.numel().mul(&k).mul(&Dim::constant(2))
            }
            Op::Attention { .. } => {
                // q kᵀ and the weighted sum of v: 2 · 2 · B·H·T·S·hd, plus the softmax.
                let (q, k) = (args[0], args[1]);
                let bhts = q.shape[0].mul(&q.shape[1]).mul(&q.shape[2]).mul(&k.shape[2]);
                bhts.mul(&q.shape[3]).mul(&Dim::constant(4)).add(&bhts.mul(&Dim::constant(5)))
            }
            Op::AttentionGrad { wrt, .. } => {
                // One flash backward pass computes the three gradients together: q kᵀ again,
                // dO vᵀ, dS k (counted on q's), dSᵀ q (k's) and Pᵀ dO (v's), plus the
                // softmax and its backward: 2.5 forwards in all, as the recomputed graph was.
                let (q, k) = (args[0], args[1]);
                let bhts = q.shape[0].mul(&q.shape[1]).mul(&q.shape[2]).mul(&k.shape[2]);
                let mm = bhts.mul(&q.shape[3]).mul(&Dim::constant(2));
                match wrt {
                    0 => mm.mul(&Dim::constant(3)).add(&bhts.mul(&Dim::constant(8))),
                    1 | 2 => mm,
                    _ => bhts,
                }
            }
            Op::CrossEntropy { .. } => args[0].numel().mul(&Dim::constant(5)),
            Op::Lstm { .. } => {
                // Per step: the two gate matmuls, then ~10 flops per hidden unit.
                let (x, w_hh) = (args[0], args[2]);
                let bt = x.shape[0].mul(&x.shape[1]);
                let gates = x.shape[2].add(&w_hh.shape[0]).mul(&w_hh.shape[1]).mul(&Dim::constant(2));
                bt.mul(&gates.add(&w_hh.shape[0].mul(&Dim::constant(10))))
            }
            // Softmax and top-k over [N, E], then the capacity assignment.
            Op::MoeRoute { .. } => args[0].numel().mul(&Dim::constant(8)),
            // The GShard contractions: one multiply-add per route entry and feature.
            Op::MoeDispatch | Op::MoeCombine => {
                let d = out.shape.last().cloned().unwrap_or_else(|| Dim::constant(1));
                args[0].numel().mul(&d).mul(&Dim::constant(2))
            }
            Op::MoeBalance { .. } | Op::MoeOverflow { .. } | Op::MoeLoad { .. } => {
                args[0].numel().mul(&Dim::constant(2))
            }
            Op::MoeZLoss => args[0].numel().mul(&Dim::constant(6)),
        };
        Cost { flops, bytes: moved }
    }
}
