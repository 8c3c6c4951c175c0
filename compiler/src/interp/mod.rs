//! The reference interpreter: Graph IR + inputs + parameters → every value, in `f64`
//! (the oracle) or with each result rounded to its dtype (`f32`, and `bf16`/`f16` through
//! the `half` crate) to mimic a real backend. Each op's reference semantics is one arm
//! of the exhaustive match in `eval`; every backend is tested against this file.

pub mod tensor;

use crate::graph::dim::Dim;
use crate::graph::op::{Op, Reduce};
use crate::graph::types::DType;
use crate::graph::{Graph, ValueId};
use crate::library;
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
        let mut v = eval(&node.op, &args, node.ty.dtype, *leaf, &dim, options).map_err(|e| {
            // Where in the model: the block instance that made the node.
            if node.scope.is_empty() {
                e
            } else {
                RunError(format!("{} (in `{}`)", e.0, node.scope))
            }
        })?;
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
    if !matches!(dtype, DType::F64 | DType::I32 | DType::I64 | DType::Bool) {
        t.data.iter_mut().for_each(|x| *x = library::round(*x, dtype));
    }
}

fn map(x: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor::new(x.shape.clone(), x.data.iter().map(|&v| f(v)).collect())
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
            Reduce::LogSumExp => library::log_sum_exp(run.iter().copied()),
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
            let lse = library::log_sum_exp((0..len).map(|k| x.data[at(k)]));
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
        Op::Unary(u) => map(args[0], |x| library::unary(*u, x)),
        Op::Binary(b) => {
            // Integer tensors divide like integers (floor), as compile-time `/` does.
            let integer = matches!(dtype, DType::I32 | DType::I64);
            zip(args[0], args[1], |x, y| library::binary(*b, x, y, integer))
        }
        Op::Where => {
            let shape = broadcast_shape(&args[0].shape, &broadcast_shape(&args[1].shape, &args[2].shape));
            let (c, a, b) =
                (broadcast_to(args[0], &shape), broadcast_to(args[1], &shape), broadcast_to(args[2], &shape));
            let data = (0..c.numel()).map(|i| if c.data[i] != 0.0 { a.data[i] } else { b.data[i] }).collect();
            Tensor::new(shape, data)
        }
        Op::Softcap { cap } => map(args[0], |x| cap * (x / cap).tanh()),
        Op::Cast { to } => map(args[0], |x| library::cast(x, *to)),
        Op::Dropout { p, key } => {
            if !options.training || *p == 0.0 {
                args[0].clone()
            } else {
                // The mask depends only on (seed, key): the backward's dropout, which has
                // the same key, zeroes the same elements. Element i takes draw i.
                let stream = library::dropout_stream(options.seed, *key);
                let keep = 1.0 - p;
                let mut t = args[0].clone();
                for (i, x) in t.data.iter_mut().enumerate() {
                    *x = if library::uniform(stream, i as u64) < *p { 0.0 } else { *x / keep };
                }
                t
            }
        }
        Op::Noise { std, key } => {
            let mut t = args[0].clone();
            if options.training && *std > 0.0 {
                // Like dropout's mask, a function of (seed, key) only.
                let stream = library::noise_stream(options.seed, *key);
                for (i, x) in t.data.iter_mut().enumerate() {
                    *x += std * library::normal(stream, i as u64);
                }
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
            let (q, k, v) = (args[0], args[1], args[2]);
            let (b, t, hd) = (q.shape[0], q.shape[2], q.shape[3]);
            let (s, dv) = (k.shape[2], v.shape[3]);
            let bias = has_bias.then(|| broadcast_to(args[3], &[b, h, t, s]));
            let data = library::attention(
                (&q.data, &k.data, &v.data, bias.as_ref().map(|x| x.data.as_slice())),
                (b, h, t, hd),
                (hkv, s, dv),
                *causal,
                *window,
                *softcap,
                *scale,
            );
            Tensor::new(vec![b, h, t, dv], data)
        }
        Op::AttentionGrad { wrt, causal, window, softcap, scale, has_bias } => {
            let (h, hkv) = (args[0].shape[1], args[1].shape[1]);
            if hkv == 0 || h % hkv != 0 {
                return Err(RunError(format!("`attention` needs H % Hkv == 0, found H = {h}, Hkv = {hkv}")));
            }
            let (q, k, v, dout) = (args[0], args[1], args[2], args[args.len() - 1]);
            let (b, t, hd) = (q.shape[0], q.shape[2], q.shape[3]);
            let (s, dv) = (k.shape[2], v.shape[3]);
            let bias = has_bias.then(|| broadcast_to(args[3], &[b, h, t, s]));
            let data = library::attention_grad(
                (&q.data, &k.data, &v.data, bias.as_ref().map(|x| x.data.as_slice()), &dout.data),
                (b, h, t, hd),
                (hkv, s, dv),
                (*causal, *window, *softcap, *scale),
                library::AttentionWrt::of(*wrt),
            );
            let shape = match wrt {
                3 => vec![b, h, t, s],
                i => args[*i].shape.clone(),
            };
            Tensor::new(shape, data)
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
            let mut shape = x.shape.clone();
            if let Some(last) = shape.last_mut() {
                *last = k;
            }
            Tensor::new(shape, library::topk(&x.data, n, k, *indices))
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
            let mut t = args[0].clone();
            library::cumsum(&mut t.data, around(&args[0].shape, *axis));
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
                total += library::log_sum_exp(row.iter().copied()) - row[t];
                count += 1;
            }
            Tensor::scalar(if count == 0 { 0.0 } else { total / count as f64 })
        }
        Op::Lstm { reverse } => {
            let (x, w_hh) = (args[0], args[2]);
            let (b, t, d, h) = (x.shape[0], x.shape[1], x.shape[2], w_hh.shape[0]);
            let data = library::lstm((&x.data, &args[1].data, &w_hh.data, &args[3].data), (b, t, d, h), *reverse);
            Tensor::new(vec![b, t, h], data)
        }
        Op::MoeRoute { k, capacity } => {
            let logits = args[0];
            let (n, e) = (logits.shape[0], logits.shape[1]);
            let k = count_within("moe_route", "k", *k, e)?;
            let c = dim(capacity)?;
            Tensor::new(vec![n, e, c], library::moe_route(&logits.data, (n, e), k, c))
        }
        Op::MoeDispatch => {
            let (route, x) = (args[0], args[1]);
            let (n, e, c, d) = (route.shape[0], route.shape[1], route.shape[2], x.shape[1]);
            Tensor::new(vec![e, c, d], library::moe_dispatch(&route.data, &x.data, (n, e, c, d)))
        }
        Op::MoeCombine => {
            let (route, y) = (args[0], args[1]);
            let (n, e, c, d) = (route.shape[0], route.shape[1], route.shape[2], y.shape[2]);
            Tensor::new(vec![n, d], library::moe_combine(&route.data, &y.data, (n, e, c, d)))
        }
        Op::MoeBalance { k } => {
            let logits = args[0];
            let (n, e) = (logits.shape[0], logits.shape[1]);
            let k = count_within("moe_balance", "k", *k, e)?;
            Tensor::scalar(library::moe_balance(&logits.data, (n, e), k))
        }
        Op::MoeZLoss => {
            let logits = args[0];
            let (n, e) = (logits.shape[0], logits.shape[1]);
            if e == 0 {
                return Err(RunError("`moe_zloss` over no experts".into()));
            }
            Tensor::scalar(library::moe_zloss(&logits.data, (n, e)))
        }
        Op::MoeLoad { k } => {
            let route = args[0];
            let (n, e, c) = (route.shape[0], route.shape[1], route.shape[2]);
            Tensor::new(vec![e], library::moe_load(&route.data, (n, e, c), *k))
        }
        Op::MoeOverflow { k } => Tensor::scalar(library::moe_overflow(&args[1].data, args[1].shape[0], *k)),
    })
}
