//! The Kernel IR: what the backends consume. A program is a list of kernels over named
//! buffers; a kernel is a **loop nest** (parallel loops, reductions, inner loops, loads and
//! stores with index expressions over the loop variables, a flat SSA body of scalar
//! operations) or a **library call** with typed operands (GEMM with its epilogue,
//! attention, scatter-add, top-k, cumulative sums, the LSTM, the MoE routing family).
//! Dims stay symbolic (`B`, `T`, `kv_past`, MoE capacities) and are bound at launch.
//!
//! `lower` makes it from the Graph IR and its fusion groups, `text` prints it, `parse`
//! reads it back, `verify` checks it, `memory_plan` assigns temporaries to an arena by
//! liveness. This module and its types never see a Graph IR node: the backends that
//! consume them (`backend/kernel/`, the reference executor) import nothing else.

pub mod lower;
pub mod memory_plan;
pub mod parse;
pub mod text;
pub mod verify;

pub use crate::graph::dim::Dim;
pub use crate::graph::op::{Binary, Unary};
pub use crate::graph::types::DType;
pub use crate::graph::DimDef;

/// A buffer of the program: `b7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// A scalar SSA value inside one kernel: `t3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Temp(pub u32);

/// A loop variable inside one kernel: `i2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub u32);

#[derive(Clone, Debug, PartialEq)]
pub enum BufferKind {
    /// Given by each call, by name.
    Input(String),
    /// Persistent between calls (parameters, optimizer state, accumulators), by name.
    Param(String),
    /// Made and consumed within the call; `memory_plan` gives it a place.
    Temp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub dtype: DType,
    /// Row-major, contiguous.
    pub shape: Vec<Dim>,
    pub kind: BufferKind,
}

impl Buffer {
    pub fn numel(&self) -> Dim {
        self.shape.iter().fold(Dim::constant(1), |n, d| n.mul(d))
    }
}

/// A program: kernels run in order over its buffers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelProgram {
    /// Dims defined by a formula of the bound ones (MoE capacities).
    pub dim_defs: Vec<DimDef>,
    pub buffers: Vec<Buffer>,
    pub kernels: Vec<Kernel>,
    /// What the call hands back, by name.
    pub returns: Vec<(String, BufId)>,
    /// After the call, the persistent buffer `NAME` holds this buffer's value (where the
    /// kernels did not already store into it in place).
    pub updates: Vec<(String, BufId)>,
}

impl KernelProgram {
    pub fn buffer(&self, b: BufId) -> &Buffer {
        &self.buffers[b.0 as usize]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// `k12`, unique in the program.
    pub name: String,
    /// The block instances whose nodes it computes (`blocks.0.attn_norm`), for messages.
    pub scope: String,
    pub body: KernelBody,
}

#[derive(Clone, Debug, PartialEq)]
pub enum KernelBody {
    /// One launch of one or more independent loop nests (several for a horizontal group:
    /// the optimizer's update of every parameter at once).
    Loops(Vec<LoopNest>),
    Call(Call),
}

/// `parallel` loops (every iteration independent), then `body` once per point.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopNest {
    pub parallel: Vec<(Var, Dim)>,
    pub body: Vec<Stmt>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `t3: f32 = mul t1, t2`: the value, rounded to `dtype` (at native precision).
    Let { temp: Temp, dtype: DType, value: Expr },
    /// `t4: f32 = sum i2 < 64 { ... } -> t3`: `combine` of `value` over the loops, in
    /// order (the first iteration first), accumulated in f64 and rounded to `dtype`.
    Reduce { temp: Temp, dtype: DType, combine: Combine, over: Vec<(Var, Dim)>, body: Vec<Stmt>, value: Temp },
    /// Sequential inner loops.
    For { over: Vec<(Var, Dim)>, body: Vec<Stmt> },
    /// `store b3[i0, i1] = t5`, rounded to the buffer's dtype.
    Store { buf: BufId, index: Vec<Index>, value: Temp },
    /// A data-dependent index must lie in `0..below`; otherwise the call fails naming
    /// `what` and the kernel's scope.
    Check { value: Temp, below: Dim, what: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    Sum,
    Max,
    Min,
}

impl Combine {
    pub fn name(self) -> &'static str {
        match self {
            Combine::Sum => "sum",
            Combine::Max => "max",
            Combine::Min => "min",
        }
    }

    /// The value over no iterations.
    pub fn identity(self) -> f64 {
        match self {
            Combine::Sum => 0.0,
            Combine::Max => f64::NEG_INFINITY,
            Combine::Min => f64::INFINITY,
        }
    }

