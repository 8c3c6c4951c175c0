//! One part of a fusion group → one loop nest. Each member node is evaluated where its
//! consumers read it (its value at an index expression, memoised), so producers are
//! inlined and never stored; a reduction becomes a `Reduce` over fresh loop variables.
//! Then every scalar operation is placed in the outermost loop where all it reads is
//! bound: the anchor's dims that some reduction is computed at are the parallel loops,
//! the others an inner loop after the reductions. A part that cannot be arranged so (a
//! reduction read at an index that varies inside its consumer's loop) is an error saying
//! why, which is how fusion learns where to stop.

use super::index;
use crate::graph::op::{Binary, Op, Reduce as ReduceKind, Unary};
use crate::graph::types::DType;
use crate::graph::Graph;
use crate::kernel::{BufId, Combine, Dim, Expr, Index, LoopNest, Stmt, Temp, Var};
use crate::library;
use std::collections::{BTreeSet, HashMap, HashSet};

/// What is placed: a scalar, a reduction, a bounds check or a store.
#[derive(Clone, Debug)]
enum Item {
    Let(DType, Expr),
    Reduce { dtype: DType, combine: Combine, over: Vec<Var>, value: Temp },
    Check { value: Temp, below: Dim, what: String },
    Store { buf: BufId, index: Vec<Index>, value: Temp },
}

#[derive(Clone, Debug)]
enum VarKind {
    /// Axis `axis` of the anchor (the part's largest output).
    Anchor,
    /// A reduction's own loop; `owner` once the reduction exists.
    Reduce { owner: Option<Temp> },
}

/// The builder of one loop nest.
pub struct Nest<'a> {
    g: &'a Graph,
    /// The nodes computed here (inlined); any other node is read from its buffer.
    members: &'a HashSet<usize>,
    /// Buffers of the leaves and of materialised nodes.
    buffers: &'a HashMap<usize, BufId>,
    items: Vec<Item>,
    memo: HashMap<(usize, Vec<Index>), Temp>,
    consts: HashMap<(u64, DTypeKey), Temp>,
    vars: Vec<(Dim, VarKind)>,
    /// Inside a `concat`/`pad` branch, which may be read outside its argument's bounds:
    /// loads there give 0 instead of failing, and checks and reductions are refused.
    guarded: u32,
    anchor_vars: Vec<Option<Var>>,
    /// A GEMM's product in its epilogue: a value that varies with every anchor dim.
    acc: Option<Temp>,
    /// The node each item computes part of (the innermost node being computed).
    origin: Vec<usize>,
    computing: Vec<usize>,
}

type DTypeKey = &'static str;

