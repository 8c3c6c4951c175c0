//! Accumulated gradients + parameters + optimizer state → the `apply` program: unscale,
//! the global gradient norm, the non-finite guard as a `where` (a step whose norm is not
//! finite changes nothing: skipped under loss scaling, the end of an f32 run),
//! clipping, and each optimizer's update, every stored value rounded to f32.
//!
//! Each expression is written in the order `modelc_runtime::optim` evaluates it (f64
//! arithmetic is not associative), which the tests check bit for bit.

use super::{grad_buffer, state_buffer, Builder};
use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Reduce, Unary};
use crate::graph::types::DType;
use crate::graph::{Graph, ValueId};
use modelc_runtime::optim::{self, Kind, BIAS1, BIAS2};
use modelc_runtime::train::names;

/// What the update needs to know besides the parameters.
#[derive(Clone, Debug)]
pub struct ApplySpec {
    pub optimizer: Kind,
    pub weight_decay: f64,
    pub no_decay: Vec<String>,
    pub clip: Option<f64>,
    /// Mixed precision: gradients are divided by the `loss_scale` input.
    pub loss_scaled: bool,
}

/// The `apply` graph for trainable parameters `params` (name and shape). Returns the
/// gradient norm; updates every parameter, its optimizer state, and zeroes the gradient
/// accumulators.
pub fn apply_graph(params: &[(String, Vec<usize>)], spec: &ApplySpec) -> Result<Graph, String> {
    let mut graph = Graph::default();
    let mut sorted: Vec<&(String, Vec<usize>)> = params.iter().collect();
    // The norm sums in name order, as the host always has: the order fixes the rounding.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut b = Builder::new(&mut graph, "apply");
    let lr = b.input(names::LR, DType::F64, &[]);
    let scale = spec.loss_scaled.then(|| b.input(names::LOSS_SCALE, DType::F64, &[]));
    let bias1 =
        matches!(spec.optimizer, Kind::Adam { .. } | Kind::AdamW { .. }).then(|| b.input(BIAS1, DType::F64, &[]));
    let bias2 = (!matches!(spec.optimizer, Kind::Sgd { .. })).then(|| b.input(BIAS2, DType::F64, &[]));
    let mut grads = Vec::new();
    for (name, shape) in &sorted {
        let g = b.param(&grad_buffer(name), DType::F64, &dims(shape));
        grads.push(match scale {
            Some(s) => b.binary(Binary::Div, g, s)?,
            None => g,
        });
    }
    let norm = global_norm(&mut b, &grads, &sorted)?;
    // Always guarded: the parameters a diverging step started from stay intact, for
    // the divergence report and `--detect-anomaly`, whatever the precision.
    let abs = b.unary(Unary::Abs, norm)?;
    let finite = b.with(Binary::Lt, abs, f64::INFINITY)?;
    let factor = match spec.clip {
        Some(clip) => {
            let over = b.with(Binary::Gt, norm, clip)?;
            let shrink = b.of(clip, Binary::Div, norm)?;
            let one = b.constant(1.0);
            Some(b.select(over, shrink, one)?)
        }
        None => None,
    };
    let mut updates = Vec::new();
    let step = Step { lr, bias1, bias2, finite };
    for ((name, shape), g) in sorted.iter().zip(grads) {
        let g = match factor {
            Some(f) => b.binary(Binary::Mul, g, f)?,
            None => g,
        };
        let decay = spec.weight_decay > 0.0 && optim::decays(&spec.no_decay, name);
        update(&mut b, &spec.optimizer, spec.weight_decay, decay, name, shape, g, &step, &mut updates)?;
        // The accumulator starts the next step at zero.
        let zero = b.constant(0.0);
        let zeros = b.broadcast(zero, &dims(shape))?;
        updates.push((grad_buffer(name), zeros));
    }
    graph.updates = updates;
    graph.outputs = vec![norm];
    // Verified after every pass in debug builds; the output is the norm still.
    crate::passes::pipeline(graph)
}

fn dims(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::constant(d as i64)).collect()
}

/// `sqrt(Σ g²)` over every gradient element, in name order, one sequential sum.
fn global_norm(b: &mut Builder, grads: &[ValueId], params: &[&(String, Vec<usize>)]) -> Result<ValueId, String> {
    if grads.is_empty() {
        return Ok(b.constant(0.0));
    }
    let mut flat = Vec::new();
    for (g, (_, shape)) in grads.iter().zip(params) {
        let sq = b.binary(Binary::Mul, *g, *g)?;
        flat.push(b.reshape(sq, &[shape.iter().product()])?);
    }
    let all = if flat.len() == 1 { flat[0] } else { b.concat(flat, 0)? };
    let sum = b.reduce(Reduce::Sum, all, vec![0])?;
    b.unary(Unary::Sqrt, sum)
}

