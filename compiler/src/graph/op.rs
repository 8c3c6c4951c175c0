//! The Graph IR's operations: one `enum Op` with its text form (`name`, `attrs`); each
//! op's shape rule (`op/infer.rs`), cost (`op/cost.rs`, FLOPs and bytes moved, symbolic in
//! `B`, `T`) and the predicates passes ask (`op/predicates.rs`).
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
    /// The gradient of `attention` (same attributes) with respect to its argument `wrt`
    /// (0 q, 1 k, 2 v, 3 the score gradient `[B, H, T, S]` that the bias's is reduced
    /// from), given q, k, v, the bias if any, and the output's gradient: recomputed one
    /// query row at a time, flash-style, without a `T × S` buffer (but for the bias's).
    AttentionGrad {
        wrt: usize,
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

/// What `attention_grad`'s `wrt` names, in the text form.
pub const ATTENTION_ARGS: [&str; 4] = ["q", "k", "v", "scores"];

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

mod cost;
mod infer;
mod predicates;

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
            Op::AttentionGrad { .. } => "attention_grad".into(),
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
            Op::Attention { causal, window, softcap, scale, .. }
            | Op::AttentionGrad { causal, window, softcap, scale, .. } => {
                let mut s = match self {
                    Op::AttentionGrad { wrt, .. } => format!(" wrt={}", ATTENTION_ARGS.get(*wrt).unwrap_or(&"?")),
                    _ => String::new(),
                };
                s.push_str(&format!(" causal={causal} scale={scale:?}"));
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
}
