//! What passes ask about an op (its family and effects) instead of listing variants.

use super::*;

// ---------------------------------------------------------------------------------------
// What passes ask about an op: families and effects. Each predicate is one exhaustive
// match with no catch-all arm, so a new `Op` variant does not compile until it is
// classified here; passes call these instead of listing variants themselves.
impl Op {
    /// Takes no operands: its value comes from the caller (`Input`, `Param`, `Buffer`) or
    /// from its attributes (`Scalar`, `Arange`).
    pub fn is_leaf(&self) -> bool {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } | Op::Scalar { .. } | Op::Arange { .. } => true,
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::Noise { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::MatMul
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::Cumsum { .. }
            | Op::CrossEntropy { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => false,
        }
    }

    /// A leaf whose buffer the caller owns (data inputs, parameters, buffers): memory
    /// accounting counts it as the caller's, not as an activation.
    pub fn is_external(&self) -> bool {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } => true,
            Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::Noise { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::MatMul
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::Cumsum { .. }
            | Op::CrossEntropy { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => false,
        }
    }

    /// Each output element depends only on the operand elements at the same (broadcast)
    /// position: a fusion pass may chain these in one loop.
    pub fn is_elementwise(&self) -> bool {
        match self {
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::Noise { .. } => true,
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Buffer { .. }
            | Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::MatMul
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::Cumsum { .. }
            | Op::CrossEntropy { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => false,
        }
    }

    /// Folds axes away (sum, max, ...) or averages over tokens into a statistic (the loss,
    /// the router's losses and loads): a result has fewer elements than its operand.
    pub fn is_reduction(&self) -> bool {
        match self {
            Op::Reduce { .. }
            | Op::CrossEntropy { .. }
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => true,
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Buffer { .. }
            | Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::Noise { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::MatMul
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::Cumsum { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine => false,
        }
    }

    /// A product summed over a shared axis that runs as one matrix-engine call (`@`,
    /// attention's two products). The LSTM and the MoE dispatch/combine contain products
    /// too, but are a recurrence and a routed copy, and are not classed here.
    pub fn is_contraction(&self) -> bool {
        match self {
            Op::MatMul | Op::Attention { .. } | Op::AttentionGrad { .. } => true,
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Buffer { .. }
            | Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::Noise { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::Cumsum { .. }
            | Op::CrossEntropy { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => false,
        }
    }

    /// Loses accuracy when computed in 16-bit floats: sums over many elements,
    /// exponentials normalised over an axis, the loss, running sums, the recurrence, and
    /// the router (its noise, its choice and its statistics, which small logit differences
    /// decide). Mixed precision runs these in f32, as PyTorch's autocast does.
    pub fn is_precision_sensitive(&self) -> bool {
        match self {
            Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::CrossEntropy { .. }
            | Op::Cumsum { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::Noise { .. }
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => true,
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Buffer { .. }
            | Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::MatMul
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::MoeDispatch
            | Op::MoeCombine => false,
        }
    }

    /// Only moves or repeats elements, with no arithmetic and no data-dependent index:
    /// reshape, transpose, slice, concat, broadcast and constant padding.
    pub fn is_layout(&self) -> bool {
        match self {
            Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. } => true,
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Buffer { .. }
            | Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::Noise { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::MatMul
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::Cumsum { .. }
            | Op::CrossEntropy { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => false,
        }
    }

    /// The result can reuse its operand's buffer as it is (a reshape of a contiguous
    /// tensor): it costs no activation memory of its own. Other layout ops copy.
    pub fn is_view(&self) -> bool {
        match self {
            Op::Reshape { .. } => true,
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Buffer { .. }
            | Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::Noise { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::MatMul
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::Cumsum { .. }
            | Op::CrossEntropy { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => false,
        }
    }

    /// Draws from a random stream named by its `key` (in training only): two nodes with the
    /// same key draw the same numbers, so the backward and recomputation replay them, but
    /// such a node is not a pure function of its operands alone.
    pub fn is_random(&self) -> bool {
        match self {
            Op::Dropout { .. } | Op::Noise { .. } => true,
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Buffer { .. }
            | Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::MatMul
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::Cumsum { .. }
            | Op::CrossEntropy { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => false,
        }
    }

    /// Autodiff derives this op's vector-Jacobian product (`autodiff::vjp`). Leaves have
    /// nothing to derive; an op whose gradient is zero or undefined almost everywhere
    /// (comparisons, top-k indices, routing loads) has one, which sends nothing back.
    pub fn has_gradient(&self) -> bool {
        match self {
            // No second derivatives: the attention backward is differentiated nowhere.
            Op::Lstm { .. } | Op::AttentionGrad { .. } => false,
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Buffer { .. }
            | Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::Noise { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::MatMul
            | Op::Attention { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. }
            | Op::Pad { .. }
            | Op::Embedding
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::Cumsum { .. }
            | Op::CrossEntropy { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => true,
        }
    }

    /// The batching rule (as in `vmap`): this op applied to operands that carry one more
    /// leading axis, of size `n`, so that `stack(n)` copies run as one node. Axis
    /// attributes shift by one and target shapes gain `n` in front; elementwise ops and
    /// `@` broadcast over the new axis as they are. `None` where no rule is written yet;
    /// leaves have no operands to batch (a stacked call copies them unchanged).
    pub fn batched(&self, n: &Dim) -> Option<Op> {
        let shift = |a: &usize| a + 1;
        let prefixed = |shape: &[Dim]| std::iter::once(n.clone()).chain(shape.iter().cloned()).collect();
        Some(match self {
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Softcap { .. }
            | Op::Cast { .. }
            | Op::Dropout { .. }
            | Op::Noise { .. }
            | Op::MatMul
            | Op::Embedding => self.clone(),
            Op::Reduce { kind, axes, keepdim } => {
                Op::Reduce { kind: *kind, axes: axes.iter().map(shift).collect(), keepdim: *keepdim }
            }
            Op::Softmax { axis } => Op::Softmax { axis: shift(axis) },
            Op::LogSoftmax { axis } => Op::LogSoftmax { axis: shift(axis) },
            Op::Cumsum { axis } => Op::Cumsum { axis: shift(axis) },
            Op::Slice { axis, start, end } => Op::Slice { axis: shift(axis), start: start.clone(), end: end.clone() },
            Op::Concat { axis } => Op::Concat { axis: shift(axis) },
            Op::Transpose { perm } => {
                Op::Transpose { perm: std::iter::once(0).chain(perm.iter().map(shift)).collect() }
            }
            Op::Reshape { shape } => Op::Reshape { shape: prefixed(shape) },
            Op::Broadcast { shape } => Op::Broadcast { shape: prefixed(shape) },
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Buffer { .. }
            | Op::Scalar { .. }
            | Op::Arange { .. }
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::Pad { .. }
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::OneHot { .. }
            | Op::CrossEntropy { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => return None,
        })
    }
}
