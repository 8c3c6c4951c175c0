//! The reference interpreter: Graph IR + inputs + parameters → every value, in `f64`
//! (the oracle) or with each result rounded to its dtype (`f32`, and `bf16`/`f16` through
//! the `half` crate) to mimic a real backend. Each op's reference semantics is one arm
//! of the exhaustive match in `eval`; every backend is tested against this file.

pub mod tensor;

use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Op, Reduce, Unary};
use crate::graph::types::DType;
use crate::graph::{Graph, ValueId};
use std::collections::HashMap;
use tensor::{around, broadcast_shape, broadcast_to, matmul, transpose, zip, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Everything in `f64`: the oracle.
    F64,
    /// Every float result rounded to its node's dtype.
    Native,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub precision: Precision,
    /// Dropout and router noise are active only in training.
    pub training: bool,
    /// Seeds dropout masks and router noise.
    pub seed: u64,
    /// Stop at the first op whose float result holds a NaN or an infinity although its
    /// arguments hold none (`--detect-anomaly`): a `RunError` naming it.
    pub check_finite: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { precision: Precision::F64, training: false, seed: 0, check_finite: false }
    }
}

/// What went wrong running a graph: a missing or ill-shaped input, an index out of range.
#[derive(Clone, Debug, PartialEq)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `graph`, returning the value of every node (index = `ValueId`).
pub fn run(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
    options: &Options,
) -> Result<Vec<Tensor>, RunError> {
    execute(graph, &leaves_by_name(graph, inputs, params), options, None).map(|(values, _)| values)
}

/// Runs `graph` freeing each value after its last use, as a runtime would: only the
/// values in `keep` (and the leaves) are left in the result, the others are empty. Also
/// returns the measured peak of live activation bytes (each value at its dtype's size).
pub fn run_freeing(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
    options: &Options,
    keep: &[ValueId],
) -> Result<(Vec<Tensor>, u64), RunError> {
    execute(graph, &leaves_by_name(graph, inputs, params), options, Some(keep))
}

/// Like `run_freeing`, with each leaf (`input` and `param` node) already bound to its
/// tensor by node index: a backend that keeps its buffers in slots resolves names once,
/// when it compiles, not at every call. `None` for a leaf is a missing input or parameter.
pub fn run_bound(
    graph: &Graph,
    leaves: &[Option<&Tensor>],
    options: &Options,
    keep: &[ValueId],
) -> Result<(Vec<Tensor>, u64), RunError> {
    execute(graph, leaves, options, Some(keep))
}

/// The tensor of every leaf, looked up by name.
fn leaves_by_name<'a>(
    graph: &Graph,
    inputs: &'a HashMap<String, Tensor>,
    params: &'a HashMap<String, Tensor>,
) -> Vec<Option<&'a Tensor>> {
    graph
        .nodes
        .iter()
        .map(|n| match &n.op {
            Op::Input { name } => inputs.get(name),
            Op::Param { name } => params.get(name),
            _ => None,
        })
        .collect()
}