/// The step's scalar inputs and the non-finite guard.
struct Step {
    lr: ValueId,
    bias1: Option<ValueId>,
    bias2: Option<ValueId>,
    finite: ValueId,
}

/// Stores `new` (f64) into buffer `name` (f32) as `where(finite, new, old)`.
fn store(
    b: &mut Builder,
    step: &Step,
    name: String,
    old: ValueId,
    new: ValueId,
    updates: &mut Vec<(String, ValueId)>,
) -> Result<(), String> {
    let rounded = b.cast(new, DType::F32)?;
    let kept = b.select(step.finite, rounded, old)?;
    updates.push((name, kept));
    Ok(())
}

/// An f32 state buffer of parameter `name`: the stored value and its f64 view.
fn state(b: &mut Builder, prefix: &str, name: &str, shape: &[usize]) -> Result<(String, ValueId, ValueId), String> {
    let (buffer, _) = state_buffer(prefix, name);
    let stored = b.param(&buffer, DType::F32, &dims(shape));
    let wide = b.cast(stored, DType::F64)?;
    Ok((buffer, stored, wide))
}

/// `p - lr · wd · p` (decoupled weight decay), or `p`.
fn decayed(b: &mut Builder, p: ValueId, lr: ValueId, wd: f64, decay: bool) -> Result<ValueId, String> {
    if !decay {
        return Ok(p);
    }
    let lr_wd = b.with(Binary::Mul, lr, wd)?;
    let d = b.binary(Binary::Mul, lr_wd, p)?;
    b.binary(Binary::Sub, p, d)
}

/// `beta · s + (1 - beta) · x`.
fn ema(b: &mut Builder, s: ValueId, beta: f64, x: ValueId) -> Result<ValueId, String> {
    let kept = b.of(beta, Binary::Mul, s)?;
    let fresh = b.of(1.0 - beta, Binary::Mul, x)?;
    b.binary(Binary::Add, kept, fresh)
}