    pub fn apply(self, acc: f64, x: f64) -> f64 {
        match self {
            Combine::Sum => acc + x,
            Combine::Max => acc.max(x),
            Combine::Min => acc.min(x),
        }
    }
}

/// A scalar operation of a `Let`; operands are temps of the same kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Const(f64),
    /// An element of a buffer; out of its bounds, `default` (or an error without one).
    Load {
        buf: BufId,
        index: Vec<Index>,
        default: Option<f64>,
    },
    /// The integer value of an index expression (`arange`).
    Index(Index),
    Unary(Unary, Temp),
    Binary(Binary, Temp, Temp),
    /// `select c, a, b`: `a` where `c` is not 0.
    Select(Temp, Temp, Temp),
    /// The dtype conversion of `Cast` (integers truncate, `bool` is `!= 0`, floats round).
    Cast(DType, Temp),
    /// Draw `counter` of the counter-based stream `stream ^ seed` (the call's seed):
    /// uniform in [0, 1), or a standard normal from draws `2c` and `2c + 1`.
    Random {
        normal: bool,
        stream: u64,
        counter: Index,
    },
    /// 1 in a training call, 0 otherwise (dropout and noise are identities at inference).
    Training,
}

/// An integer index expression over loop variables, sizes and data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Index {
    Var(Var),
    Const(i64),
    /// A size (symbolic dims bound at launch).
    Dim(Dim),
    /// The value of a temp (data-dependent: token ids, gather indices).
    Temp(Temp),
    Add(Box<Index>, Box<Index>),
    Mul(Box<Index>, Dim),
    /// Floor division by a positive size.
    Div(Box<Index>, Dim),
    /// Remainder by a positive size.
    Rem(Box<Index>, Dim),
}

impl Index {
    pub fn zero() -> Index {
        Index::Const(0)
    }

    /// A size as an index: a constant when it is one, so the text form is canonical.
    pub fn size(d: Dim) -> Index {
        match d.as_constant() {
            Some(c) => Index::Const(c),
            None => Index::Dim(d),
        }
    }

    pub fn is_zero(&self) -> bool {
        matches!(self, Index::Const(0))
    }

    /// `self + other`, folding constants and zeros.
    pub fn plus(self, other: Index) -> Index {
        match (self, other) {
            (Index::Const(a), Index::Const(b)) => Index::Const(a.saturating_add(b)),
            (Index::Const(0), x) | (x, Index::Const(0)) => x,
            (Index::Dim(a), Index::Dim(b)) => Index::size(a.add(&b)),
            (Index::Dim(a), Index::Const(b)) | (Index::Const(b), Index::Dim(a)) => {
                Index::size(a.add(&Dim::constant(b)))
            }
            (a, b) => Index::Add(Box::new(a), Box::new(b)),
        }
    }

    /// `self * d`, folding constants, zeros and ones.
    pub fn times(self, d: &Dim) -> Index {
        match (self, d.as_constant()) {
            (_, Some(0)) | (Index::Const(0), _) => Index::Const(0),
            (x, Some(1)) => x,
            (Index::Const(a), Some(b)) => Index::Const(a.saturating_mul(b)),
            (Index::Const(a), None) => Index::size(d.mul(&Dim::constant(a))),
            (Index::Dim(a), _) => Index::size(a.mul(d)),
            (x, _) => Index::Mul(Box::new(x), d.clone()),
        }
    }

    /// `self / d` (floor), folding ones and what is known to be a multiple of `d`.
    pub fn over(self, d: &Dim) -> Index {
        match (self, d.as_constant()) {
            (x, Some(1)) => x,
            (Index::Const(a), Some(b)) if b > 0 => Index::Const(a.div_euclid(b)),
            (Index::Mul(x, m), _) if m == *d => *x,
            (x, _) => Index::Div(Box::new(x), d.clone()),
        }
    }

    /// `self % d`, folding ones.
    pub fn modulo(self, d: &Dim) -> Index {
        match (self, d.as_constant()) {
            (_, Some(1)) => Index::Const(0),
            (Index::Const(a), Some(b)) if b > 0 => Index::Const(a.rem_euclid(b)),
            (x, _) => Index::Rem(Box::new(x), d.clone()),
        }
    }

    /// Every loop variable the expression reads.
    pub fn vars(&self, out: &mut Vec<Var>) {
        match self {
            Index::Var(v) => out.push(*v),
            Index::Const(_) | Index::Dim(_) | Index::Temp(_) => {}
            Index::Add(a, b) => {
                a.vars(out);
                b.vars(out);
            }
            Index::Mul(x, _) | Index::Div(x, _) | Index::Rem(x, _) => x.vars(out),
        }
    }