fn execute(
    graph: &Graph,
    leaves: &[Option<&Tensor>],
    options: &Options,
    keep: Option<&[ValueId]>,
) -> Result<(Vec<Tensor>, u64), RunError> {
    let last = keep.map(|k| crate::memory::last_uses(graph, k));
    let (mut live, mut peak) = (0u64, 0u64);
    // Activations only: not the leaves (the caller's buffers) nor the kept values (the
    // gradient buffers), as `memory::peak_bytes` counts.
    let size = |v: &Tensor, i: usize| {
        let n = &graph.nodes[i];
        if crate::memory::is_activation(&n.op) && last.as_ref().is_none_or(|l| l[i] != usize::MAX) {
            (v.data.len() as i64 * n.ty.dtype.size()) as u64
        } else {
            0
        }
    };
    if leaves.len() != graph.nodes.len() {
        return Err(RunError(format!("{} leaves bound for {} nodes", leaves.len(), graph.nodes.len())));
    }
    let symbols = bind_symbols(graph, leaves)?;
    let dim = |d: &Dim| -> Result<usize, RunError> {
        let v = graph
            .eval_dim(d, &|s: &str| symbols.get(s).copied())
            .ok_or_else(|| RunError(format!("dim {d} is not bound by the inputs")))?;
        usize::try_from(v).map_err(|_| RunError(format!("dim {d} is negative ({v})")))
    };
    let mut values: Vec<Tensor> = Vec::with_capacity(graph.nodes.len());
    for (node, leaf) in graph.nodes.iter().zip(leaves) {
        let args: Vec<&Tensor> = node.args.iter().map(|a| &values[a.0 as usize]).collect();
        // The result's size, known before the op runs: one too large for memory is an
        // error here, not a failed allocation inside the op.
        let want: Vec<usize> = node.ty.shape.iter().map(&dim).collect::<Result<_, _>>()?;
        if want.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none_or(|n| n > MAX_ELEMENTS) {
            return Err(RunError(format!(
                "{} would make {want:?}, too large for the interpreter (in {})",
                node.op.name(),
                node.scope
            )));
        }
        let mut v = eval(&node.op, &args, node.ty.dtype, *leaf, &dim, options)?;
        if v.shape != want {
            return Err(RunError(format!(
                "{} made shape {:?}, its type says {:?} (in {})",
                node.op.name(),
                v.shape,
                want,
                node.scope
            )));
        }
        if options.precision == Precision::Native {
            round_to(&mut v, node.ty.dtype);
        }
        if options.check_finite && !node.op.is_leaf() && v.data.iter().any(|x| !x.is_finite()) {
            // Masks put infinities into values on purpose; an op is only to blame when
            // what it read was finite.
            if args.iter().all(|a| a.data.iter().all(|x| x.is_finite())) {
                return Err(non_finite(graph, values.len(), &v));
            }
        }
        live += size(&v, values.len());
        peak = peak.max(live);
        values.push(v);
        // Free what this node read for the last time (and its own value if unread).
        if let Some(last) = &last {
            let i = values.len() - 1;
            for a in node.args.iter().map(|a| a.0 as usize).chain([i]) {
                if last[a] == i && !values[a].data.is_empty() {
                    live -= size(&values[a], a);
                    values[a] = Tensor::new(vec![0], Vec::new());
                }
            }
        }
    }
    Ok((values, peak))
}

/// The anomaly report: which op, where, and what it made.
fn non_finite(graph: &Graph, i: usize, v: &Tensor) -> RunError {
    let node = &graph.nodes[i];
    let nan = v.data.iter().filter(|x| x.is_nan()).count();
    let inf = v.data.iter().filter(|x| x.is_infinite()).count();
    let scope = if node.scope.is_empty() { "the model's top level".to_string() } else { format!("`{}`", node.scope) };
    RunError(format!(
        "the first non-finite value: `{}` in {scope} (%{i}: {}) made {nan} NaN and {inf} infinite of {} values from finite arguments",
        node.op.name(),
        node.ty,
        v.data.len()
    ))
}

/// The most elements one value may have (2^32: 32 GiB of f64), far beyond what the
/// reference interpreter runs in reasonable time.
const MAX_ELEMENTS: usize = 1 << 32;

/// A count attribute as a `usize` within `1..=limit`, or what is wrong: shape rules check
/// counts against constant dims, and this against dims bound at run time.
fn count_within(what: &str, name: &str, value: i64, limit: usize) -> Result<usize, RunError> {
    match usize::try_from(value) {
        Ok(v) if (1..=limit).contains(&v) => Ok(v),
        _ => Err(RunError(format!("`{what}` needs 1 <= {name} <= {limit}, found {name} = {value}"))),
    }
}

/// Binds the symbols of the inputs' declared types (`B`, `T`) from the actual shapes.
fn bind_symbols(graph: &Graph, leaves: &[Option<&Tensor>]) -> Result<HashMap<String, i64>, RunError> {
    let shapes: Vec<Option<&[usize]>> = leaves.iter().map(|l| l.map(|t| t.shape.as_slice())).collect();
    bind_shapes(graph, &shapes)
}

/// The symbols (`B`, `T`, ...) that the inputs' shapes bind, by leaf node index.
fn bind_shapes(graph: &Graph, shapes: &[Option<&[usize]>]) -> Result<HashMap<String, i64>, RunError> {
    let mut symbols: HashMap<String, i64> = HashMap::new();
    for (node, shape) in graph.nodes.iter().zip(shapes) {
        let Op::Input { name } = &node.op else { continue };
        let shape = shape.ok_or_else(|| RunError(format!("missing input `{name}`")))?;
        if shape.len() != node.ty.rank() {
            return Err(RunError(format!("input `{name}` has shape {shape:?}, expected {}", node.ty.shape_text())));
        }
        for (d, &actual) in node.ty.shape.iter().zip(shape) {
            let syms: Vec<&str> = d.symbols().collect();
            // A dim that is exactly one symbol binds it; others are checked after the run.
            if let [s] = syms.as_slice() {
                if *d != Dim::symbol(s) {
                    continue;
                }
                match symbols.get(*s) {
                    Some(&v) if v != actual as i64 => {
                        return Err(RunError(format!("`{s}` is {v} elsewhere but {actual} in input `{name}`")))
                    }
                    _ => {
                        symbols.insert(s.to_string(), actual as i64);
                    }
                }
            }
        }
    }
    Ok(symbols)
}

