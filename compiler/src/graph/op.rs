//! The Graph IR's operations: one `enum Op`, and for each op, in one place, its shape
//! rule (`infer`) and its cost (`cost`, FLOPs and bytes moved, symbolic in `B`, `T`).
//! Reference semantics (`eval`) and gradients (`vjp`) join these matches with the
//! execution stage; every match is exhaustive, so a new op lists everything it needs.
//!
//! The set is small on purpose: `rearrange` and `split` are elaborated into `Reshape`,
//! `Transpose` and `Slice`; stdlib blocks (norms, RoPE, MLPs) into these primitives.

use super::dim::Dim;
use super::types::{DType, TensorType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Erf,
    Sigmoid,
    Sin,
    Cos,
    Abs,
    Relu,
    /// `x * Φ(x)`.
    Gelu,
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
    GeluTanh,
    /// `x * sigmoid(x)`.
    Silu,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    Min,
    Max,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    Var,
    LogSumExp,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    // ---- leaves: no arguments
    /// A data input of `forward` (token ids, masks).
    Input {
        name: String,
    },
    /// A learned parameter, by checkpoint name.
    Param {
        name: String,
    },
    /// A compile-time tensor (`buffer`), by name.
    Buffer {
        name: String,
    },
    /// A scalar constant, broadcast where used.
    Scalar {
        value: f64,
    },
    /// `[0, 1, ..., n-1]`.
    Arange {
        n: Dim,
    },

    // ---- elementwise (NumPy broadcasting)
    Unary(Unary),
    Binary(Binary),
    /// `where(c, a, b)`.
    Where,
    /// `cap * tanh(x / cap)`.
    Softcap {
        cap: f64,
    },
    Cast {
        to: DType,
    },
    /// Zeroes each element with probability `p` and scales the rest by `1/(1-p)` in
    /// training; identity at inference.
    Dropout {
        p: f64,
        /// Names the mask's random stream: the backward pass applies the same mask by
        /// using the same key.
        key: u64,
    },
    /// Adds Gaussian noise of std `std` in training (noisy top-k gating); identity at
    /// inference. Its gradient is the identity: the noise is a constant offset, drawn
    /// from the stream named by `key`, so replaying it needs nothing from the backward.
    Noise {
        std: f64,
        key: u64,
    },

    // ---- reductions and normalisations over axes
    Reduce {
        kind: Reduce,
        axes: Vec<usize>,
        keepdim: bool,
    },
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },

    // ---- contractions
    /// Batched matrix product with broadcast batch dims: `[..., m, k] @ [..., k, n]`.
    MatMul,
    /// `softmax(mask(q kᵀ * scale) + bias) v`: q `[B, H, T, hd]`, k/v `[B, Hkv, S, hd]`,
    /// `H % Hkv == 0` (MHA, GQA, MQA); optional `bias` broadcast to `[B, H, T, S]`.
    Attention {
        causal: bool,
        window: Option<i64>,
        softcap: Option<f64>,
        scale: f64,
        has_bias: bool,
    },

    // ---- movement
    Reshape {
        shape: Vec<Dim>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Slice {
        axis: usize,
        start: Dim,
        end: Dim,
    },
    Concat {
        axis: usize,
    },
    Broadcast {
        shape: Vec<Dim>,
    },

    /// Constant padding of one axis: `before` and `after` elements of `value`.
    Pad {
        axis: usize,
        before: i64,
        after: i64,
        value: f64,
    },

    // ---- indexing
    /// `table[ids]`: `[V, d]` and integer ids `[...]` → `[..., d]`.
    Embedding,
    /// `x` taken along `axis` at integer `index` (same rank; other dims broadcast):
    /// `out[.., i, ..] = x[.., index[.., i, ..], ..]`.
    Gather {
        axis: usize,
    },
    /// Adds `src` into zeros shaped like `x` at `index` along `axis`: `gather`'s adjoint.
    ScatterAdd {
        axis: usize,
    },
    /// The `k` largest along the last axis: their values, or (`indices`) their positions.
    TopK {
        k: i64,
        indices: bool,
    },
    OneHot {
        n: i64,
    },
    Cumsum {
        axis: usize,
    },

    // ---- losses
    /// Mean cross-entropy of logits `[..., V]` against integer targets `[...]`, skipping
    /// targets equal to `ignore`.
    CrossEntropy {
        ignore: i64,
    },

    // ---- recurrences (what a declarative language cannot spell as dataflow)
    /// One LSTM direction over the time axis: x `[B, T, d]`, `w_ih [d, 4h]`, `w_hh
    /// [h, 4h]`, `bias [4h]` with gates `i, f, g, o` → `[B, T, h]`; zero initial state.
    Lstm {
        reverse: bool,
    },

    // ---- mixture of experts (GShard formulation; see LANGUAGE.md for the semantics)
    /// Router logits `[N, E]` → combine weights `[N, E, C]`: softmax over all experts,
    /// top-k renormalised, then each expert keeps its first `C` assignments (all first
    /// choices before second choices, then token order); a dropped assignment is 0.
    /// Noisy gating adds a `Noise` node in front.
    MoeRoute {
        k: i64,
        capacity: Dim,
    },
    /// `x [N, d]` gathered into expert slots `[E, C, d]` by the route `[N, E, C]`.
    MoeDispatch,
    /// Expert outputs `[E, C, d]` weighted back into tokens `[N, d]` by the route.
    MoeCombine,
    /// Switch load-balancing loss `E · Σ f_i P_i` from logits `[N, E]` and the route.
    MoeBalance {
        k: i64,
    },
    /// Router z-loss `mean(logsumexp(logits)²)`.
    MoeZLoss,
    /// Fraction of assignments each expert received, from the route: `[E]`.
    MoeLoad {
        k: i64,
    },
    /// Fraction of the `N·k` assignments dropped for lack of capacity: a scalar.
    MoeOverflow {
        k: i64,
    },
}