/// What a reduction's body computes for its loop variables.
type BodyAt<'n, 'a> = dyn FnMut(&mut Nest<'a>, &[Var]) -> Result<Temp, Refusal> + 'n;

/// Why a part does not lower to one loop nest.
pub type Refusal = String;

impl<'a> Nest<'a> {
    pub fn new(g: &'a Graph, members: &'a HashSet<usize>, buffers: &'a HashMap<usize, BufId>) -> Nest<'a> {
        Nest {
            g,
            members,
            buffers,
            items: Vec::new(),
            memo: HashMap::new(),
            consts: HashMap::new(),
            vars: Vec::new(),
            guarded: 0,
            anchor_vars: Vec::new(),
            acc: None,
            origin: Vec::new(),
            computing: Vec::new(),
        }
    }

    /// Binds node `n`'s value at `idx` to a temp the caller provides (a GEMM's product in
    /// its epilogue): temp 0, which `finish` leaves undefined.
    pub fn bind_acc(&mut self, n: usize, idx: Vec<Index>) -> Temp {
        assert!(self.items.is_empty(), "the accumulator is the first temp");
        let t = self.let_(self.g.nodes[n].ty.dtype, Expr::Const(f64::NAN));
        self.memo.insert((n, idx), t);
        self.acc = Some(t);
        t
    }

    /// The buffer and index of `t` when all this nest computes is that one load (a GEMM
    /// operand, its movement folded into the index).
    pub fn sole_load(&self, t: Temp) -> Option<(BufId, Vec<Index>)> {
        match self.items.as_slice() {
            [Item::Let(_, Expr::Load { buf, index, default: None })] if t.0 == 0 => Some((*buf, index.clone())),
            _ => None,
        }
    }

    pub fn has_reductions(&self) -> bool {
        self.items.iter().any(|i| matches!(i, Item::Reduce { .. }))
    }

    /// The loop variable of each anchor axis (`None` for a dim of 1).
    pub fn anchor_vars(&self) -> Vec<Option<Var>> {
        self.anchor_vars.clone()
    }

    /// The anchor's loop variables (a dim of 1 gets none: its index is 0).
    pub fn anchor(&mut self, shape: &[Dim]) -> Vec<Index> {
        let mut idx = Vec::with_capacity(shape.len());
        for d in shape {
            if d.as_constant() == Some(1) {
                self.anchor_vars.push(None);
                idx.push(Index::zero());
            } else {
                let v = self.var(d.clone(), VarKind::Anchor);
                self.anchor_vars.push(Some(v));
                idx.push(Index::Var(v));
            }
        }
        idx
    }

    fn var(&mut self, extent: Dim, kind: VarKind) -> Var {
        self.vars.push((extent, kind));
        Var(self.vars.len() as u32 - 1)
    }

    fn push(&mut self, item: Item) -> Temp {
        self.items.push(item);
        self.origin.push(self.computing.last().copied().unwrap_or(usize::MAX));
        Temp(self.items.len() as u32 - 1)
    }

    fn let_(&mut self, dtype: DType, e: Expr) -> Temp {
        self.push(Item::Let(dtype, e))
    }

    fn constant(&mut self, x: f64, dtype: DType) -> Temp {
        let key = (x.to_bits(), dtype.name());
        if let Some(t) = self.consts.get(&key) {
            return *t;
        }
        let t = self.let_(dtype, Expr::Const(x));
        self.consts.insert(key, t);
        t
    }

    fn index_value(&mut self, i: Index) -> Temp {
        self.let_(DType::I64, Expr::Index(i))
    }

    fn bin(&mut self, dtype: DType, b: Binary, x: Temp, y: Temp) -> Temp {
        self.let_(dtype, Expr::Binary(b, x, y))
    }

    /// Stores node `n`'s value at `idx` into `buf`.
    pub fn store(&mut self, n: usize, buf: BufId, idx: Vec<Index>, at: Vec<Index>) -> Result<(), Refusal> {
        let value = self.value(n, at)?;
        self.push(Item::Store { buf, index: idx, value });
        Ok(())
    }

    /// The value of node `n` at `idx`.
    pub fn value(&mut self, n: usize, idx: Vec<Index>) -> Result<Temp, Refusal> {
        if let Some(t) = self.memo.get(&(n, idx.clone())) {
            return Ok(*t);
        }
        self.computing.push(n);
        let t = self.compute(n, &idx);
        self.computing.pop();
        let t = t?;
        self.memo.insert((n, idx), t);
        Ok(t)
    }

    fn load(&mut self, n: usize, idx: Vec<Index>) -> Result<Temp, Refusal> {
        let node = &self.g.nodes[n];
        let buf = *self.buffers.get(&n).ok_or_else(|| format!("%{n} ({}) has no buffer", node.op.name()))?;
        let default = (self.guarded > 0).then_some(0.0);
        Ok(self.let_(node.ty.dtype, Expr::Load { buf, index: idx, default }))
    }

    fn compute(&mut self, n: usize, idx: &[Index]) -> Result<Temp, Refusal> {
        let g = self.g;
        let node = &g.nodes[n];
        let dt = node.ty.dtype;
        match &node.op {
            Op::Scalar { value } => return Ok(self.constant(*value, dt)),
            Op::Arange { .. } => return Ok(self.let_(dt, Expr::Index(idx[0].clone()))),
            Op::Input { .. } | Op::Param { .. } => return self.load(n, idx.to_vec()),
            Op::Buffer { name } => return Err(format!("buffer `{name}` is elaborated into its expression")),
            _ => {}
        }
        if !self.members.contains(&n) {
            return self.load(n, idx.to_vec());
        }
        let arg = |k: usize| node.args[k].0 as usize;
        let out = &node.ty.shape;
        let bidx = |me: &Self, k: usize| index::broadcast(&me.g.nodes[arg(k)].ty.shape, out, idx);
        Ok(match &node.op {
            Op::Unary(u) => {
                let x = self.value(arg(0), bidx(self, 0))?;
                self.let_(dt, Expr::Unary(*u, x))
            }
            Op::Binary(b) => {
                let x = self.value(arg(0), bidx(self, 0))?;
                let y = self.value(arg(1), bidx(self, 1))?;
                self.bin(dt, *b, x, y)
            }
            Op::Where => {
                let c = self.value(arg(0), bidx(self, 0))?;
                let x = self.value(arg(1), bidx(self, 1))?;
                let y = self.value(arg(2), bidx(self, 2))?;
                self.let_(dt, Expr::Select(c, x, y))
            }
            Op::Softcap { cap } => {
                let x = self.value(arg(0), idx.to_vec())?;
                let c = self.constant(*cap, DType::F64);
                let d = self.bin(DType::F64, Binary::Div, x, c);
                let th = self.let_(DType::F64, Expr::Unary(Unary::Tanh, d));
                self.bin(dt, Binary::Mul, c, th)
            }
            Op::Cast { to } => {
                let x = self.value(arg(0), idx.to_vec())?;
                self.let_(dt, Expr::Cast(*to, x))
            }
            Op::Dropout { p, key } => {
                let x = self.value(arg(0), idx.to_vec())?;
                if *p == 0.0 {
                    return Ok(x);
                }
                let counter = index::linear(idx, out);
                let u =
                    self.let_(DType::F64, Expr::Random { normal: false, stream: library::dropout_mix(*key), counter });
                let pc = self.constant(*p, DType::F64);
                let drop = self.bin(DType::Bool, Binary::Lt, u, pc);
                let keep = self.constant(1.0 - p, DType::F64);
                let scaled = self.bin(DType::F64, Binary::Div, x, keep);
                let zero = self.constant(0.0, DType::F64);
                let z = self.let_(DType::F64, Expr::Select(drop, zero, scaled));
                let training = self.let_(DType::Bool, Expr::Training);
                self.let_(dt, Expr::Select(training, z, x))
            }
            Op::Noise { std, key } => {
                let x = self.value(arg(0), idx.to_vec())?;
                if *std <= 0.0 {
                    return Ok(x);
                }
                let counter = index::linear(idx, out);
                let r = self.let_(DType::F64, Expr::Random { normal: true, stream: library::noise_mix(*key), counter });
                let s = self.constant(*std, DType::F64);
                let m = self.bin(DType::F64, Binary::Mul, s, r);
                let a = self.bin(DType::F64, Binary::Add, x, m);
                let training = self.let_(DType::Bool, Expr::Training);
                self.let_(dt, Expr::Select(training, a, x))
            }
            Op::Reduce { kind, axes, keepdim } => self.reduction(n, *kind, axes, *keepdim, idx)?,
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let input = &g.nodes[arg(0)].ty.shape;
                let lse = self.log_sum_exp(arg(0), input, idx, *axis)?;
                let x = self.value(arg(0), idx.to_vec())?;
                if matches!(node.op, Op::LogSoftmax { .. }) {
                    self.bin(dt, Binary::Sub, x, lse)
                } else {
                    let l = self.bin(DType::F64, Binary::Sub, x, lse);
                    self.let_(dt, Expr::Unary(Unary::Exp, l))
                }
            }
            Op::Reshape { .. } => {
                let input = g.nodes[arg(0)].ty.shape.clone();
                self.value(arg(0), index::reshape(&input, out, idx))?
            }
            Op::Transpose { perm } => self.value(arg(0), index::transpose(perm, idx))?,
            Op::Slice { axis, start, .. } => {
                let mut at = idx.to_vec();
                at[*axis] = at[*axis].clone().plus(Index::size(start.clone()));
                self.value(arg(0), at)?
            }
            Op::Broadcast { .. } => self.value(arg(0), bidx(self, 0))?,
            Op::Concat { axis } => self.concat(n, *axis, idx)?,
            Op::Pad { axis, before, value, .. } => {
                let len = g.nodes[arg(0)].ty.shape[*axis].clone();
                let at = idx[*axis].clone();
                let mut inner = idx.to_vec();
                inner[*axis] = at.clone().plus(Index::Const(-before));
                self.guarded += 1;
                let x = self.value(arg(0), inner);
                self.guarded -= 1;
                let x = x?;
                let lo = self.index_value(Index::Const(*before));
                let hi = self.index_value(Index::size(len.add(&Dim::constant(*before))));
                let i = self.index_value(at);
                let above = self.bin(DType::Bool, Binary::Ge, i, lo);
                let below = self.bin(DType::Bool, Binary::Lt, i, hi);
                let inside = self.bin(DType::Bool, Binary::And, above, below);
                let pad = self.constant(*value, dt);
                self.let_(dt, Expr::Select(inside, x, pad))
            }
            Op::Embedding => {
                let (table, ids) = (arg(0), arg(1));
                let rows = g.nodes[table].ty.shape[0].clone();
                let id = self.value(ids, idx[..idx.len() - 1].to_vec())?;
                self.check(id, rows, "embedding")?;
                let col = idx[idx.len() - 1].clone();
                self.value(table, vec![Index::Temp(id), col])?
            }
            Op::Gather { axis } => {
                let x_shape = g.nodes[arg(0)].ty.shape.clone();
                let at = self.value(arg(1), idx.to_vec())?;
                self.check(at, x_shape[*axis].clone(), "gather")?;
                let mut pos = idx.to_vec();
                pos[*axis] = Index::Temp(at);
                for (k, d) in x_shape.iter().enumerate() {
                    if k != *axis && d.as_constant() == Some(1) {
                        pos[k] = Index::zero();
                    }
                }
                self.value(arg(0), pos)?
            }
            Op::OneHot { n: classes } => {
                let id = self.value(arg(0), idx[..idx.len() - 1].to_vec())?;
                self.check(id, Dim::constant(*classes), "one_hot")?;
                let at = self.index_value(idx[idx.len() - 1].clone());
                let hit = self.bin(DType::Bool, Binary::Eq, id, at);
                let (one, zero) = (self.constant(1.0, dt), self.constant(0.0, dt));
                self.let_(dt, Expr::Select(hit, one, zero))
            }
            Op::CrossEntropy { ignore } => self.cross_entropy(n, *ignore)?,
            Op::MatMul
            | Op::Attention { .. }
            | Op::AttentionGrad { .. }
            | Op::ScatterAdd { .. }
            | Op::TopK { .. }
            | Op::Cumsum { .. }
            | Op::Lstm { .. }
            | Op::MoeRoute { .. }
            | Op::MoeDispatch
            | Op::MoeCombine
            | Op::MoeBalance { .. }
            | Op::MoeZLoss
            | Op::MoeLoad { .. }
            | Op::MoeOverflow { .. } => {
                return Err(format!("`{}` is a library call, not a loop nest", node.op.name()));
            }
            Op::Scalar { .. } | Op::Arange { .. } | Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } => {
                unreachable!("leaves are handled above")
            }
        })
    }

    fn check(&mut self, value: Temp, below: Dim, what: &str) -> Result<(), Refusal> {
        if self.guarded > 0 {
            return Err(format!("a data-dependent index (`{what}`) under `concat` or `pad`"));
        }
        self.push(Item::Check { value, below, what: what.to_string() });
        Ok(())
    }

    /// A reduction of `over` fresh loop variables (extents `dims`) of what `body` gives
    /// for them.
    fn reduce(
        &mut self,
        dtype: DType,
        combine: Combine,
        dims: &[Dim],
        body: &mut BodyAt<'_, 'a>,
    ) -> Result<Temp, Refusal> {
        if self.guarded > 0 {
            return Err("a reduction under `concat` or `pad`".into());
        }
        let over: Vec<Var> = dims.iter().map(|d| self.var(d.clone(), VarKind::Reduce { owner: None })).collect();
        let value = body(self, &over)?;
        let t = self.push(Item::Reduce { dtype, combine, over: over.clone(), value });
        for v in &over {
            self.vars[v.0 as usize].1 = VarKind::Reduce { owner: Some(t) };
        }
        Ok(t)
    }

    /// The input index of a reduction over `axes` for output index `idx`, with the
    /// reduced axes at `vars`.
    fn reduced_index(rank: usize, axes: &[usize], keepdim: bool, idx: &[Index], vars: &[Var]) -> Vec<Index> {
        let mut out = Vec::with_capacity(rank);
        let (mut kept, mut reduced) = (0, 0);
        for k in 0..rank {
            if axes.contains(&k) {
                out.push(Index::Var(vars[reduced]));
                reduced += 1;
                if keepdim {
                    kept += 1;
                }
            } else {
                out.push(idx[kept].clone());
                kept += 1;
            }
        }
        out
    }

    fn reduction(
        &mut self,
        n: usize,
        kind: ReduceKind,
        axes: &[usize],
        keepdim: bool,
        idx: &[Index],
    ) -> Result<Temp, Refusal> {
        let g = self.g;
        let node = &g.nodes[n];
        let x = node.args[0].0 as usize;
        let input = g.nodes[x].ty.shape.clone();
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        let dims: Vec<Dim> = sorted.iter().map(|&a| input[a].clone()).collect();
        let count = dims.iter().fold(Dim::constant(1), |n, d| n.mul(d));
        let dt = node.ty.dtype;
        let at = |vars: &[Var]| Self::reduced_index(input.len(), &sorted, keepdim, idx, vars);
        let mut read = |me: &mut Self, vars: &[Var]| me.value(x, at(vars));
        Ok(match kind {
            ReduceKind::Sum | ReduceKind::Max | ReduceKind::Min => {
                let combine = match kind {
                    ReduceKind::Sum => Combine::Sum,
                    ReduceKind::Max => Combine::Max,
                    _ => Combine::Min,
                };
                self.reduce(dt, combine, &dims, &mut read)?
            }
            ReduceKind::Mean => {
                let r = self.reduce(DType::F64, Combine::Sum, &dims, &mut read)?;
                let c = self.let_(DType::F64, Expr::Index(Index::size(count)));
                self.bin(dt, Binary::Div, r, c)
            }
            ReduceKind::Var => {
                let s = self.reduce(DType::F64, Combine::Sum, &dims, &mut read)?;
                let c = self.let_(DType::F64, Expr::Index(Index::size(count)));
                let m = self.bin(DType::F64, Binary::Div, s, c);
                let s2 = self.reduce(DType::F64, Combine::Sum, &dims, &mut |me: &mut Self, vars: &[Var]| {
                    let v = me.value(x, at(vars))?;
                    let d = me.bin(DType::F64, Binary::Sub, v, m);
                    Ok(me.bin(DType::F64, Binary::Mul, d, d))
                })?;
                self.bin(dt, Binary::Div, s2, c)
            }
            ReduceKind::LogSumExp => {
                self.lse_over(dt, &dims, &mut |me: &mut Self, vars: &[Var]| me.value(x, at(vars)))?
            }
        })
    }

    /// `m + ln Σ exp(x - m)` with `m = max x` (and `m` itself when it is `-inf`), as the
    /// interpreter's `log_sum_exp`: two passes over fresh variables each.
    fn lse_over(&mut self, dtype: DType, dims: &[Dim], x: &mut BodyAt<'_, 'a>) -> Result<Temp, Refusal> {
        let m = self.reduce(DType::F64, Combine::Max, dims, x)?;
        let s = self.reduce(DType::F64, Combine::Sum, dims, &mut |me: &mut Self, vars: &[Var]| {
            let v = x(me, vars)?;
            let d = me.bin(DType::F64, Binary::Sub, v, m);
            Ok(me.let_(DType::F64, Expr::Unary(Unary::Exp, d)))
        })?;
        let l = self.let_(DType::F64, Expr::Unary(Unary::Log, s));
        let lse = self.bin(DType::F64, Binary::Add, m, l);
        let ninf = self.constant(f64::NEG_INFINITY, DType::F64);
        let empty = self.bin(DType::Bool, Binary::Eq, m, ninf);
        Ok(self.let_(dtype, Expr::Select(empty, m, lse)))
    }

    /// The log-sum-exp of `x` (shape `input`) along `axis`, at the position `idx` names
    /// (its entry at `axis` ignored); memoised per position.
    fn log_sum_exp(&mut self, x: usize, input: &[Dim], idx: &[Index], axis: usize) -> Result<Temp, Refusal> {
        let mut key = idx.to_vec();
        key[axis] = Index::Const(-1);
        // Keyed apart from `x`'s own values by the impossible index -1.
        let memo_key = (usize::MAX - x, key);
        if let Some(t) = self.memo.get(&memo_key) {
            return Ok(*t);
        }
        let at = |vars: &[Var]| {
            let mut a = idx.to_vec();
            a[axis] = Index::Var(vars[0]);
            a
        };
        let t = self
            .lse_over(DType::F64, &[input[axis].clone()], &mut |me: &mut Self, vars: &[Var]| me.value(x, at(vars)))?;
        self.memo.insert(memo_key, t);
        Ok(t)
    }

    fn concat(&mut self, n: usize, axis: usize, idx: &[Index]) -> Result<Temp, Refusal> {
        let g = self.g;
        let node = &g.nodes[n];
        let at = idx[axis].clone();
        let mut offset = Dim::constant(0);
        let mut branches = Vec::new();
        for a in &node.args {
            let len = g.nodes[a.0 as usize].ty.shape[axis].clone();
            let mut inner = idx.to_vec();
            inner[axis] = at.clone().plus(Index::size(offset.neg()));
            self.guarded += 1;
            let v = self.value(a.0 as usize, inner);
            self.guarded -= 1;
            offset = offset.add(&len);
            branches.push((v?, offset.clone()));
        }
        let i = self.index_value(at);
        let (mut out, _) = branches.pop().ok_or("`concat` of nothing")?;
        while let Some((v, end)) = branches.pop() {
            let e = self.index_value(Index::size(end));
            let before = self.bin(DType::Bool, Binary::Lt, i, e);
            out = self.let_(node.ty.dtype, Expr::Select(before, v, out));
        }
        Ok(out)
    }

    /// Mean cross-entropy of logits `[rows.., V]` against targets `[rows..]`, skipping the
    /// `ignore` targets, as one scalar: a sum over the rows of `lse(row) - row[target]`
    /// divided by the count of counted rows (0 when none is).
    fn cross_entropy(&mut self, n: usize, ignore: i64) -> Result<Temp, Refusal> {
        let g = self.g;
        let node = &g.nodes[n];
        let (logits, targets) = (node.args[0].0 as usize, node.args[1].0 as usize);
        let shape = g.nodes[logits].ty.shape.clone();
        let (rows, v) = (shape[..shape.len() - 1].to_vec(), shape[shape.len() - 1].clone());
        let dt = node.ty.dtype;
        let ig = self.constant(ignore as f64, g.nodes[targets].ty.dtype);
        let zero = self.constant(0.0, DType::F64);
        let row_index = |vars: &[Var]| vars.iter().map(|v| Index::Var(*v)).collect::<Vec<_>>();
        let total = self.reduce(DType::F64, Combine::Sum, &rows, &mut |me: &mut Self, vars: &[Var]| {
            let r = row_index(vars);
            let t = me.value(targets, r.clone())?;
            let valid = me.bin(DType::Bool, Binary::Ne, t, ig);
            let tz = me.constant(0.0, me.g.nodes[targets].ty.dtype);
            let safe = me.let_(me.g.nodes[targets].ty.dtype, Expr::Select(valid, t, tz));
            me.check(safe, v.clone(), "cross_entropy target")?;
            let lse = me.lse_over(DType::F64, std::slice::from_ref(&v), &mut |me2: &mut Self, inner: &[Var]| {
                let mut at = r.clone();
                at.push(Index::Var(inner[0]));
                me2.value(logits, at)
            })?;
            let mut at = r.clone();
            at.push(Index::Temp(safe));
            let xt = me.value(logits, at)?;
            let diff = me.bin(DType::F64, Binary::Sub, lse, xt);
            Ok(me.let_(DType::F64, Expr::Select(valid, diff, zero)))
        })?;
        let count = self.reduce(DType::F64, Combine::Sum, &rows, &mut |me: &mut Self, vars: &[Var]| {
            let t = me.value(targets, row_index(vars))?;
            let valid = me.bin(DType::Bool, Binary::Ne, t, ig);
            Ok(me.let_(DType::F64, Expr::Cast(DType::F64, valid)))
        })?;
        let none = self.bin(DType::Bool, Binary::Eq, count, zero);
        let mean = self.bin(DType::F64, Binary::Div, total, count);
        Ok(self.let_(dt, Expr::Select(none, zero, mean)))
    }

    /// The loop nest: parallel loops over the anchor dims some reduction is computed at,
    /// every item placed in the outermost loop that binds what it reads.
    pub fn finish(self) -> Result<LoopNest, Refusal> {
        let n_items = self.items.len();
        // Loop variables each item reads, directly or through its operands (a reduction
        // does not count its own loops).
        let mut reads: Vec<BTreeSet<u32>> = Vec::with_capacity(n_items);
        for item in &self.items {
            let (mut vars, mut temps) = (Vec::new(), Vec::new());
            item_reads(item, &mut vars, &mut temps);
            let mut set: BTreeSet<u32> = vars.iter().map(|v| v.0).collect();
            for t in temps {
                set.extend(reads[t.0 as usize].iter().copied());
            }
            if let Item::Reduce { over, .. } = item {
                for v in over {
                    set.remove(&v.0);
                }
            }
            if Some(Temp(reads.len() as u32)) == self.acc {
                set.extend(self.anchor_vars.iter().flatten().map(|v| v.0));
            }
            reads.push(set);
        }
        let is_anchor = |v: u32| matches!(self.vars[v as usize].1, VarKind::Anchor);
        let owner = |v: u32| match self.vars[v as usize].1 {
            VarKind::Reduce { owner: Some(t) } => Some(t.0 as usize),
            _ => None,
        };
        // The anchor dims some reduction is computed at run in parallel, the rest inside.
        let mut parallel: BTreeSet<u32> = BTreeSet::new();
        for (i, item) in self.items.iter().enumerate() {
            if matches!(item, Item::Reduce { .. }) {
                parallel.extend(reads[i].iter().copied().filter(|v| is_anchor(*v)));
            }
        }
        // Scopes: 0 the parallel body, 1 the inner loop, 2 + k the body of reduction k.
        // A reduction nests in the innermost reduction whose loops it reads (the one made
        // first: an enclosing reduction is made after everything in its body).
        let reduce_scope: HashMap<usize, usize> = (0..n_items)
            .filter(|&i| matches!(self.items[i], Item::Reduce { .. }))
            .enumerate()
            .map(|(k, i)| (i, 2 + k))
            .collect();
        let mut parent = vec![0usize; 2 + reduce_scope.len()];
        for (&i, &scope) in &reduce_scope {
            if reads[i].iter().any(|v| is_anchor(*v) && !parallel.contains(v)) {
                return Err("a reduction is read at an index that varies inside its consumer's loop".into());
            }
            match reads[i].iter().filter_map(|v| owner(*v)).min() {
                // Work is never multiplied: a reduction inside another one must be part of
                // the same op (the row statistics of a loss), and one in the parallel body
                // must be needed at every parallel point, not recomputed across some.
                Some(enclosing) if self.origin[enclosing] != self.origin[i] => {
                    return Err("it would recompute a reduction inside another reduction's loop".into())
                }
                Some(enclosing) => parent[scope] = reduce_scope[&enclosing],
                None => {
                    if let Some(v) = parallel.iter().find(|v| !reads[i].contains(v)) {
                        return Err(format!(
                            "it would recompute a reduction for every value of a parallel loop it does not depend on (i{v})"
                        ));
                    }
                }
            }
        }
        let var_scope = |v: u32| -> usize {
            match owner(v) {
                Some(r) => reduce_scope[&r],
                None if parallel.contains(&v) => 0,
                None => 1,
            }
        };
        let ancestors = |mut s: usize| {
            let mut out = vec![s];
            while s != 0 {
                s = if s == 1 { 0 } else { parent[s] };
                out.push(s);
            }
            out
        };
        let mut scope_items: Vec<Vec<usize>> = vec![Vec::new(); 2 + reduce_scope.len()];
        for (i, read) in reads.iter().enumerate() {
            let mut scope = 0;
            for &v in read {
                let s = var_scope(v);
                if ancestors(s).contains(&scope) {
                    scope = s;
                } else if !ancestors(scope).contains(&s) {
                    return Err("a value would need loops that do not nest".into());
                }
            }
            // Each element is stored once: a store must read every loop it is inside of.
            if let Item::Store { .. } = self.items[i] {
                if scope >= 2 {
                    return Err("an output would be stored inside a reduction's loop".into());
                }
                let enclosing = parallel.iter().copied().chain(if scope == 1 {
                    self.anchor_vars.iter().flatten().map(|v| v.0).filter(|v| !parallel.contains(v)).collect()
                } else {
                    Vec::new()
                });
                if let Some(v) = enclosing.into_iter().find(|v| !read.contains(v)) {
                    return Err(format!(
                        "an output would be stored once per value of a loop it does not depend on (i{v})"
                    ));
                }
            }
            scope_items[scope].push(i);
        }
        fn emit(
            me: &Nest,
            scope: usize,
            scope_items: &[Vec<usize>],
            reduce_scope: &HashMap<usize, usize>,
        ) -> Vec<Stmt> {
            let mut out = Vec::new();
            for &i in &scope_items[scope] {
                let t = Temp(i as u32);
                out.push(match &me.items[i] {
                    Item::Let(dtype, value) => Stmt::Let { temp: t, dtype: *dtype, value: value.clone() },
                    Item::Reduce { dtype, combine, over, value } => Stmt::Reduce {
                        temp: t,
                        dtype: *dtype,
                        combine: *combine,
                        over: over.iter().map(|v| (*v, me.vars[v.0 as usize].0.clone())).collect(),
                        body: emit(me, reduce_scope[&i], scope_items, reduce_scope),
                        value: *value,
                    },
                    Item::Check { value, below, what } => {
                        Stmt::Check { value: *value, below: below.clone(), what: what.clone() }
                    }
                    Item::Store { buf, index, value } => Stmt::Store { buf: *buf, index: index.clone(), value: *value },
                });
            }
            out
        }
        let loops = |inside: bool| -> Vec<(Var, Dim)> {
            self.anchor_vars
                .iter()
                .flatten()
                .filter(|v| parallel.contains(&v.0) != inside)
                .map(|v| (*v, self.vars[v.0 as usize].0.clone()))
                .collect()
        };
        let mut body = emit(&self, 0, &scope_items, &reduce_scope);
        let inner = emit(&self, 1, &scope_items, &reduce_scope);
        let inner_vars = loops(true);
        if !inner.is_empty() {
            if inner_vars.is_empty() {
                body.extend(inner);
            } else {
                body.push(Stmt::For { over: inner_vars, body: inner });
            }
        }
        Ok(LoopNest { parallel: loops(false), body })
    }
}

fn item_reads(item: &Item, vars: &mut Vec<Var>, temps: &mut Vec<Temp>) {
    let index = |idx: &[Index], vars: &mut Vec<Var>, temps: &mut Vec<Temp>| {
        for i in idx {
            i.vars(vars);
            i.temps(temps);
        }
    };
    match item {
        Item::Let(_, e) => match e {
            Expr::Const(_) | Expr::Training => {}
            Expr::Load { index: idx, .. } => index(idx, vars, temps),
            Expr::Index(i) => index(std::slice::from_ref(i), vars, temps),
            Expr::Random { counter, .. } => index(std::slice::from_ref(counter), vars, temps),
            Expr::Unary(_, x) | Expr::Cast(_, x) => temps.push(*x),
            Expr::Binary(_, x, y) => temps.extend([*x, *y]),
            Expr::Select(c, x, y) => temps.extend([*c, *x, *y]),
        },
        Item::Reduce { value, over, .. } => {
            temps.push(*value);
            vars.extend(over.iter().copied());
        }
        Item::Check { value, .. } => temps.push(*value),
        Item::Store { index: idx, value, .. } => {
            index(idx, vars, temps);
            temps.push(*value);
        }
    }
}