/// The interpreter's own memory for one run of `graph` with inputs of these shapes (by
/// leaf node index), before anything is allocated: the most bytes of non-leaf values
/// alive at once (plus, while an op runs, a scratch copy of each argument),
/// freeing each after its last use and never the `keep` values, at 8 bytes an element (it
/// holds every value as `f64`). Saturates instead of overflowing.
pub fn planned_peak(graph: &Graph, shapes: &[Option<&[usize]>], keep: &[ValueId]) -> Result<u64, RunError> {
    let symbols = bind_shapes(graph, shapes)?;
    let bytes: Vec<u64> = graph
        .nodes
        .iter()
        .map(|n| {
            if n.op.is_leaf() {
                return 0;
            }
            let numel = graph.eval_dim(&n.ty.numel(), &|s: &str| symbols.get(s).copied()).unwrap_or(0);
            u64::try_from(numel).unwrap_or(0).saturating_mul(8)
        })
        .collect();
    let frees = crate::memory::frees_after(&crate::memory::last_uses(graph, keep));
    let (mut live, mut peak) = (0u64, 0u64);
    for (i, node) in graph.nodes.iter().enumerate() {
        live = live.saturating_add(bytes[i]);
        // While an op runs, its loops may hold rearranged copies of its arguments (a
        // broadcast, a transposed operand) besides the result.
        let scratch = node.args.iter().fold(0u64, |n, a| n.saturating_add(bytes[a.0 as usize]));
        peak = peak.max(live.saturating_add(scratch));
        for &v in &frees[i] {
            live = live.saturating_sub(bytes[v]);
        }
    }
    Ok(peak)
}

/// Rounds a result to what its dtype can hold.
pub fn round_to(t: &mut Tensor, dtype: DType) {
    let f: fn(f64) -> f64 = match dtype {
        DType::F32 => |x| x as f32 as f64,
        DType::BF16 => |x| half::bf16::from_f64(x).to_f64(),
        DType::F16 => |x| half::f16::from_f64(x).to_f64(),
        DType::F64 | DType::I32 | DType::I64 | DType::Bool => return,
    };
    t.data.iter_mut().for_each(|x| *x = f(*x));
}

/// SplitMix64: a tiny, well-mixed generator; each dropout mask and noise draw gets its own,
/// seeded by (seed, key), so one seed fixes them all and the backward pass replays them.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(f64::MIN_POSITIVE);
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }
}

fn map(x: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor::new(x.shape.clone(), x.data.iter().map(|&v| f(v)).collect())
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Python's floor division and modulo, as compile-time arithmetic does.
fn floor_div(a: f64, b: f64) -> f64 {
    (a / b).floor()
}

fn log_sum_exp(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.map(|x| (x - m).exp()).sum::<f64>().ln()
}

fn reduce(x: &Tensor, kind: Reduce, axes: &[usize], keepdim: bool) -> Tensor {
    // Move the reduced axes last, then fold contiguous runs.
    let kept: Vec<usize> = (0..x.rank()).filter(|a| !axes.contains(a)).collect();
    let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
    let moved = transpose(x, &perm);
    let len: usize = axes.iter().map(|&a| x.shape[a]).product();
    // From the kept dims, not numel / len: reducing an empty axis still gives one value
    // per group (a sum of nothing is 0).
    let groups: usize = kept.iter().map(|&a| x.shape[a]).product();
    let mut data = Vec::with_capacity(groups);
    for g in 0..groups {
        let run = &moved.data[g * len..(g + 1) * len];
        let n = len as f64;
        data.push(match kind {
            Reduce::Sum => run.iter().sum(),
            Reduce::Mean => run.iter().sum::<f64>() / n,
            Reduce::Max => run.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Reduce::Min => run.iter().copied().fold(f64::INFINITY, f64::min),
            // The population variance (divide by n), as normalisations use it.
            Reduce::Var => {
                let m = run.iter().sum::<f64>() / n;
                run.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n
            }
            Reduce::LogSumExp => log_sum_exp(run.iter().copied()),
        });
    }
    let shape: Vec<usize> = (0..x.rank())
        .filter_map(|a| match (axes.contains(&a), keepdim) {
            (false, _) => Some(x.shape[a]),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    Tensor::new(shape, data)
}

fn softmax(x: &Tensor, axis: usize, log: bool) -> Tensor {
    let (outer, len, inner) = around(&x.shape, axis);
    let mut out = x.clone();
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * len * inner + k * inner + i;
            let lse = log_sum_exp((0..len).map(|k| x.data[at(k)]));
            for k in 0..len {
                let l = x.data[at(k)] - lse;
                out.data[at(k)] = if log { l } else { l.exp() };
            }
        }
    }
    out
}

/// Multi-index of flat position `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d].max(1);
        i /= shape[d].max(1);
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (i, s)| acc * s + i)
}

