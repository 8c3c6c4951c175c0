//! One call of a Kernel IR program: every symbolic size resolved to a number first (the
//! program's statements become `R*` trees of plain integers), then each kernel run with
//! loops over vectors of `f64`. Temporaries are allocated and freed where the memory plan
//! says; loads and stores are counted at their buffers' dtype sizes.

use super::{routines, Moved, Rounding};
use crate::kernel::memory_plan::Liveness;
use crate::kernel::{Binary, BufferKind, Call, Combine, DType, Dim, Expr, Index, KernelBody, KernelProgram, Stmt, Var};
use crate::library;
use modelc_runtime::executable::CallOptions;
use std::collections::HashMap;

/// An index with every size a number.
#[derive(Clone, Debug)]
enum RIndex {
    /// `coef · var + add`, the common case, without a tree to walk.
    Affine(usize, i64, i64),
    Var(usize),
    Const(i64),
    Temp(usize),
    Add(Box<RIndex>, Box<RIndex>),
    Mul(Box<RIndex>, i64),
    Div(Box<RIndex>, i64),
    Rem(Box<RIndex>, i64),
}

#[derive(Clone, Debug)]
enum RExpr {
    Const(f64),
    Load { buf: usize, index: Vec<RIndex>, default: Option<f64> },
    Index(RIndex),
    Unary(crate::kernel::Unary, usize),
    Binary(Binary, usize, usize),
    Select(usize, usize, usize),
    Cast(DType, usize),
    Random { normal: bool, stream: u64, counter: RIndex },
    Training,
}

#[derive(Clone, Debug)]
enum RStmt {
    Let { temp: usize, dtype: DType, value: RExpr },
    Reduce { temp: usize, dtype: DType, combine: Combine, over: Vec<(usize, usize)>, body: Vec<RStmt>, value: usize },
    For { over: Vec<(usize, usize)>, body: Vec<RStmt> },
    Store { buf: usize, index: Vec<RIndex>, value: usize },
    Check { value: usize, below: i64, what: String },
}