#[allow(clippy::too_many_arguments)]
fn update(
    b: &mut Builder,
    kind: &Kind,
    wd: f64,
    decay: bool,
    name: &str,
    shape: &[usize],
    g: ValueId,
    step: &Step,
    updates: &mut Vec<(String, ValueId)>,
) -> Result<(), String> {
    let p_stored = b.param(name, DType::F32, &dims(shape));
    let p = b.cast(p_stored, DType::F64)?;
    let lr = step.lr;
    let missing = || format!("the update of `{name}` needs its bias corrections");
    let new_p = match *kind {
        Kind::Sgd { momentum, nesterov } => {
            // `g + wd · p`, or `g + 0` as the host adds (it turns -0 into +0).
            let gi = match decay {
                true => {
                    let d = b.of(wd, Binary::Mul, p)?;
                    b.binary(Binary::Add, g, d)?
                }
                false => b.with(Binary::Add, g, 0.0)?,
            };
            let (buffer, stored, buf) = state(b, "m", name, shape)?;
            let kept = b.of(momentum, Binary::Mul, buf)?;
            let buf = b.binary(Binary::Add, kept, gi)?;
            store(b, step, buffer, stored, buf, updates)?;
            let d = if nesterov {
                let m = b.of(momentum, Binary::Mul, buf)?;
                b.binary(Binary::Add, gi, m)?
            } else if momentum > 0.0 {
                buf
            } else {
                gi
            };
            let step_ = b.binary(Binary::Mul, lr, d)?;
            b.binary(Binary::Sub, p, step_)?
        }
        Kind::Adam { beta1, beta2, eps } | Kind::AdamW { beta1, beta2, eps } => {
            let decoupled = matches!(kind, Kind::AdamW { .. });
            // The host adds `+ 0.0` without decay; here that only flips a -0 gradient to
            // +0, which no later value can tell apart (m and v stay +0 either way).
            let gi = match decay && !decoupled {
                true => {
                    let d = b.of(wd, Binary::Mul, p)?;
                    b.binary(Binary::Add, g, d)?
                }
                false => g,
            };
            let (c1, c2) = (step.bias1.ok_or_else(missing)?, step.bias2.ok_or_else(missing)?);
            let (mb, ms, m) = state(b, "m", name, shape)?;
            let (vb, vs, v) = state(b, "v", name, shape)?;
            let m = ema(b, m, beta1, gi)?;
            // `(1 - beta2) · g · g`, left to right.
            let kept = b.of(beta2, Binary::Mul, v)?;
            let fresh = b.of(1.0 - beta2, Binary::Mul, gi)?;
            let fresh = b.binary(Binary::Mul, fresh, gi)?;
            let v = b.binary(Binary::Add, kept, fresh)?;
            store(b, step, mb, ms, m, updates)?;
            store(b, step, vb, vs, v, updates)?;
            let mhat = b.binary(Binary::Div, m, c1)?;
            let vhat = b.binary(Binary::Div, v, c2)?;
            let root = b.unary(Unary::Sqrt, vhat)?;
            let denom = b.with(Binary::Add, root, eps)?;
            let delta = b.binary(Binary::Div, mhat, denom)?;
            let p = decayed(b, p, lr, wd, decay && decoupled)?;
            let step_ = b.binary(Binary::Mul, lr, delta)?;
            b.binary(Binary::Sub, p, step_)?
        }
        Kind::Adafactor { beta2, eps } if shape.len() >= 2 => {
            let c2 = step.bias2.ok_or_else(missing)?;
            let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
            let mats: usize = shape[..shape.len() - 2].iter().product();
            let g3 = b.reshape(g, &[mats, r, c])?;
            let sq = b.binary(Binary::Mul, g3, g3)?;
            let sq = b.with(Binary::Add, sq, eps)?;
            let row_stat = b.reduce(Reduce::Mean, sq, vec![2])?;
            let col_stat = b.reduce(Reduce::Mean, sq, vec![1])?;
            let (rb, rs, rows) = state(b, "rows", name, &[mats * r])?;
            let (cb, cs, cols) = state(b, "cols", name, &[mats * c])?;
            let rows = b.reshape(rows, &[mats, r])?;
            let cols = b.reshape(cols, &[mats, c])?;
            let rows = ema(b, rows, beta2, row_stat)?;
            let cols = ema(b, cols, beta2, col_stat)?;
            let row_mean = b.reduce(Reduce::Mean, rows, vec![1])?;
            let flat_rows = b.reshape(rows, &[mats * r])?;
            let flat_cols = b.reshape(cols, &[mats * c])?;
            store(b, step, rb, rs, flat_rows, updates)?;
            store(b, step, cb, cs, flat_cols, updates)?;
            // The rank-1 estimate `rows_i · cols_j / max(mean(rows), tiny) / c2`.
            let ri = b.reshape(rows, &[mats, r, 1])?;
            let cj = b.reshape(cols, &[mats, 1, c])?;
            let outer = b.binary(Binary::Mul, ri, cj)?;
            let rm = b.reshape(row_mean, &[mats, 1, 1])?;
            let rm = b.with(Binary::Max, rm, f64::MIN_POSITIVE)?;
            let vhat = b.binary(Binary::Div, outer, rm)?;
            let vhat = b.binary(Binary::Div, vhat, c2)?;
            let p3 = b.reshape(p, &[mats, r, c])?;
            let p3 = decayed(b, p3, lr, wd, decay)?;
            let num = b.binary(Binary::Mul, lr, g3)?;
            let root = b.unary(Unary::Sqrt, vhat)?;
            let root = b.with(Binary::Max, root, 1e-30)?;
            let delta = b.binary(Binary::Div, num, root)?;
            let p3 = b.binary(Binary::Sub, p3, delta)?;
            b.reshape(p3, shape)?
        }
        Kind::Adafactor { beta2, eps } => {
            let c2 = step.bias2.ok_or_else(missing)?;
            let (vb, vs, v) = state(b, "v", name, shape)?;
            let sq = b.binary(Binary::Mul, g, g)?;
            let sq = b.with(Binary::Add, sq, eps)?;
            let v = ema(b, v, beta2, sq)?;
            store(b, step, vb, vs, v, updates)?;
            let p = decayed(b, p, lr, wd, decay)?;
            let num = b.binary(Binary::Mul, lr, g)?;
            let vhat = b.binary(Binary::Div, v, c2)?;
            let root = b.unary(Unary::Sqrt, vhat)?;
            let delta = b.binary(Binary::Div, num, root)?;
            b.binary(Binary::Sub, p, delta)?
        }
    };
    store(b, step, name.to_string(), p_stored, new_p, updates)
}