/// Whether a position lies inside `shape` (an index tensor's other axes may be longer
/// than `x`'s when their dims are only bound at run time).
fn fits(pos: &[usize], shape: &[usize], what: &str) -> Result<(), RunError> {
    if pos.iter().zip(shape).any(|(p, s)| p >= s) {
        return Err(RunError(format!("`{what}` index position {pos:?} is outside {shape:?}")));
    }
    Ok(())
}

fn index(v: f64, len: usize, what: &str) -> Result<usize, RunError> {
    if v < 0.0 || v >= len as f64 || v.fract() != 0.0 {
        return Err(RunError(format!("{what} index {v} is out of range 0..{len}")));
    }
    Ok(v as usize)
}

/// The route of `moe_route`: combine weights `[N, E, C]` from logits `[N, E]`.
/// Softmax over all experts; each token's top `k` (ties to the lower index),
/// renormalised over the k; then slots are given in GShard order (every token's first
/// choice in token order, then every second choice, ...), and an assignment past an
/// expert's `C` slots is dropped (weight 0: the residual carries the token).
fn moe_route(logits: &Tensor, k: i64, capacity: usize) -> Result<Tensor, RunError> {
    let (n, e) = (logits.shape[0], logits.shape[1]);
    let k = count_within("moe_route", "k", k, e)?;
    let probs = softmax(logits, 1, false);
    let mut choices = vec![Vec::new(); n];
    for (t, c) in choices.iter_mut().enumerate() {
        let row = &probs.data[t * e..(t + 1) * e];
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let top = &order[..k];
        let total: f64 = top.iter().map(|&x| row[x]).sum();
        *c = top.iter().map(|&x| (x, row[x] / total)).collect::<Vec<_>>();
    }
    let mut fill = vec![0usize; e];
    let mut out = Tensor::zeros(vec![n, e, capacity]);
    for rank in 0..k {
        for (t, c) in choices.iter().enumerate() {
            let (x, w) = c[rank];
            if fill[x] < capacity {
                out.data[(t * e + x) * capacity + fill[x]] = w;
                fill[x] += 1;
            }
        }
    }
    Ok(out)
}