pub struct Run<'a> {
    p: &'a KernelProgram,
    live: &'a Liveness,
    symbols: &'a HashMap<String, i64>,
    rounding: Rounding,
    options: CallOptions,
    storage: Vec<Option<Vec<f64>>>,
    shapes: Vec<Vec<usize>>,
    strides: Vec<Vec<usize>>,
    live_bytes: u64,
    peak: u64,
    moved: Moved,
    /// Loads and stores of a GEMM's epilogue count as the GEMM's.
    counting_gemm: bool,
    /// Where the kernel being run is, for messages.
    at: String,
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl<'a> Run<'a> {
    pub fn new(
        p: &'a KernelProgram,
        live: &'a Liveness,
        symbols: &'a HashMap<String, i64>,
        rounding: Rounding,
        options: CallOptions,
    ) -> Result<Run<'a>, String> {
        let mut shapes = Vec::with_capacity(p.buffers.len());
        for b in &p.buffers {
            let s: Vec<usize> = b.shape.iter().map(|d| super::size(symbols, d)).collect::<Result<_, _>>()?;
            shapes.push(s);
        }
        let strides = shapes.iter().map(|s| strides(s)).collect();
        Ok(Run {
            p,
            live,
            symbols,
            rounding,
            options,
            storage: vec![None; p.buffers.len()],
            shapes,
            strides,
            live_bytes: 0,
            peak: 0,
            moved: Moved::default(),
            counting_gemm: false,
            at: String::new(),
        })
    }

    /// An input or persistent buffer's values for this call.
    pub fn bind(&mut self, b: usize, _shape: Vec<usize>, data: Vec<f64>) {
        self.storage[b] = Some(data);
    }

    pub fn into_parts(self) -> (Vec<Option<Vec<f64>>>, u64, Moved) {
        (self.storage, self.peak, self.moved)
    }

    fn size(&self, d: &Dim) -> Result<i64, String> {
        d.eval(&|s: &str| self.symbols.get(s).copied())
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| format!("dim {d} is not bound"))
    }

    fn bytes(&self, b: usize) -> u64 {
        self.shapes[b].iter().product::<usize>() as u64 * self.p.buffers[b].dtype.size() as u64
    }

    /// Runs every kernel in order, allocating temporaries when they come alive and
    /// freeing them after their last use.
    pub fn all(&mut self) -> Result<(), String> {
        let p = self.p;
        for (i, b) in p.buffers.iter().enumerate() {
            if b.kind != BufferKind::Temp && self.storage[i].is_none() {
                return Err(format!("buffer b{i} was not given"));
            }
            if b.kind != BufferKind::Temp {
                let want: usize = self.shapes[i].iter().product();
                let have = self.storage[i].as_ref().map_or(0, Vec::len);
                if have != want {
                    return Err(format!(
                        "buffer b{i} holds {have} values, its shape {:?} needs {want}",
                        self.shapes[i]
                    ));
                }
            }
        }
        for (k, kernel) in p.kernels.iter().enumerate() {
            for b in 0..p.buffers.len() {
                if self.live.ranges[b].is_some_and(|(s, _)| s == k) && self.storage[b].is_none() {
                    self.storage[b] = Some(vec![0.0; self.shapes[b].iter().product()]);
                    self.live_bytes += self.bytes(b);
                }
            }
            self.peak = self.peak.max(self.live_bytes);
            self.at = format!(
                "kernel {} ({})",
                kernel.name,
                if kernel.scope.is_empty() { "top level" } else { &kernel.scope }
            );
            match &kernel.body {
                KernelBody::Loops(nests) => {
                    for n in nests {
                        let body = self.resolve_stmts(&n.body)?;
                        let over: Vec<(usize, usize)> = n
                            .parallel
                            .iter()
                            .map(|(v, d)| Ok((v.0 as usize, usize::try_from(self.size(d)?).unwrap_or(0))))
                            .collect::<Result<_, String>>()?;
                        let mut env = Env::new(&body, &over);
                        self.nested(&over, 0, &body, &mut env)?;
                    }
                }
                KernelBody::Call(Call::Gemm(g)) => self.gemm(g)?,
                KernelBody::Call(Call::Routine { routine, args, out }) => {
                    let args: Vec<usize> = args.iter().map(|b| b.0 as usize).collect();
                    let out = out.0 as usize;
                    let ins: Vec<(&[f64], &[usize])> = args
                        .iter()
                        .map(|&a| (self.storage[a].as_deref().unwrap_or(&[]), self.shapes[a].as_slice()))
                        .collect();
                    let capacity = match routine {
                        crate::kernel::Routine::MoeRoute { capacity, .. } => Some(self.size(capacity)?),
                        _ => None,
                    };
                    let mut data = routines::run(routine, &ins, &self.shapes[out], capacity)
                        .map_err(|e| format!("{}: {e}", self.at))?;
                    let moved: u64 = args.iter().chain([&out]).map(|&b| self.bytes(b)).sum();
                    self.moved.routines += moved;
                    if self.rounding == Rounding::Native {
                        let dt = p.buffers[out].dtype;
                        data.iter_mut().for_each(|x| *x = library::round(*x, dt));
                    }
                    self.storage[out] = Some(data);
                }
            }
            for b in 0..p.buffers.len() {
                if self.live.ranges[b].is_some_and(|(_, e)| e == k) && self.storage[b].is_some() {
                    self.storage[b] = None;
                    self.live_bytes -= self.bytes(b);
                }
            }
        }
        Ok(())
    }

    fn nested(&mut self, over: &[(usize, usize)], depth: usize, body: &[RStmt], env: &mut Env) -> Result<(), String> {
        if depth == over.len() {
            return self.stmts(body, env);
        }
        let (v, n) = over[depth];
        for i in 0..n {
            env.vars[v] = i as i64;
            self.nested(over, depth + 1, body, env)?;
        }
        Ok(())
    }

    fn resolve_index(&self, i: &Index) -> Result<RIndex, String> {
        Ok(simplify(match i {
            Index::Var(v) => RIndex::Var(v.0 as usize),
            Index::Const(c) => RIndex::Const(*c),
            Index::Dim(d) => RIndex::Const(self.size(d)?),
            Index::Temp(t) => RIndex::Temp(t.0 as usize),
            Index::Add(a, b) => RIndex::Add(Box::new(self.resolve_index(a)?), Box::new(self.resolve_index(b)?)),
            Index::Mul(x, d) => RIndex::Mul(Box::new(self.resolve_index(x)?), self.size(d)?),
            Index::Div(x, d) => RIndex::Div(Box::new(self.resolve_index(x)?), self.size(d)?.max(1)),
            Index::Rem(x, d) => RIndex::Rem(Box::new(self.resolve_index(x)?), self.size(d)?.max(1)),
        }))
    }

    fn resolve_indices(&self, idx: &[Index]) -> Result<Vec<RIndex>, String> {
        idx.iter().map(|i| self.resolve_index(i)).collect()
    }

    fn resolve_loops(&self, over: &[(Var, Dim)]) -> Result<Vec<(usize, usize)>, String> {
        over.iter().map(|(v, d)| Ok((v.0 as usize, usize::try_from(self.size(d)?).unwrap_or(0)))).collect()
    }

    fn resolve_stmts(&self, body: &[Stmt]) -> Result<Vec<RStmt>, String> {
        body.iter()
            .map(|s| {
                Ok(match s {
                    Stmt::Let { temp, dtype, value } => {
                        RStmt::Let { temp: temp.0 as usize, dtype: *dtype, value: self.resolve_expr(value)? }
                    }
                    Stmt::Reduce { temp, dtype, combine, over, body, value } => RStmt::Reduce {
                        temp: temp.0 as usize,
                        dtype: *dtype,
                        combine: *combine,
                        over: self.resolve_loops(over)?,
                        body: self.resolve_stmts(body)?,
                        value: value.0 as usize,
                    },
                    Stmt::For { over, body } => {
                        RStmt::For { over: self.resolve_loops(over)?, body: self.resolve_stmts(body)? }
                    }
                    Stmt::Store { buf, index, value } => RStmt::Store {
                        buf: buf.0 as usize,
                        index: self.resolve_indices(index)?,
                        value: value.0 as usize,
                    },
                    Stmt::Check { value, below, what } => {
                        RStmt::Check { value: value.0 as usize, below: self.size(below)?, what: what.clone() }
                    }
                })
            })
            .collect()
    }

    fn resolve_expr(&self, e: &Expr) -> Result<RExpr, String> {
        Ok(match e {
            Expr::Const(x) => RExpr::Const(*x),
            Expr::Load { buf, index, default } => {
                RExpr::Load { buf: buf.0 as usize, index: self.resolve_indices(index)?, default: *default }
            }
            Expr::Index(i) => RExpr::Index(self.resolve_index(i)?),
            Expr::Unary(u, x) => RExpr::Unary(*u, x.0 as usize),
            Expr::Binary(b, x, y) => RExpr::Binary(*b, x.0 as usize, y.0 as usize),
            Expr::Select(c, x, y) => RExpr::Select(c.0 as usize, x.0 as usize, y.0 as usize),
            Expr::Cast(to, x) => RExpr::Cast(*to, x.0 as usize),
            Expr::Random { normal, stream, counter } => {
                RExpr::Random { normal: *normal, stream: *stream, counter: self.resolve_index(counter)? }
            }
            Expr::Training => RExpr::Training,
        })
    }

    fn count(&mut self, dtype: DType) {
        let n = dtype.size() as u64;
        if self.counting_gemm {
            self.moved.gemms += n;
        } else {
            self.moved.loops += n;
        }
    }

    fn round(&self, x: f64, dtype: DType) -> f64 {
        match self.rounding {
            Rounding::Native => library::round(x, dtype),
            Rounding::F64 => x,
        }
    }

    /// The element `index` names in `buf` (one index per dim: `verify` checked), or
    /// `None` outside it.
    fn offset(&self, buf: usize, index: &[RIndex], env: &Env) -> Result<Option<usize>, String> {
        let (shape, strides) = (&self.shapes[buf], &self.strides[buf]);
        let mut at = 0usize;
        for ((i, &n), &s) in index.iter().zip(shape).zip(strides) {
            let v = env.index(i);
            if v < 0 || v as usize >= n {
                return Ok(None);
            }
            at += v as usize * s;
        }
        Ok(Some(at))
    }

    fn stmts(&mut self, body: &[RStmt], env: &mut Env) -> Result<(), String> {
        for s in body {
            match s {
                RStmt::Let { temp, dtype, value } => {
                    let x = self.expr(value, *dtype, env)?;
                    env.temps[*temp] = self.round(x, *dtype);
                }
                RStmt::Reduce { temp, dtype, combine, over, body, value } => {
                    let mut acc = combine.identity();
                    self.reduce(over, 0, body, *value, *combine, &mut acc, env)?;
                    env.temps[*temp] = self.round(acc, *dtype);
                }
                RStmt::For { over, body } => self.nested(over, 0, body, env)?,
                RStmt::Store { buf, index, value } => {
                    let at = self.offset(*buf, index, env)?.ok_or_else(|| {
                        format!(
                            "{}: a store to b{buf} at {:?} is outside {:?}",
                            self.at,
                            self.indices(index, env),
                            self.shapes[*buf]
                        )
                    })?;
                    let dt = self.p.buffers[*buf].dtype;
                    let x = self.round(env.temps[*value], dt);
                    self.count(dt);
                    if let Some(data) = self.storage[*buf].as_mut() {
                        data[at] = x;
                    } else {
                        return Err(format!("{}: b{buf} is stored to while it is not alive", self.at));
                    }
                }
                RStmt::Check { value, below, what } => {
                    let v = env.temps[*value];
                    if !(v >= 0.0 && v < *below as f64 && v.fract() == 0.0) {
                        return Err(format!("{} index {v} is out of range 0..{below} (in {})", what, self.at));
                    }
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn reduce(
        &mut self,
        over: &[(usize, usize)],
        depth: usize,
        body: &[RStmt],
        value: usize,
        combine: Combine,
        acc: &mut f64,
        env: &mut Env,
    ) -> Result<(), String> {
        if depth == over.len() {
            self.stmts(body, env)?;
            *acc = combine.apply(*acc, env.temps[value]);
            return Ok(());
        }
        let (v, n) = over[depth];
        for i in 0..n {
            env.vars[v] = i as i64;
            self.reduce(over, depth + 1, body, value, combine, acc, env)?;
        }
        Ok(())
    }

    fn indices(&self, index: &[RIndex], env: &Env) -> Vec<i64> {
        index.iter().map(|i| env.index(i)).collect()
    }

    fn expr(&mut self, e: &RExpr, dtype: DType, env: &Env) -> Result<f64, String> {
        let t = |i: usize| env.temps[i];
        Ok(match e {
            RExpr::Const(x) => *x,
            RExpr::Load { buf, index, default } => match self.offset(*buf, index, env)? {
                Some(at) => {
                    self.count(self.p.buffers[*buf].dtype);
                    let data = self.storage[*buf]
                        .as_ref()
                        .ok_or_else(|| format!("{}: b{buf} is read while it is not alive", self.at))?;
                    data[at]
                }
                None => default.ok_or_else(|| {
                    format!(
                        "{}: a load of b{buf} at {:?} is outside {:?}",
                        self.at,
                        self.indices(index, env),
                        self.shapes[*buf]
                    )
                })?,
            },
            RExpr::Index(i) => env.index(i) as f64,
            RExpr::Unary(u, x) => library::unary(*u, t(*x)),
            RExpr::Binary(b, x, y) => library::binary(*b, t(*x), t(*y), matches!(dtype, DType::I32 | DType::I64)),
            RExpr::Select(c, x, y) => {
                if t(*c) != 0.0 {
                    t(*x)
                } else {
                    t(*y)
                }
            }
            RExpr::Cast(to, x) => library::cast(t(*x), *to),
            RExpr::Random { normal, stream, counter } => {
                let c = env.index(counter) as u64;
                let s = self.options.seed ^ stream;
                if *normal {
                    library::normal(s, c)
                } else {
                    library::uniform(s, c)
                }
            }
            RExpr::Training => {
                if self.options.training {
                    1.0
                } else {
                    0.0
                }
            }
        })
    }

    fn gemm(&mut self, g: &crate::kernel::Gemm) -> Result<(), String> {
        let batch: Vec<usize> = g.batch.iter().map(|d| self.size(d).map(|v| v as usize)).collect::<Result<_, _>>()?;
        let (m, n, k) = (self.size(&g.m)? as usize, self.size(&g.n)? as usize, self.size(&g.k)? as usize);
        let view = |v: &crate::kernel::View| -> Result<(usize, i64, Vec<i64>, i64, i64), String> {
            Ok((
                v.buf.0 as usize,
                self.size(&v.offset)?,
                v.batch_strides.iter().map(|d| self.size(d)).collect::<Result<_, _>>()?,
                self.size(&v.row_stride)?,
                self.size(&v.col_stride)?,
            ))
        };
        let (ab, ao, abs, ar, ac) = view(&g.a)?;
        let (bb, bo, bbs, br, bc) = view(&g.b)?;
        let total: usize = batch.iter().product();
        // Every product first (in the order of `p`, one sequential sum each), then the
        // epilogue per element: it may read the operands' buffers too.
        let mut products = Vec::with_capacity(total * m * n);
        {
            let missing = |b: usize| format!("{}: operand b{b} is not alive", self.at);
            let ad = self.storage[ab].as_ref().ok_or_else(|| missing(ab))?;
            let bd = self.storage[bb].as_ref().ok_or_else(|| missing(bb))?;
            for flat in 0..total {
                let (mut a0, mut b0, mut rest) = (ao, bo, flat);
                for d in (0..batch.len()).rev() {
                    let i = (rest % batch[d].max(1)) as i64;
                    rest /= batch[d].max(1);
                    a0 += i * abs[d];
                    b0 += i * bbs[d];
                }
                // Row by row, `p` outer and `j` inner: each product is still one sum in
                // the order of `p`, and B's rows are read contiguously.
                let mut row = vec![0.0; n];
                for i in 0..m as i64 {
                    row.iter_mut().for_each(|x| *x = 0.0);
                    for p in 0..k as i64 {
                        let x = ad[(a0 + i * ar + p * ac) as usize];
                        let base = b0 + p * br;
                        for (j, acc) in row.iter_mut().enumerate() {
                            *acc += x * bd[(base + j as i64 * bc) as usize];
                        }
                    }
                    products.extend(row.iter().map(|&acc| self.round(acc, g.dtype)));
                }
            }
        }
        self.moved.gemms += self.bytes(ab) + self.bytes(bb);
        let epilogue = self.resolve_stmts(&g.epilogue)?;
        let mut env = Env::new(&epilogue, &[]);
        env.grow(g.acc.0 as usize, g.vars.iter().flatten().map(|v| v.0 as usize).max().unwrap_or(0));
        self.counting_gemm = true;
        let mut at = 0;
        let result = (|| -> Result<(), String> {
            for flat in 0..total {
                let mut rest = flat;
                for d in (0..batch.len()).rev() {
                    if let Some(v) = g.vars[d] {
                        env.vars[v.0 as usize] = (rest % batch[d].max(1)) as i64;
                    }
                    rest /= batch[d].max(1);
                }
                for i in 0..m {
                    for j in 0..n {
                        if let Some(v) = g.vars[batch.len()] {
                            env.vars[v.0 as usize] = i as i64;
                        }
                        if let Some(v) = g.vars[batch.len() + 1] {
                            env.vars[v.0 as usize] = j as i64;
                        }
                        env.temps[g.acc.0 as usize] = products[at];
                        at += 1;
                        self.stmts(&epilogue, &mut env)?;
                    }
                }
            }
            Ok(())
        })();
        self.counting_gemm = false;
        result
    }
}

/// Folds a resolved index into `coef · var + add` where it has that form.
fn simplify(i: RIndex) -> RIndex {
    match i {
        RIndex::Var(v) => RIndex::Affine(v, 1, 0),
        RIndex::Mul(x, k) => match *x {
            RIndex::Affine(v, c, a) => RIndex::Affine(v, c * k, a * k),
            RIndex::Const(c) => RIndex::Const(c * k),
            other => RIndex::Mul(Box::new(other), k),
        },
        RIndex::Add(a, b) => match (*a, *b) {
            (RIndex::Affine(v, c, x), RIndex::Const(y)) | (RIndex::Const(y), RIndex::Affine(v, c, x)) => {
                RIndex::Affine(v, c, x + y)
            }
            (RIndex::Const(x), RIndex::Const(y)) => RIndex::Const(x + y),
            (a, b) => RIndex::Add(Box::new(a), Box::new(b)),
        },
        other => other,
    }
}

/// Loop variables and temps of one loop nest.
struct Env {
    vars: Vec<i64>,
    temps: Vec<f64>,
}

impl Env {
    fn new(body: &[RStmt], over: &[(usize, usize)]) -> Env {
        fn walk(body: &[RStmt], vars: &mut usize, temps: &mut usize) {
            let loops = |over: &[(usize, usize)]| over.iter().map(|(v, _)| v + 1).max().unwrap_or(0);
            for s in body {
                match s {
                    RStmt::Let { temp, .. } => *temps = (*temps).max(temp + 1),
                    RStmt::Reduce { temp, over, body, .. } => {
                        *temps = (*temps).max(temp + 1);
                        *vars = (*vars).max(loops(over));
                        walk(body, vars, temps);
                    }
                    RStmt::For { over, body } => {
                        *vars = (*vars).max(loops(over));
                        walk(body, vars, temps);
                    }
                    RStmt::Store { value, .. } | RStmt::Check { value, .. } => *temps = (*temps).max(value + 1),
                }
            }
        }
        let (mut vars, mut temps) = (over.iter().map(|(v, _)| v + 1).max().unwrap_or(0), 0usize);
        walk(body, &mut vars, &mut temps);
        Env { vars: vec![0; vars], temps: vec![0.0; temps] }
    }

    fn grow(&mut self, temp: usize, var: usize) {
        if self.temps.len() <= temp {
            self.temps.resize(temp + 1, 0.0);
        }
        if self.vars.len() <= var {
            self.vars.resize(var + 1, 0);
        }
    }

    fn index(&self, i: &RIndex) -> i64 {
        match i {
            RIndex::Affine(v, c, a) => self.vars[*v] * c + a,
            RIndex::Var(v) => self.vars[*v],
            RIndex::Const(c) => *c,
            RIndex::Temp(t) => self.temps[*t] as i64,
            RIndex::Add(a, b) => self.index(a) + self.index(b),
            RIndex::Mul(x, d) => self.index(x) * d,
            RIndex::Div(x, d) => self.index(x).div_euclid(*d),
            RIndex::Rem(x, d) => self.index(x).rem_euclid(*d),
        }
    }
}