    /// Every temp the expression reads.
    pub fn temps(&self, out: &mut Vec<Temp>) {
        match self {
            Index::Temp(t) => out.push(*t),
            Index::Var(_) | Index::Const(_) | Index::Dim(_) => {}
            Index::Add(a, b) => {
                a.temps(out);
                b.temps(out);
            }
            Index::Mul(x, _) | Index::Div(x, _) | Index::Rem(x, _) => x.temps(out),
        }
    }
}

/// A library call: a kernel whose body is not a loop nest but one of these operations,
/// with reference semantics in `crate::library` (shared with the Graph IR interpreter).
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// `out[batch.., i, j] = epilogue(Σ_p a[batch.., i, p] · b[batch.., p, j])`.
    Gemm(Box<Gemm>),
    /// A library routine over whole, contiguous buffers: its operands in order, then its
    /// output.
    Routine { routine: Routine, args: Vec<BufId>, out: BufId },
}

/// A strided view of a buffer as `[batch.., rows, cols]`, strides in elements.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub buf: BufId,
    pub offset: Dim,
    pub batch_strides: Vec<Dim>,
    pub row_stride: Dim,
    pub col_stride: Dim,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Gemm {
    /// The product's dtype (each product is rounded to it at native precision).
    pub dtype: DType,
    pub batch: Vec<Dim>,
    pub m: Dim,
    pub n: Dim,
    pub k: Dim,
    pub a: View,
    pub b: View,
    /// The loop variables of the output index (`batch.., i, j`; none for a dim of 1, whose
    /// index is 0), the temp that holds the product there, and what is done with it: at
    /// least one `Store`. Without fusion the epilogue is the store of `acc` into the output
    /// at `[batch.., i, j]`.
    pub vars: Vec<Option<Var>>,
    pub acc: Temp,
    pub epilogue: Vec<Stmt>,
}

/// The operations a loop nest does not express well: data-dependent writes, sorts, scans,
/// recurrences, and attention (which must not materialise its `T × T` scores).
#[derive(Clone, Debug, PartialEq)]
pub enum Routine {
    /// q `[B, H, T, hd]`, k and v `[B, Hkv, S, ·]`, optional bias (broadcast to
    /// `[B, H, T, S]`) → `[B, H, T, dv]`, one query row at a time.
    Attention {
        causal: bool,
        window: Option<i64>,
        softcap: Option<f64>,
        scale: f64,
        has_bias: bool,
    },
    /// The gradient of `attention` with respect to q, k, v (`wrt` 0, 1, 2) or its scores
    /// (3, `[B, H, T, S]`), from q, k, v, the bias and the output's gradient; recomputed
    /// one query row at a time.
    AttentionGrad {
        wrt: usize,
        causal: bool,
        window: Option<i64>,
        softcap: Option<f64>,
        scale: f64,
        has_bias: bool,
    },
    /// x, index, src → x with src added at index along `axis`.
    ScatterAdd {
        axis: usize,
    },
    TopK {
        k: i64,
        indices: bool,
    },
    Cumsum {
        axis: usize,
    },
    Lstm {
        reverse: bool,
    },
    MoeRoute {
        k: i64,
        capacity: Dim,
    },
    MoeDispatch,
    MoeCombine,
    MoeBalance {
        k: i64,
    },
    MoeZLoss,
    MoeLoad {
        k: i64,
    },
    MoeOverflow {
        k: i64,
    },
}

impl Routine {
    pub fn name(&self) -> &'static str {
        match self {
            Routine::Attention { .. } => "attention",
            Routine::AttentionGrad { .. } => "attention_grad",
            Routine::ScatterAdd { .. } => "scatter_add",
            Routine::TopK { indices: false, .. } => "topk_values",
            Routine::TopK { indices: true, .. } => "topk_indices",
            Routine::Cumsum { .. } => "cumsum",
            Routine::Lstm { .. } => "lstm",
            Routine::MoeRoute { .. } => "moe_route",
            Routine::MoeDispatch => "moe_dispatch",
            Routine::MoeCombine => "moe_combine",
            Routine::MoeBalance { .. } => "moe_balance",
            Routine::MoeZLoss => "moe_zloss",
            Routine::MoeLoad { .. } => "moe_load",
            Routine::MoeOverflow { .. } => "moe_overflow",
        }
    }
}