fn eval(
    op: &Op,
    args: &[&Tensor],
    dtype: DType,
    leaf: Option<&Tensor>,
    dim: &dyn Fn(&Dim) -> Result<usize, RunError>,
    options: &Options,
) -> Result<Tensor, RunError> {
    Ok(match op {
        Op::Input { name } => leaf.cloned().ok_or_else(|| RunError(format!("missing input `{name}`")))?,
        Op::Param { name } => leaf.cloned().ok_or_else(|| RunError(format!("missing parameter `{name}`")))?,
        Op::Buffer { name } => return Err(RunError(format!("buffer `{name}` is elaborated into its expression"))),
        Op::Scalar { value } => Tensor::scalar(*value),
        Op::Arange { n } => {
            let n = dim(n)?;
            Tensor::new(vec![n], (0..n).map(|i| i as f64).collect())
        }
        Op::Unary(u) => {
            let f: fn(f64) -> f64 = match u {
                Unary::Neg => |x| -x,
                Unary::Exp => f64::exp,
                Unary::Log => f64::ln,
                Unary::Sqrt => f64::sqrt,
                Unary::Rsqrt => |x| 1.0 / x.sqrt(),
                Unary::Tanh => f64::tanh,
                Unary::Erf => libm::erf,
                Unary::Sigmoid => sigmoid,
                Unary::Sin => f64::sin,
                Unary::Cos => f64::cos,
                Unary::Abs => f64::abs,
                Unary::Relu => |x| x.max(0.0),
                Unary::Gelu => gelu,
                Unary::GeluTanh => gelu_tanh,
                Unary::Silu => |x| x * sigmoid(x),
                Unary::Not => |x| if x == 0.0 { 1.0 } else { 0.0 },
            };
            map(args[0], f)
        }
        Op::Binary(b) => {
            let truth = |c: bool| if c { 1.0 } else { 0.0 };
            match b {
                Binary::Add => zip(args[0], args[1], |a, b| a + b),
                Binary::Sub => zip(args[0], args[1], |a, b| a - b),
                Binary::Mul => zip(args[0], args[1], |a, b| a * b),
                // Integer tensors divide like integers (floor), as compile-time `/` does.
                Binary::Div if matches!(dtype, DType::I32 | DType::I64) => zip(args[0], args[1], floor_div),
                Binary::Div => zip(args[0], args[1], |a, b| a / b),
                Binary::Rem => zip(args[0], args[1], |a, b| a - b * floor_div(a, b)),
                Binary::Pow => zip(args[0], args[1], f64::powf),
                Binary::Min => zip(args[0], args[1], f64::min),
                Binary::Max => zip(args[0], args[1], f64::max),
                Binary::Eq => zip(args[0], args[1], move |a, b| truth(a == b)),
                Binary::Ne => zip(args[0], args[1], move |a, b| truth(a != b)),
                Binary::Lt => zip(args[0], args[1], move |a, b| truth(a < b)),
                Binary::Le => zip(args[0], args[1], move |a, b| truth(a <= b)),
                Binary::Gt => zip(args[0], args[1], move |a, b| truth(a > b)),
                Binary::Ge => zip(args[0], args[1], move |a, b| truth(a >= b)),
                Binary::And => zip(args[0], args[1], move |a, b| truth(a != 0.0 && b != 0.0)),
                Binary::Or => zip(args[0], args[1], move |a, b| truth(a != 0.0 || b != 0.0)),
            }
        }
        Op::Where => {
            let shape = broadcast_shape(&args[0].shape, &broadcast_shape(&args[1].shape, &args[2].shape));
            let (c, a, b) =
                (broadcast_to(args[0], &shape), broadcast_to(args[1], &shape), broadcast_to(args[2], &shape));
            let data = (0..c.numel()).map(|i| if c.data[i] != 0.0 { a.data[i] } else { b.data[i] }).collect();
            Tensor::new(shape, data)
        }
        Op::Softcap { cap } => map(args[0], |x| cap * (x / cap).tanh()),
        Op::Cast { to } => match to {
            DType::I32 | DType::I64 => map(args[0], f64::trunc),
            DType::Bool => map(args[0], |x| if x != 0.0 { 1.0 } else { 0.0 }),
            DType::F64 | DType::F32 | DType::F16 | DType::BF16 => {
                let mut t = args[0].clone();
                round_to(&mut t, *to);
                t
            }
        },
        Op::Dropout { p, key } => {
            if !options.training || *p == 0.0 {
                args[0].clone()
            } else {
                // The mask depends only on (seed, key): the backward's dropout, which has
                // the same key, zeroes the same elements.
                let mut mask = SplitMix(options.seed ^ key.wrapping_mul(0xA076_1D64_78BD_642F));
                let keep = 1.0 - p;
                let mut t = args[0].clone();
                t.data.iter_mut().for_each(|x| *x = if mask.uniform() < *p { 0.0 } else { *x / keep });
                t
            }
        }
        Op::Noise { std, key } => {
            let mut t = args[0].clone();
            if options.training && *std > 0.0 {
                // Like dropout's mask, a function of (seed, key) only.
                let mut draw = SplitMix(options.seed ^ key.wrapping_mul(0xE703_7ED1_A0B4_28DB) ^ 0x006E_6F69_7365);
                t.data.iter_mut().for_each(|x| *x += std * draw.normal());
            }
            t
        }
        Op::Reduce { kind, axes, keepdim } => reduce(args[0], *kind, axes, *keepdim),
        Op::Softmax { axis } => softmax(args[0], *axis, false),
        Op::LogSoftmax { axis } => softmax(args[0], *axis, true),
        Op::MatMul => matmul(args[0], args[1]),
        Op::Attention { causal, window, softcap, scale, has_bias } => {
            // Head counts are checked by the shape rule when both are constants.
            let (h, hkv) = (args[0].shape[1], args[1].shape[1]);
            if hkv == 0 || h % hkv != 0 {
                return Err(RunError(format!("`attention` needs H % Hkv == 0, found H = {h}, Hkv = {hkv}")));
            }
            attention(args, *causal, *window, *softcap, *scale, *has_bias)
        }
        Op::Reshape { shape } => Tensor::new(shape.iter().map(dim).collect::<Result<_, _>>()?, args[0].data.clone()),
        Op::Transpose { perm } => transpose(args[0], perm),
        Op::Slice { axis, start, end } => {
            let (s, e) = (dim(start)?, dim(end)?);
            let x = args[0];
            let (outer, len, inner) = around(&x.shape, *axis);
            if s > e || e > len {
                return Err(RunError(format!("`slice` needs 0 <= start <= end <= {len}, found {s}..{e}")));
            }
            let mut data = Vec::with_capacity(outer * (e - s) * inner);
            for o in 0..outer {
                data.extend_from_slice(&x.data[o * len * inner + s * inner..o * len * inner + e * inner]);
            }
            let mut shape = x.shape.clone();
            shape[*axis] = e - s;
            Tensor::new(shape, data)
        }
        Op::Concat { axis } => {
            let (outer, _, inner) = around(&args[0].shape, *axis);
            let mut data = Vec::new();
            for o in 0..outer {
                for a in args {
                    let len = a.shape[*axis];
                    data.extend_from_slice(&a.data[o * len * inner..(o + 1) * len * inner]);
                }
            }
            let mut shape = args[0].shape.clone();
            shape[*axis] = args.iter().map(|a| a.shape[*axis]).sum();
            Tensor::new(shape, data)
        }
        Op::Broadcast { shape } => broadcast_to(args[0], &shape.iter().map(dim).collect::<Result<Vec<_>, _>>()?),
        Op::Pad { axis, before, after, value } => {
            let x = args[0];
            let (outer, len, inner) = around(&x.shape, *axis);
            let amount = |v: i64| usize::try_from(v).map_err(|_| RunError(format!("`pad` by {v}")));
            let (b, a) = (amount(*before)?, amount(*after)?);
            let mut data = Vec::with_capacity(outer * (len + b + a) * inner);
            for o in 0..outer {
                data.extend(std::iter::repeat_n(*value, b * inner));
                data.extend_from_slice(&x.data[o * len * inner..(o + 1) * len * inner]);
                data.extend(std::iter::repeat_n(*value, a * inner));
            }
            let mut shape = x.shape.clone();
            shape[*axis] = len + b + a;
            Tensor::new(shape, data)
        }
        Op::Embedding => {
            let (table, ids) = (args[0], args[1]);
            let (v, d) = (table.shape[0], table.shape[1]);
            let mut data = Vec::with_capacity(ids.numel() * d);
            for &id in &ids.data {
                let row = index(id, v, "embedding")?;
                data.extend_from_slice(&table.data[row * d..(row + 1) * d]);
            }
            let mut shape = ids.shape.clone();
            shape.push(d);
            Tensor::new(shape, data)
        }
        Op::Gather { axis } => {
            let (x, idx) = (args[0], args[1]);
            let mut data = Vec::with_capacity(idx.numel());
            for (i, &at) in idx.data.iter().enumerate() {
                let mut pos = unravel(i, &idx.shape);
                pos[*axis] = index(at, x.shape[*axis], "gather")?;
                let pos: Vec<usize> = pos.iter().zip(&x.shape).map(|(p, s)| if *s == 1 { 0 } else { *p }).collect();
                fits(&pos, &x.shape, "gather")?;
                data.push(x.data[ravel(&pos, &x.shape)]);
            }
            Tensor::new(idx.shape.clone(), data)
        }
        Op::ScatterAdd { axis } => {
            let (x, idx, src) = (args[0], args[1], args[2]);
            let mut out = x.clone();
            for (i, &at) in idx.data.iter().enumerate() {
                let mut pos = unravel(i, &idx.shape);
                pos[*axis] = index(at, x.shape[*axis], "scatter_add")?;
                fits(&pos, &x.shape, "scatter_add")?;
                out.data[ravel(&pos, &x.shape)] += src.data[i];
            }
            out
        }
        Op::TopK { k, indices } => {
            let x = args[0];
            let n = *x.shape.last().unwrap_or(&1);
            let k = count_within("topk", "k", *k, n)?;
            let mut data = Vec::with_capacity(x.numel() / n.max(1) * k);
            for row in x.data.chunks(n.max(1)) {
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                data.extend(order[..k].iter().map(|&i| if *indices { i as f64 } else { row[i] }));
            }
            let mut shape = x.shape.clone();
            if let Some(last) = shape.last_mut() {
                *last = k;
            }
            Tensor::new(shape, data)
        }
        Op::OneHot { n } => {
            let n = count_within("one_hot", "n", *n, usize::MAX)?;
            let mut data = vec![0.0; args[0].numel() * n];
            for (i, &id) in args[0].data.iter().enumerate() {
                data[i * n + index(id, n, "one_hot")?] = 1.0;
            }
            let mut shape = args[0].shape.clone();
            shape.push(n);
            Tensor::new(shape, data)
        }
        Op::Cumsum { axis } => {
            let (outer, len, inner) = around(&args[0].shape, *axis);
            let mut t = args[0].clone();
            for o in 0..outer {
                for i in 0..inner {
                    for k in 1..len {
                        let at = o * len * inner + k * inner + i;
                        t.data[at] += t.data[at - inner];
                    }
                }
            }
            t
        }
        Op::CrossEntropy { ignore } => {
            let (logits, targets) = (args[0], args[1]);
            let v = *logits.shape.last().unwrap_or(&1);
            if v == 0 {
                return Err(RunError("`cross_entropy` over no classes".into()));
            }
            let (mut total, mut count) = (0.0, 0usize);
            for (row, &t) in logits.data.chunks(v).zip(&targets.data) {
                if t == *ignore as f64 {
                    continue;
                }
                let t = index(t, v, "cross_entropy target")?;
                total += log_sum_exp(row.iter().copied()) - row[t];
                count += 1;
            }
            Tensor::scalar(if count == 0 { 0.0 } else { total / count as f64 })
        }
        Op::Lstm { reverse } => lstm(args, *reverse),
        Op::MoeRoute { k, capacity } => moe_route(args[0], *k, dim(capacity)?)?,
        Op::MoeDispatch => {
            let (route, x) = (args[0], args[1]);
            let (n, e, c, d) = (route.shape[0], route.shape[1], route.shape[2], x.shape[1]);
            let mut out = Tensor::zeros(vec![e, c, d]);
            for t in 0..n {
                for slot in 0..e * c {
                    if route.data[t * e * c + slot] != 0.0 {
                        out.data[slot * d..(slot + 1) * d].copy_from_slice(&x.data[t * d..(t + 1) * d]);
                    }
                }
            }
            out
        }
        Op::MoeCombine => {
            let (route, y) = (args[0], args[1]);
            let (n, e, c, d) = (route.shape[0], route.shape[1], route.shape[2], y.shape[2]);
            let mut out = Tensor::zeros(vec![n, d]);
            for t in 0..n {
                for slot in 0..e * c {
                    let w = route.data[t * e * c + slot];
                    if w != 0.0 {
                        for j in 0..d {
                            out.data[t * d + j] += w * y.data[slot * d + j];
                        }
                    }
                }
            }
            out
        }
        Op::MoeBalance { k } => {
            // E · Σ f_i P_i: f_i the share of the top-k choices that went to expert i
            // (before capacity), P_i the mean router probability of i.
            let logits = args[0];
            let (n, e) = (logits.shape[0], logits.shape[1]);
            let k = count_within("moe_balance", "k", *k, e)?;
            let probs = softmax(logits, 1, false);
            let mut f = vec![0.0; e];
            let mut p = vec![0.0; e];
            for t in 0..n {
                let row = &probs.data[t * e..(t + 1) * e];
                let mut order: Vec<usize> = (0..e).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                for &x in &order[..k] {
                    f[x] += 1.0 / (n as f64 * k as f64);
                }
                for x in 0..e {
                    p[x] += row[x] / n as f64;
                }
            }
            Tensor::scalar(e as f64 * f.iter().zip(&p).map(|(a, b)| a * b).sum::<f64>())
        }
        Op::MoeZLoss => {
            let logits = args[0];
            let e = logits.shape[1];
            if e == 0 {
                return Err(RunError("`moe_zloss` over no experts".into()));
            }
            let n = logits.shape[0].max(1);
            Tensor::scalar(
                logits.data.chunks(e).map(|row| log_sum_exp(row.iter().copied()).powi(2)).sum::<f64>() / n as f64,
            )
        }
        Op::MoeLoad { k } => {
            let route = args[0];
            let (n, e, c) = (route.shape[0], route.shape[1], route.shape[2]);
            let mut load = vec![0.0; e];
            for t in 0..n {
                for (x, l) in load.iter_mut().enumerate() {
                    let kept = (0..c).filter(|&s| route.data[(t * e + x) * c + s] != 0.0).count();
                    *l += kept as f64 / (n as f64 * *k as f64).max(1.0);
                }
            }
            Tensor::new(vec![e], load)
        }
        Op::MoeOverflow { k } => {
            let route = args[1];
            let n = route.shape[0];
            let kept = route.data.iter().filter(|&&w| w != 0.0).count();
            Tensor::scalar(1.0 - kept as f64 / (n as f64 * *k as f64).max(1.0))
        }
    })
}