/// FLOPs and bytes moved by one node, symbolic in the batch and sequence dims.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    pub flops: Dim,
    pub bytes: Dim,
}

impl Unary {
    pub fn name(self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Sqrt => "sqrt",
            Unary::Rsqrt => "rsqrt",
            Unary::Tanh => "tanh",
            Unary::Erf => "erf",
            Unary::Sigmoid => "sigmoid",
            Unary::Sin => "sin",
            Unary::Cos => "cos",
            Unary::Abs => "abs",
            Unary::Relu => "relu",
            Unary::Gelu => "gelu",
            Unary::GeluTanh => "gelu_tanh",
            Unary::Silu => "silu",
            Unary::Not => "not",
        }
    }

    /// FLOPs per element, counting a transcendental as one.
    fn flops(self) -> i64 {
        match self {
            Unary::Neg | Unary::Abs | Unary::Relu | Unary::Not => 1,
            Unary::Exp
            | Unary::Log
            | Unary::Sqrt
            | Unary::Rsqrt
            | Unary::Tanh
            | Unary::Erf
            | Unary::Sin
            | Unary::Cos => 1,
            Unary::Sigmoid => 3,
            Unary::Silu => 4,
            Unary::Gelu => 5,
            Unary::GeluTanh => 8,
        }
    }
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Rem => "rem",
            Binary::Pow => "pow",
            Binary::Min => "min",
            Binary::Max => "max",
            Binary::Eq => "eq",
            Binary::Ne => "ne",
            Binary::Lt => "lt",
            Binary::Le => "le",
            Binary::Gt => "gt",
            Binary::Ge => "ge",
            Binary::And => "and",
            Binary::Or => "or",
        }
    }

    /// Comparisons and logic give `bool`.
    pub fn is_predicate(self) -> bool {
        match self {
            Binary::Eq | Binary::Ne | Binary::Lt | Binary::Le | Binary::Gt | Binary::Ge | Binary::And | Binary::Or => {
                true
            }
            Binary::Add
            | Binary::Sub
            | Binary::Mul
            | Binary::Div
            | Binary::Rem
            | Binary::Pow
            | Binary::Min
            | Binary::Max => false,
        }
    }
}

impl Reduce {
    pub fn name(self) -> &'static str {
        match self {
            Reduce::Sum => "sum",
            Reduce::Mean => "mean",
            Reduce::Max => "max",
            Reduce::Min => "min",
            Reduce::Var => "var",
            Reduce::LogSumExp => "logsumexp",
        }
    }
}

/// NumPy broadcasting of two shapes, symbolically: dims must be equal or one must be 1.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let n = a.len().max(b.len());
    let one = Dim::constant(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n { Some(&a[i + a.len() - n]) } else { None };
        let db = if i + b.len() >= n { Some(&b[i + b.len() - n]) } else { None };
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(x), Some(y)) if *x == one => y.clone(),
            (Some(x), Some(y)) if *y == one => x.clone(),
            (Some(x), Some(y)) => return Err(format!("dims {x} and {y} do not broadcast")),
            (None, None) => unreachable!("i < max(len)"),
        });
    }
    Ok(out)
}