/// `softmax(mask(q kᵀ · scale), softcapped, + bias) v`, with K/V heads shared by groups
/// of query heads (GQA). Causal and window masks align the last query with the last key
/// (so they also hold when keys include a cache). A row with every key masked gives 0.
fn attention(
    args: &[&Tensor],
    causal: bool,
    window: Option<i64>,
    softcap: Option<f64>,
    scale: f64,
    has_bias: bool,
) -> Tensor {
    let (q, k, v) = (args[0], args[1], args[2]);
    let (b, h, t, hd) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (hkv, s, dv) = (k.shape[1], k.shape[2], v.shape[3]);
    let group = h / hkv.max(1);
    let bias = has_bias.then(|| broadcast_to(args[3], &[b, h, t, s]));
    let mut out = Tensor::zeros(vec![b, h, t, dv]);
    let mut logits = vec![0.0; s];
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / group.max(1);
            for ti in 0..t {
                let qrow = &q.data[((bi * h + hi) * t + ti) * hd..][..hd];
                let last = ti + s - t.min(s);
                for (si, l) in logits.iter_mut().enumerate() {
                    let krow = &k.data[((bi * hkv + kh) * s + si) * hd..][..hd];
                    let mut x = qrow.iter().zip(krow).map(|(a, c)| a * c).sum::<f64>() * scale;
                    if let Some(cap) = softcap {
                        x = cap * (x / cap).tanh();
                    }
                    if let Some(bias) = &bias {
                        x += bias.data[((bi * h + hi) * t + ti) * s + si];
                    }
                    let masked = (causal && si > last) || window.is_some_and(|w| si as i64 <= last as i64 - w);
                    *l = if masked { f64::NEG_INFINITY } else { x };
                }
                let lse = log_sum_exp(logits.iter().copied());
                if lse == f64::NEG_INFINITY {
                    continue;
                }
                let orow = ((bi * h + hi) * t + ti) * dv;
                for (si, l) in logits.iter().enumerate() {
                    let w = (l - lse).exp();
                    if w == 0.0 {
                        continue;
                    }
                    let vrow = &v.data[((bi * hkv + kh) * s + si) * dv..][..dv];
                    for (o, vv) in out.data[orow..orow + dv].iter_mut().zip(vrow) {
                        *o += w * vv;
                    }
                }
            }
        }
    }
    out
}

/// One LSTM direction: gates `i, f, g, o` from `x w_ih + h w_hh + bias`, zero initial state.
fn lstm(args: &[&Tensor], reverse: bool) -> Tensor {
    let (x, w_ih, w_hh, bias) = (args[0], args[1], args[2], args[3]);
    let (b, t, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let hsz = w_hh.shape[0];
    let mut out = Tensor::zeros(vec![b, t, hsz]);
    for bi in 0..b {
        let (mut h, mut c) = (vec![0.0; hsz], vec![0.0; hsz]);
        let steps: Vec<usize> = if reverse { (0..t).rev().collect() } else { (0..t).collect() };
        for ti in steps {
            let xrow = &x.data[(bi * t + ti) * d..][..d];
            let mut gates = bias.data.clone();
            for (gi, g) in gates.iter_mut().enumerate() {
                *g += xrow.iter().enumerate().map(|(j, xv)| xv * w_ih.data[j * 4 * hsz + gi]).sum::<f64>();
                *g += h.iter().enumerate().map(|(j, hv)| hv * w_hh.data[j * 4 * hsz + gi]).sum::<f64>();
            }
            for j in 0..hsz {
                let (i, f, g, o) = (
                    sigmoid(gates[j]),
                    sigmoid(gates[hsz + j]),
                    gates[2 * hsz + j].tanh(),
                    sigmoid(gates[3 * hsz + j]),
                );
                c[j] = f * c[j] + i * g;
                h[j] = o * c[j].tanh();
            }
            out.data[(bi * t + ti) * hsz..][..hsz].copy_from_slice(&h);
        }
    }
    out
}