fn shape_text(shape: &[Dim]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

fn check_axis(axis: usize, rank: usize) -> Result<(), String> {
    if axis >= rank {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(())
}

// The integer attributes of an op (counts, amounts, bounds) are checked here for every
// value a dim may take: what is wrong for all bindings is an error now, what depends on
// a symbolic dim is checked again by the interpreter when the dim is bound.

/// A count attribute (`k`, `n`, a window) must be at least 1, whatever the dims.
fn check_count(what: &str, name: &str, value: i64) -> Result<(), String> {
    if value < 1 {
        return Err(format!("`{what}` needs {name} >= 1, found {name} = {value}"));
    }
    Ok(())
}

/// A count that must also fit a dim (`topk`'s `k` in the last axis): checked now when
/// the dim is a constant, at run time otherwise.
fn check_count_within(what: &str, name: &str, value: i64, dim: &Dim, dim_name: &str) -> Result<(), String> {
    check_count(what, name, value)?;
    match dim.as_constant() {
        Some(n) if value > n => {
            Err(format!("`{what}` needs 1 <= {name} <= {dim_name}, found {name} = {value}, {dim_name} = {n}"))
        }
        _ => Ok(()),
    }
}

/// Target shapes (`reshape`, `broadcast`) cannot hold a negative constant dim: `-1` is
/// not "infer this dim" here.
fn check_shape(what: &str, shape: &[Dim]) -> Result<(), String> {
    if shape.iter().any(|d| d.as_constant().is_some_and(|c| c < 0)) {
        return Err(format!(
            "`{what}` needs dims of at least 0, found {} (write each dim, as in `[B*T, d]`)",
            shape_text(shape)
        ));
    }
    Ok(())
}

/// `0 <= start <= end <= len` wherever the difference is known now (constants, or
/// `T - 1` against `T`); the rest is checked when the dims are bound.
fn check_bounds(start: &Dim, end: &Dim, len: &Dim) -> Result<(), String> {
    let negative = |d: Dim| d.as_constant().is_some_and(|c| c < 0);
    if negative(start.clone()) || negative(end.sub(start)) || negative(len.sub(end)) {
        return Err(format!("`slice` needs 0 <= start <= end <= {len}, found start = {start}, end = {end}"));
    }
    Ok(())
}

/// `gather`/`scatter_add`: every axis but `axis` of `index` must fit in `x` (equal, `x`'s
/// dim 1 for `gather`, which broadcasts it, or smaller when both are known).
fn check_index_dims(
    what: &str,
    x: &TensorType,
    index: &TensorType,
    axis: usize,
    broadcasts: bool,
) -> Result<(), String> {
    for (i, (dx, di)) in x.shape.iter().zip(&index.shape).enumerate() {
        let fits = i == axis
            || dx == di
            || (broadcasts && dx.as_constant() == Some(1))
            || match (dx.as_constant(), di.as_constant()) {
                (Some(a), Some(b)) => b <= a,
                // Only known when bound: the interpreter checks each position.
                _ => true,
            };
        if !fits {
            return Err(format!(
                "`{what}` needs the index's dims to fit {} off axis {axis}, found {}",
                x.shape_text(),
                index.shape_text()
            ));
        }
    }
    Ok(())
}

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
            Op::MatMul | Op::Attention { .. } => true,
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
            Op::Lstm { .. } => false,
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

impl Op {
    /// The op's name in the IR text.
    pub fn name(&self) -> String {
        match self {
            Op::Input { .. } => "input".into(),
            Op::Param { .. } => "param".into(),
            Op::Buffer { .. } => "buffer".into(),
            Op::Scalar { .. } => "scalar".into(),
            Op::Arange { .. } => "arange".into(),
            Op::Unary(u) => u.name().into(),
            Op::Binary(b) => b.name().into(),
            Op::Where => "where".into(),
            Op::Softcap { .. } => "softcap".into(),
            Op::Cast { .. } => "cast".into(),
            Op::Dropout { .. } => "dropout".into(),
            Op::Noise { .. } => "noise".into(),
            Op::Reduce { kind, .. } => kind.name().into(),
            Op::Softmax { .. } => "softmax".into(),
            Op::LogSoftmax { .. } => "log_softmax".into(),
            Op::MatMul => "matmul".into(),
            Op::Attention { .. } => "attention".into(),
            Op::Reshape { .. } => "reshape".into(),
            Op::Transpose { .. } => "transpose".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Concat { .. } => "concat".into(),
            Op::Broadcast { .. } => "broadcast".into(),
            Op::Pad { .. } => "pad".into(),
            Op::Embedding => "embedding".into(),
            Op::Gather { .. } => "gather".into(),
            Op::ScatterAdd { .. } => "scatter_add".into(),
            Op::TopK { indices: false, .. } => "topk_values".into(),
            Op::TopK { indices: true, .. } => "topk_indices".into(),
            Op::OneHot { .. } => "one_hot".into(),
            Op::Cumsum { .. } => "cumsum".into(),
            Op::CrossEntropy { .. } => "cross_entropy".into(),
            Op::Lstm { .. } => "lstm".into(),
            Op::MoeRoute { .. } => "moe_route".into(),
            Op::MoeDispatch => "moe_dispatch".into(),
            Op::MoeCombine => "moe_combine".into(),
            Op::MoeBalance { .. } => "moe_balance".into(),
            Op::MoeZLoss => "moe_zloss".into(),
            Op::MoeLoad { .. } => "moe_load".into(),
            Op::MoeOverflow { .. } => "moe_overflow".into(),
        }
    }

    /// Attributes in the IR text, after the arguments.
    pub fn attrs(&self) -> String {
        let dims = |s: &[Dim]| shape_text(s);
        match self {
            Op::Input { name } | Op::Param { name } | Op::Buffer { name } => format!(" {name:?}"),
            // Whole numbers print as integers, except -0.0: `as i64` would lose its sign, and
            // the text form must parse back to the same bits.
            Op::Scalar { value }
                if value.fract() == 0.0 && value.abs() < 1e15 && value.to_bits() != (-0.0f64).to_bits() =>
            {
                format!(" {}", *value as i64)
            }
            Op::Scalar { value } => format!(" {value:?}"),
            Op::Arange { n } => format!(" n={n}"),
            Op::Softcap { cap } => format!(" cap={cap:?}"),
            Op::Cast { to } => format!(" to={}", to.name()),
            Op::Dropout { p, key } => format!(" p={p:?} key={key}"),
            Op::Noise { std, key } => format!(" std={std:?} key={key}"),
            Op::Reduce { axes, keepdim, .. } => format!(" axes={axes:?} keepdim={keepdim}"),
            Op::Pad { axis, before, after, value } => {
                format!(" axis={axis} before={before} after={after} value={value:?}")
            }
            Op::TopK { k, .. } => format!(" k={k}"),
            Op::Softmax { axis }
            | Op::LogSoftmax { axis }
            | Op::Cumsum { axis }
            | Op::Concat { axis }
            | Op::Gather { axis }
            | Op::ScatterAdd { axis } => {
                format!(" axis={axis}")
            }
            Op::Attention { causal, window, softcap, scale, .. } => {
                let mut s = format!(" causal={causal} scale={scale:?}");
                if let Some(w) = window {
                    s.push_str(&format!(" window={w}"));
                }
                if let Some(c) = softcap {
                    s.push_str(&format!(" softcap={c:?}"));
                }
                s
            }
            Op::Reshape { shape } | Op::Broadcast { shape } => format!(" {}", dims(shape)),
            Op::Transpose { perm } => format!(" perm={perm:?}"),
            Op::Slice { axis, start, end } => format!(" axis={axis} {start}..{end}"),
            Op::OneHot { n } => format!(" n={n}"),
            Op::CrossEntropy { ignore } => format!(" ignore={ignore}"),
            Op::Lstm { reverse } => format!(" reverse={reverse}"),
            Op::MoeRoute { k, capacity } => format!(" k={k} capacity={capacity}"),
            Op::MoeBalance { k } | Op::MoeLoad { k } | Op::MoeOverflow { k } => format!(" k={k}"),
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::MatMul
            | Op::Embedding
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeZLoss => String::new(),
        }
    }

    /// The shape rule: argument types → result type, or what is wrong, in words that name
    /// both shapes. Leaves (`Input`, `Param`, `Buffer`) carry their type from elaboration.
    pub fn infer(&self, args: &[&TensorType]) -> Result<TensorType, String> {
        let arity = |n: usize| -> Result<(), String> {
            if args.len() != n {
                return Err(format!("{} takes {n} argument(s), found {}", self.name(), args.len()));
            }
            Ok(())
        };
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } => {
                Err("a leaf's type comes from its declaration".into())
            }
            Op::Scalar { .. } => Ok(TensorType::scalar(DType::F32)),
            Op::Arange { n } => {
                if n.as_constant().is_some_and(|c| c < 0) {
                    return Err(format!("`arange` needs a length of at least 0, found {n}"));
                }
                Ok(TensorType::new(DType::I32, vec![n.clone()]))
            }
            Op::Unary(u) => {
                arity(1)?;
                if *u == Unary::Not && args[0].dtype != DType::Bool {
                    return Err(format!("`not` needs bool, found {}", args[0].dtype.name()));
                }
                if !matches!(u, Unary::Neg | Unary::Abs | Unary::Not) && !args[0].dtype.is_float() {
                    return Err(format!("`{}` needs a float tensor, found {}", u.name(), args[0]));
                }
                Ok(args[0].clone())
            }
            Op::Binary(b) => {
                arity(2)?;
                let shape = broadcast(&args[0].shape, &args[1].shape).map_err(|e| {
                    format!("cannot {} {} and {}: {e}", b.name(), args[0].shape_text(), args[1].shape_text())
                })?;
                if args[0].dtype != args[1].dtype {
                    return Err(format!(
                        "cannot {} {} and {}: the dtypes differ (cast one first)",
                        b.name(),
                        args[0],
                        args[1]
                    ));
                }
                let dtype = if b.is_predicate() { DType::Bool } else { args[0].dtype };
                Ok(TensorType::new(dtype, shape))
            }
            Op::Where => {
                arity(3)?;
                if args[0].dtype != DType::Bool {
                    return Err(format!("`where` needs a bool condition, found {}", args[0]));
                }
                if args[1].dtype != args[2].dtype {
                    return Err(format!("`where` needs both branches of one dtype, found {} and {}", args[1], args[2]));
                }
                let s = broadcast(&args[1].shape, &args[2].shape)
                    .and_then(|s| broadcast(&args[0].shape, &s))
                    .map_err(|e| format!("`where` arguments do not broadcast: {e}"))?;
                Ok(TensorType::new(args[1].dtype, s))
            }
            Op::Softcap { cap } => {
                arity(1)?;
                if !(*cap > 0.0 && cap.is_finite()) {
                    return Err(format!("`softcap` needs a positive cap, found {cap:?}"));
                }
                Ok(args[0].clone())
            }
            Op::Dropout { p, .. } => {
                arity(1)?;
                // p = 1 would scale the kept elements (none) by 1/0.
                if !(0.0..1.0).contains(p) {
                    return Err(format!("`dropout` needs 0 <= p < 1, found p = {p:?}"));
                }
                Ok(args[0].clone())
            }
            Op::Noise { .. } => {
                arity(1)?;
                Ok(args[0].clone())
            }
            Op::Cast { to } => {
                arity(1)?;
                Ok(TensorType::new(*to, args[0].shape.clone()))
            }
            Op::Reduce { axes, keepdim, .. } => {
                arity(1)?;
                for (i, &a) in axes.iter().enumerate() {
                    check_axis(a, args[0].rank())?;
                    if axes[..i].contains(&a) {
                        return Err(format!("axis {a} is reduced twice in {axes:?}"));
                    }
                }
                let shape = args[0]
                    .shape
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| match (axes.contains(&i), keepdim) {
                        (false, _) => Some(d.clone()),
                        (true, true) => Some(Dim::constant(1)),
                        (true, false) => None,
                    })
                    .collect();
                Ok(TensorType::new(args[0].dtype, shape))
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } | Op::Cumsum { axis } => {
                arity(1)?;
                check_axis(*axis, args[0].rank())?;
                Ok(args[0].clone())
            }
            Op::MatMul => {
                arity(2)?;
                let (a, b) = (args[0], args[1]);
                if a.rank() < 2 || b.rank() < 2 {
                    return Err(format!(
                        "`@` needs two matrices or batches of them, found {} and {}",
                        a.shape_text(),
                        b.shape_text()
                    ));
                }
                let (m, k1) = (&a.shape[a.rank() - 2], &a.shape[a.rank() - 1]);
                let (k2, n) = (&b.shape[b.rank() - 2], &b.shape[b.rank() - 1]);
                if k1 != k2 {
                    return Err(format!(
                        "`@` needs the inner dims to agree: {} @ {} contracts {k1} with {k2}",
                        a.shape_text(),
                        b.shape_text()
                    ));
                }
                if a.dtype != b.dtype || !a.dtype.is_float() {
                    return Err(format!("`@` needs two float tensors of one dtype, found {a} and {b}"));
                }
                let batch = broadcast(&a.shape[..a.rank() - 2], &b.shape[..b.rank() - 2])
                    .map_err(|e| format!("`@` batch dims of {} and {}: {e}", a.shape_text(), b.shape_text()))?;
                let mut shape = batch;
                shape.extend([m.clone(), n.clone()]);
                Ok(TensorType::new(a.dtype, shape))
            }
            Op::Attention { has_bias, window, softcap, .. } => {
                arity(if *has_bias { 4 } else { 3 })?;
                if let Some(w) = window {
                    check_count("attention", "window", *w)?;
                }
                if let Some(c) = softcap.filter(|c| !(*c > 0.0 && c.is_finite())) {
                    return Err(format!("`attention` needs a positive softcap, found {c:?}"));
                }
                let (q, k, v) = (args[0], args[1], args[2]);
                if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
                    return Err(format!(
                        "`attention` takes q [B, H, T, hd] and k, v [B, Hkv, S, hd], found {}, {} and {}",
                        q.shape_text(),
                        k.shape_text(),
                        v.shape_text()
                    ));
                }
                if k.shape != v.shape {
                    return Err(format!(
                        "`attention` needs k and v of one shape, found {} and {}",
                        k.shape_text(),
                        v.shape_text()
                    ));
                }
                if q.shape[0] != k.shape[0] || q.shape[3] != k.shape[3] {
                    return Err(format!(
                        "`attention` needs q and k to agree on batch and head dim, found {} and {}",
                        q.shape_text(),
                        k.shape_text()
                    ));
                }
                match (q.shape[1].as_constant(), k.shape[1].as_constant()) {
                    (Some(h), Some(hkv)) if hkv == 0 || h % hkv != 0 => {
                        return Err(format!(
                            "`attention` needs H % Hkv == 0 (MHA, GQA, MQA), found H = {h}, Hkv = {hkv}"
                        ))
                    }
                    _ => {}
                }
                if *has_bias {
                    let logits = vec![q.shape[0].clone(), q.shape[1].clone(), q.shape[2].clone(), k.shape[2].clone()];
                    let b = broadcast(&args[3].shape, &logits).map_err(|e| {
                        format!(
                            "`attention` bias {} does not broadcast to {}: {e}",
                            args[3].shape_text(),
                            shape_text(&logits)
                        )
                    })?;
                    if b != logits {
                        return Err(format!(
                            "`attention` bias {} would grow the logits {}",
                            args[3].shape_text(),
                            shape_text(&logits)
                        ));
                    }
                }
                Ok(TensorType::new(
                    q.dtype,
                    vec![q.shape[0].clone(), q.shape[1].clone(), q.shape[2].clone(), v.shape[3].clone()],
                ))
            }
            Op::Reshape { shape } => {
                arity(1)?;
                check_shape("reshape", shape)?;
                let to = TensorType::new(args[0].dtype, shape.clone());
                if to.numel() != args[0].numel() {
                    return Err(format!(
                        "cannot reshape {} ({} elements) to {} ({} elements)",
                        args[0].shape_text(),
                        args[0].numel(),
                        to.shape_text(),
                        to.numel()
                    ));
                }
                Ok(to)
            }
            Op::Transpose { perm } => {
                arity(1)?;
                let mut sorted = perm.clone();
                sorted.sort();
                if sorted != (0..args[0].rank()).collect::<Vec<_>>() {
                    return Err(format!(
                        "{perm:?} is not a permutation of the {} axes of {}",
                        args[0].rank(),
                        args[0].shape_text()
                    ));
                }
                Ok(TensorType::new(args[0].dtype, perm.iter().map(|&i| args[0].shape[i].clone()).collect()))
            }
            Op::Slice { axis, start, end } => {
                arity(1)?;
                check_axis(*axis, args[0].rank())?;
                check_bounds(start, end, &args[0].shape[*axis])?;
                let mut shape = args[0].shape.clone();
                shape[*axis] = end.sub(start);
                Ok(TensorType::new(args[0].dtype, shape))
            }
            Op::Concat { axis } => {
                if args.is_empty() {
                    return Err("`concat` needs at least one tensor".into());
                }
                check_axis(*axis, args[0].rank())?;
                let mut shape = args[0].shape.clone();
                for a in &args[1..] {
                    if a.dtype != args[0].dtype {
                        return Err(format!("`concat` needs one dtype, found {} and {}", args[0], a));
                    }
                    let same = a.rank() == shape.len()
                        && a.shape.iter().enumerate().all(|(i, d)| i == *axis || *d == shape[i]);
                    if !same {
                        return Err(format!(
                            "`concat` along axis {axis} needs the other dims equal, found {} and {}",
                            args[0].shape_text(),
                            a.shape_text()
                        ));
                    }
                    shape[*axis] = shape[*axis].add(&a.shape[*axis]);
                }
                Ok(TensorType::new(args[0].dtype, shape))
            }
            Op::Broadcast { shape } => {
                arity(1)?;
                check_shape("broadcast", shape)?;
                let b = broadcast(&args[0].shape, shape)
                    .map_err(|e| format!("cannot broadcast {} to {}: {e}", args[0].shape_text(), shape_text(shape)))?;
                if b != *shape {
                    return Err(format!("cannot broadcast {} to {}", args[0].shape_text(), shape_text(shape)));
                }
                Ok(TensorType::new(args[0].dtype, shape.clone()))
            }
            Op::Pad { axis, before, after, .. } => {
                arity(1)?;
                check_axis(*axis, args[0].rank())?;
                if *before < 0 || *after < 0 {
                    return Err(format!("`pad` takes non-negative amounts, found {before} and {after}"));
                }
                let grow =
                    before.checked_add(*after).ok_or_else(|| format!("`pad` by {before} + {after} overflows"))?;
                let mut shape = args[0].shape.clone();
                shape[*axis] = shape[*axis].add(&Dim::constant(grow));
                Ok(TensorType::new(args[0].dtype, shape))
            }
            Op::Gather { axis } => {
                arity(2)?;
                let (x, index) = (args[0], args[1]);
                check_axis(*axis, x.rank())?;
                if index.rank() != x.rank() || !matches!(index.dtype, DType::I32 | DType::I64) {
                    return Err(format!(
                        "`gather` needs integer indices of the same rank as {}, found {index}",
                        x.shape_text()
                    ));
                }
                check_index_dims("gather", x, index, *axis, true)?;
                Ok(TensorType::new(x.dtype, index.shape.clone()))
            }
            Op::ScatterAdd { axis } => {
                arity(3)?;
                let (x, index, src) = (args[0], args[1], args[2]);
                check_axis(*axis, x.rank())?;
                if index.shape != src.shape || index.rank() != x.rank() {
                    return Err(format!(
                        "`scatter_add` needs index and src of one shape and the rank of {}, found {} and {}",
                        x.shape_text(),
                        index.shape_text(),
                        src.shape_text()
                    ));
                }
                check_index_dims("scatter_add", x, index, *axis, false)?;
                Ok(x.clone())
            }
            Op::TopK { k, indices } => {
                arity(1)?;
                let x = args[0];
                let Some(last) = x.shape.last() else { return Err("`topk` needs at least one axis".into()) };
                // k < 1 is wrong for every binding of a symbolic last axis, so it is
                // rejected here; k above a symbolic axis is checked when it is bound.
                check_count("topk", "k", *k)?;
                if let Some(n) = last.as_constant() {
                    if *k > n {
                        return Err(format!("`topk` needs 1 <= k <= {n}, found k = {k}"));
                    }
                }
                let mut shape = x.shape.clone();
                *shape.last_mut().expect("checked") = Dim::constant(*k);
                Ok(TensorType::new(if *indices { DType::I32 } else { x.dtype }, shape))
            }
            Op::Embedding => {
                arity(2)?;
                let (table, ids) = (args[0], args[1]);
                if table.rank() != 2 {
                    return Err(format!("`embedding` needs a table [V, d], found {}", table.shape_text()));
                }
                if !matches!(ids.dtype, DType::I32 | DType::I64) {
                    return Err(format!("`embedding` needs integer ids, found {}", ids));
                }
                let mut shape = ids.shape.clone();
                shape.push(table.shape[1].clone());
                Ok(TensorType::new(table.dtype, shape))
            }
            Op::OneHot { n } => {
                arity(1)?;
                if !matches!(args[0].dtype, DType::I32 | DType::I64) {
                    return Err(format!("`one_hot` needs integer ids, found {}", args[0]));
                }
                check_count("one_hot", "n", *n)?;
                let mut shape = args[0].shape.clone();
                shape.push(Dim::constant(*n));
                Ok(TensorType::new(DType::F32, shape))
            }
            Op::CrossEntropy { .. } => {
                arity(2)?;
                let (logits, targets) = (args[0], args[1]);
                if !matches!(targets.dtype, DType::I32 | DType::I64) {
                    return Err(format!("`cross_entropy` needs integer targets, found {targets}"));
                }
                if logits.rank() != targets.rank() + 1 || logits.shape[..targets.rank()] != targets.shape[..] {
                    return Err(format!(
                        "`cross_entropy` needs logits [..., V] and targets [...], found {} and {}",
                        logits.shape_text(),
                        targets.shape_text()
                    ));
                }
                if logits.shape[targets.rank()].as_constant().is_some_and(|v| v < 1) {
                    return Err(format!(
                        "`cross_entropy` needs at least one class, found logits {}",
                        logits.shape_text()
                    ));
                }
                Ok(TensorType::scalar(DType::F32))
            }
            Op::Lstm { .. } => {
                arity(4)?;
                let (x, w_ih, w_hh, bias) = (args[0], args[1], args[2], args[3]);
                let fits = x.rank() == 3
                    && w_ih.rank() == 2
                    && w_hh.rank() == 2
                    && bias.rank() == 1
                    && w_ih.shape[0] == x.shape[2]
                    && w_hh.shape[0].mul(&Dim::constant(4)) == w_hh.shape[1]
                    && w_ih.shape[1] == w_hh.shape[1]
                    && bias.shape[0] == w_hh.shape[1];
                if !fits {
                    return Err(format!(
                        "`lstm` takes x [B, T, d], w_ih [d, 4h], w_hh [h, 4h] and bias [4h], found {}, {}, {} and {}",
                        x.shape_text(),
                        w_ih.shape_text(),
                        w_hh.shape_text(),
                        bias.shape_text()
                    ));
                }
                Ok(TensorType::new(x.dtype, vec![x.shape[0].clone(), x.shape[1].clone(), w_hh.shape[0].clone()]))
            }
            Op::MoeRoute { k, capacity, .. } => {
                arity(1)?;
                let logits = args[0];
                if logits.rank() != 2 {
                    return Err(format!("`moe_route` takes router logits [N, E], found {}", logits.shape_text()));
                }
                check_count_within("moe_route", "k", *k, &logits.shape[1], "E")?;
                if capacity.as_constant().is_some_and(|c| c < 0) {
                    return Err(format!("`moe_route` needs a capacity of at least 0, found {capacity}"));
                }
                Ok(TensorType::new(
                    logits.dtype,
                    vec![logits.shape[0].clone(), logits.shape[1].clone(), capacity.clone()],
                ))
            }
            Op::MoeDispatch => {
                arity(2)?;
                let (route, x) = (args[0], args[1]);
                if route.rank() != 3 || x.rank() != 2 || route.shape[0] != x.shape[0] {
                    return Err(format!(
                        "`moe_dispatch` takes a route [N, E, C] and tokens [N, d], found {} and {}",
                        route.shape_text(),
                        x.shape_text()
                    ));
                }
                Ok(TensorType::new(x.dtype, vec![route.shape[1].clone(), route.shape[2].clone(), x.shape[1].clone()]))
            }
            Op::MoeCombine => {
                arity(2)?;
                let (route, y) = (args[0], args[1]);
                if route.rank() != 3 || y.rank() != 3 || route.shape[1..] != y.shape[..2] {
                    return Err(format!(
                        "`moe_combine` takes a route [N, E, C] and expert outputs [E, C, d], found {} and {}",
                        route.shape_text(),
                        y.shape_text()
                    ));
                }
                Ok(TensorType::new(y.dtype, vec![route.shape[0].clone(), y.shape[2].clone()]))
            }
            Op::MoeBalance { k } | Op::MoeOverflow { k } => {
                arity(2)?;
                let (logits, route) = (args[0], args[1]);
                if logits.rank() != 2 || route.rank() != 3 || route.shape[..2] != logits.shape[..] {
                    return Err(format!(
                        "`{}` takes router logits [N, E] and their route [N, E, C], found {} and {}",
                        self.name(),
                        logits.shape_text(),
                        route.shape_text()
                    ));
                }
                check_count_within(&self.name(), "k", *k, &logits.shape[1], "E")?;
                Ok(TensorType::scalar(DType::F32))
            }
            Op::MoeZLoss => {
                arity(1)?;
                if args[0].rank() != 2 || !args[0].dtype.is_float() {
                    return Err(format!("`moe_zloss` takes router logits [N, E], found {}", args[0]));
                }
                Ok(TensorType::scalar(DType::F32))
            }
            Op::MoeLoad { k } => {
                arity(1)?;
                check_count("moe_load", "k", *k)?;
                if args[0].rank() != 3 {
                    return Err(format!("`moe_load` takes a route [N, E, C], found {}", args[0].shape_text()));
                }
                Ok(TensorType::new(DType::F32, vec![args[0].shape[1].clone()]))
            }
        }
    }

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
