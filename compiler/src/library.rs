//! Reference numerics shared by the two executors, the Graph IR interpreter and the
//! Kernel IR executor: each scalar operation's function (one table, `unary` and
//! `binary`), dtype rounding and casts, the counter-based random streams of dropout and
//! noise, and the library routines over whole row-major buffers (attention, scatter-add,
//! top-k, cumulative sums, the LSTM, MoE routing). Plain loops in `f64`: the oracle.

use crate::graph::op::{Binary, Unary};
use crate::graph::types::DType;

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// Python's floor division, as compile-time arithmetic does.
pub fn floor_div(a: f64, b: f64) -> f64 {
    (a / b).floor()
}

/// The scalar function of a unary op.
pub fn unary(u: Unary, x: f64) -> f64 {
    match u {
        Unary::Neg => -x,
        Unary::Exp => x.exp(),
        Unary::Log => x.ln(),
        Unary::Sqrt => x.sqrt(),
        Unary::Rsqrt => 1.0 / x.sqrt(),
        Unary::Tanh => x.tanh(),
        Unary::Erf => libm::erf(x),
        Unary::Sigmoid => sigmoid(x),
        Unary::Sin => x.sin(),
        Unary::Cos => x.cos(),
        Unary::Abs => x.abs(),
        Unary::Relu => x.max(0.0),
        Unary::Gelu => gelu(x),
        Unary::GeluTanh => gelu_tanh(x),
        Unary::Silu => x * sigmoid(x),
        Unary::Not => truth(x == 0.0),
    }
}

fn truth(c: bool) -> f64 {
    if c {
        1.0
    } else {
        0.0
    }
}

/// The scalar function of a binary op; `integer`: the result's dtype is an integer one
/// (`div` floors then, as compile-time `/` does).
pub fn binary(b: Binary, x: f64, y: f64, integer: bool) -> f64 {
    match b {
        Binary::Add => x + y,
        Binary::Sub => x - y,
        Binary::Mul => x * y,
        Binary::Div if integer => floor_div(x, y),
        Binary::Div => x / y,
        Binary::Rem => x - y * floor_div(x, y),
        Binary::Pow => x.powf(y),
        Binary::Min => x.min(y),
        Binary::Max => x.max(y),
        Binary::Eq => truth(x == y),
        Binary::Ne => truth(x != y),
        Binary::Lt => truth(x < y),
        Binary::Le => truth(x <= y),
        Binary::Gt => truth(x > y),
        Binary::Ge => truth(x >= y),
        Binary::And => truth(x != 0.0 && y != 0.0),
        Binary::Or => truth(x != 0.0 || y != 0.0),
    }
}

/// What a float can hold in `dtype` (integers and bool pass through: they are exact).
pub fn round(x: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F32 => x as f32 as f64,
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        DType::F16 => half::f16::from_f64(x).to_f64(),
        DType::F64 | DType::I32 | DType::I64 | DType::Bool => x,
    }
}

/// The conversion of `cast(to)`: integers truncate, `bool` is `!= 0`, floats round.
pub fn cast(x: f64, to: DType) -> f64 {
    match to {
        DType::I32 | DType::I64 => x.trunc(),
        DType::Bool => truth(x != 0.0),
        DType::F64 | DType::F32 | DType::F16 | DType::BF16 => round(x, to),
    }
}

/// The stream of dropout mask `key` under `seed`.
pub fn dropout_stream(seed: u64, key: u64) -> u64 {
    seed ^ key.wrapping_mul(0xA076_1D64_78BD_642F)
}

/// The stream of noise `key` under `seed`.
pub fn noise_stream(seed: u64, key: u64) -> u64 {
    seed ^ key.wrapping_mul(0xE703_7ED1_A0B4_28DB) ^ 0x006E_6F69_7365
}

/// The kernel-IR constant of a stream: what `Random { stream }` holds, xored with the
/// call's seed at run time (`dropout_stream(seed, key) == seed ^ dropout_mix(key)`).
pub fn dropout_mix(key: u64) -> u64 {
    dropout_stream(0, key)
}

pub fn noise_mix(key: u64) -> u64 {
    noise_stream(0, key)
}

/// SplitMix64's `counter`-th output of `stream` (counter 0 is the first): a
/// counter-based generator, so any element's draw is computed without the others.
pub fn draw(stream: u64, counter: u64) -> u64 {
    let mut z = stream.wrapping_add(counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) from draw `counter`.
pub fn uniform(stream: u64, counter: u64) -> f64 {
    (draw(stream, counter) >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal (Box–Muller) from draws `2c` and `2c + 1`.
pub fn normal(stream: u64, counter: u64) -> f64 {
    let u = uniform(stream, counter.wrapping_mul(2)).max(f64::MIN_POSITIVE);
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform(stream, counter.wrapping_mul(2) + 1)).cos()
}

pub fn log_sum_exp(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Softmax of each row of `[rows, n]`, as `exp(x - logsumexp(row))`.
pub fn softmax_rows(x: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(n.max(1)) {
        let lse = log_sum_exp(row.iter().copied());
        out.extend(row.iter().map(|v| (v - lse).exp()));
    }
    out
}

/// Positions of a row from the largest value down, ties to the lower index.
fn ranked(row: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order
}

/// q, k, v and the broadcast bias of `attention`.
pub type AttentionOperands<'a> = (&'a [f64], &'a [f64], &'a [f64], Option<&'a [f64]>);

/// `softmax(mask(q kᵀ · scale), softcapped, + bias) v`, one query row at a time, with K/V
/// heads shared by groups of query heads (GQA). Causal and window masks align the last
/// query with the last key (so they also hold when keys include a cache). A row with
/// every key masked gives 0. Shapes: q `[b, h, t, hd]`, k `[b, hkv, s, hd]`, v `[b, hkv,
/// s, dv]`, bias broadcast to `[b, h, t, s]` already.
pub fn attention(
    (q, k, v, bias): AttentionOperands,
    (b, h, t, hd): (usize, usize, usize, usize),
    (hkv, s, dv): (usize, usize, usize),
    causal: bool,
    window: Option<i64>,
    softcap: Option<f64>,
    scale: f64,
) -> Vec<f64> {
    let group = h / hkv.max(1);
    let mut out = vec![0.0; b * h * t * dv];
    let mut logits = vec![0.0; s];
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / group.max(1);
            for ti in 0..t {
                let qrow = &q[((bi * h + hi) * t + ti) * hd..][..hd];
                let last = ti + s - t.min(s);
                for (si, l) in logits.iter_mut().enumerate() {
                    let krow = &k[((bi * hkv + kh) * s + si) * hd..][..hd];
                    let mut x = qrow.iter().zip(krow).map(|(a, c)| a * c).sum::<f64>() * scale;
                    if let Some(cap) = softcap {
                        x = cap * (x / cap).tanh();
                    }
                    if let Some(bias) = bias {
                        x += bias[((bi * h + hi) * t + ti) * s + si];
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
                    let vrow = &v[((bi * hkv + kh) * s + si) * dv..][..dv];
                    for (o, vv) in out[orow..orow + dv].iter_mut().zip(vrow) {
                        *o += w * vv;
                    }
                }
            }
        }
    }
    out
}

/// q, k, v, the broadcast bias and the output's gradient of `attention_grad`.
pub type AttentionGradOperands<'a> = (&'a [f64], &'a [f64], &'a [f64], Option<&'a [f64]>, &'a [f64]);

/// What `attention_grad` computes: the gradient of q, k or v, or of the scores (`[b, h,
/// t, s]`, which the bias's is reduced from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionWrt {
    Q,
    K,
    V,
    Scores,
}

impl AttentionWrt {
    /// The argument `wrt` names in `attention_grad` (0 q, 1 k, 2 v, 3 the scores).
    pub fn of(wrt: usize) -> AttentionWrt {
        match wrt {
            0 => AttentionWrt::Q,
            1 => AttentionWrt::K,
            2 => AttentionWrt::V,
            _ => AttentionWrt::Scores,
        }
    }
}

/// The gradient of `attention` with respect to `wrt`, one query row at a time: the row's
/// scores and probabilities recomputed as the forward computes them, `dP = dO · vᵀ`, the
/// softmax's backward `dS = P ⊙ (dP - Σ P dP)`, the softcap's derivative, then `dq = dS k
/// scale`, `dk = dSᵀ q scale` or `dv = Pᵀ dO` (K/V gradients summed over the query heads
/// that share them). A row whose keys are all masked contributes nothing.
pub fn attention_grad(
    (q, k, v, bias, dout): AttentionGradOperands,
    (b, h, t, hd): (usize, usize, usize, usize),
    (hkv, s, dv): (usize, usize, usize),
    (causal, window, softcap, scale): (bool, Option<i64>, Option<f64>, f64),
    wrt: AttentionWrt,
) -> Vec<f64> {
    let group = h / hkv.max(1);
    let len = match wrt {
        AttentionWrt::Q => b * h * t * hd,
        AttentionWrt::K => b * hkv * s * hd,
        AttentionWrt::V => b * hkv * s * dv,
        AttentionWrt::Scores => b * h * t * s,
    };
    let mut out = vec![0.0; len];
    let (mut logits, mut pre, mut p, mut ds) = (vec![0.0; s], vec![0.0; s], vec![0.0; s], vec![0.0; s]);
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / group.max(1);
            for ti in 0..t {
                let row = (bi * h + hi) * t + ti;
                let qrow = &q[row * hd..][..hd];
                let last = ti + s - t.min(s);
                for si in 0..s {
                    let krow = &k[((bi * hkv + kh) * s + si) * hd..][..hd];
                    let mut x = qrow.iter().zip(krow).map(|(a, c)| a * c).sum::<f64>() * scale;
                    pre[si] = x;
                    if let Some(cap) = softcap {
                        x = cap * (x / cap).tanh();
                    }
                    if let Some(bias) = bias {
                        x += bias[row * s + si];
                    }
                    let masked = (causal && si > last) || window.is_some_and(|w| si as i64 <= last as i64 - w);
                    logits[si] = if masked { f64::NEG_INFINITY } else { x };
                }
                let lse = log_sum_exp(logits.iter().copied());
                if lse == f64::NEG_INFINITY {
                    continue;
                }
                for si in 0..s {
                    p[si] = (logits[si] - lse).exp();
                }
                let drow = &dout[row * dv..][..dv];
                if wrt == AttentionWrt::V {
                    for (si, &w) in p.iter().enumerate() {
                        let o = &mut out[((bi * hkv + kh) * s + si) * dv..][..dv];
                        for (x, g) in o.iter_mut().zip(drow) {
                            *x += w * g;
                        }
                    }
                    continue;
                }
                let mut dot = 0.0;
                for si in 0..s {
                    let vrow = &v[((bi * hkv + kh) * s + si) * dv..][..dv];
                    ds[si] = drow.iter().zip(vrow).map(|(a, c)| a * c).sum::<f64>();
                    dot += p[si] * ds[si];
                }
                for si in 0..s {
                    ds[si] = p[si] * (ds[si] - dot);
                }
                if wrt == AttentionWrt::Scores {
                    out[row * s..][..s].copy_from_slice(&ds);
                    continue;
                }
                for si in 0..s {
                    if let Some(cap) = softcap {
                        let r = (pre[si] / cap).tanh();
                        ds[si] *= 1.0 - r * r;
                    }
                    ds[si] *= scale;
                }
                match wrt {
                    AttentionWrt::Q => {
                        let o = &mut out[row * hd..][..hd];
                        for (si, &d) in ds.iter().enumerate() {
                            let krow = &k[((bi * hkv + kh) * s + si) * hd..][..hd];
                            for (x, kv) in o.iter_mut().zip(krow) {
                                *x += d * kv;
                            }
                        }
                    }
                    _ => {
                        for (si, &d) in ds.iter().enumerate() {
                            let o = &mut out[((bi * hkv + kh) * s + si) * hd..][..hd];
                            for (x, qv) in o.iter_mut().zip(qrow) {
                                *x += d * qv;
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// The `k` largest of each row of `[rows, n]`: their values, or their positions.
pub fn topk(x: &[f64], n: usize, k: usize, indices: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len() / n.max(1) * k);
    for row in x.chunks(n.max(1)) {
        out.extend(ranked(row)[..k].iter().map(|&i| if indices { i as f64 } else { row[i] }));
    }
    out
}

/// Running sums along the middle axis of `[outer, len, inner]`, in place.
pub fn cumsum(x: &mut [f64], (outer, len, inner): (usize, usize, usize)) {
    for o in 0..outer {
        for i in 0..inner {
            for k in 1..len {
                let at = o * len * inner + k * inner + i;
                x[at] += x[at - inner];
            }
        }
    }
}

/// One LSTM direction over `x [b, t, d]` with `w_ih [d, 4h]`, `w_hh [h, 4h]`, `bias
/// [4h]`: gates `i, f, g, o`, zero initial state → `[b, t, h]`.
pub fn lstm(
    (x, w_ih, w_hh, bias): (&[f64], &[f64], &[f64], &[f64]),
    (b, t, d, hsz): (usize, usize, usize, usize),
    reverse: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; b * t * hsz];
    for bi in 0..b {
        let (mut h, mut c) = (vec![0.0; hsz], vec![0.0; hsz]);
        let steps: Vec<usize> = if reverse { (0..t).rev().collect() } else { (0..t).collect() };
        for ti in steps {
            let xrow = &x[(bi * t + ti) * d..][..d];
            let mut gates = bias.to_vec();
            for (gi, g) in gates.iter_mut().enumerate() {
                *g += xrow.iter().enumerate().map(|(j, xv)| xv * w_ih[j * 4 * hsz + gi]).sum::<f64>();
                *g += h.iter().enumerate().map(|(j, hv)| hv * w_hh[j * 4 * hsz + gi]).sum::<f64>();
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
            out[(bi * t + ti) * hsz..][..hsz].copy_from_slice(&h);
        }
    }
    out
}

/// The route of `moe_route`: combine weights `[n, e, c]` from logits `[n, e]`. Softmax
/// over all experts; each token's top `k` (ties to the lower index), renormalised over
/// the k; then slots are given in GShard order (every token's first choice in token
/// order, then every second choice, ...), and an assignment past an expert's `c` slots is
/// dropped (weight 0: the residual carries the token).
pub fn moe_route(logits: &[f64], (n, e): (usize, usize), k: usize, capacity: usize) -> Vec<f64> {
    let probs = softmax_rows(logits, e);
    let mut choices = vec![Vec::new(); n];
    for (t, c) in choices.iter_mut().enumerate() {
        let row = &probs[t * e..(t + 1) * e];
        let top = &ranked(row)[..k];
        let total: f64 = top.iter().map(|&x| row[x]).sum();
        *c = top.iter().map(|&x| (x, row[x] / total)).collect::<Vec<_>>();
    }
    let mut fill = vec![0usize; e];
    let mut out = vec![0.0; n * e * capacity];
    for rank in 0..k {
        for (t, c) in choices.iter().enumerate() {
            let (x, w) = c[rank];
            if fill[x] < capacity {
                out[(t * e + x) * capacity + fill[x]] = w;
                fill[x] += 1;
            }
        }
    }
    out
}

/// `x [n, d]` gathered into expert slots `[e, c, d]` by the route `[n, e, c]`.
pub fn moe_dispatch(route: &[f64], x: &[f64], (n, e, c, d): (usize, usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; e * c * d];
    for t in 0..n {
        for slot in 0..e * c {
            if route[t * e * c + slot] != 0.0 {
                out[slot * d..(slot + 1) * d].copy_from_slice(&x[t * d..(t + 1) * d]);
            }
        }
    }
    out
}

/// Expert outputs `[e, c, d]` weighted back into tokens `[n, d]` by the route.
pub fn moe_combine(route: &[f64], y: &[f64], (n, e, c, d): (usize, usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; n * d];
    for t in 0..n {
        for slot in 0..e * c {
            let w = route[t * e * c + slot];
            if w != 0.0 {
                for j in 0..d {
                    out[t * d + j] += w * y[slot * d + j];
                }
            }
        }
    }
    out
}

/// `E · Σ f_i P_i`: f_i the share of the top-k choices that went to expert i (before
/// capacity), P_i the mean router probability of i.
pub fn moe_balance(logits: &[f64], (n, e): (usize, usize), k: usize) -> f64 {
    let probs = softmax_rows(logits, e);
    let mut f = vec![0.0; e];
    let mut p = vec![0.0; e];
    for t in 0..n {
        let row = &probs[t * e..(t + 1) * e];
        for &x in &ranked(row)[..k] {
            f[x] += 1.0 / (n as f64 * k as f64);
        }
        for x in 0..e {
            p[x] += row[x] / n as f64;
        }
    }
    e as f64 * f.iter().zip(&p).map(|(a, b)| a * b).sum::<f64>()
}

/// Router z-loss `mean(logsumexp(logits)²)` over `[n, e]`.
pub fn moe_zloss(logits: &[f64], (n, e): (usize, usize)) -> f64 {
    logits.chunks(e.max(1)).map(|row| log_sum_exp(row.iter().copied()).powi(2)).sum::<f64>() / n.max(1) as f64
}

/// Fraction of the `n·k` assignments each expert kept, from the route `[n, e, c]`.
pub fn moe_load(route: &[f64], (n, e, c): (usize, usize, usize), k: i64) -> Vec<f64> {
    let mut load = vec![0.0; e];
    for t in 0..n {
        for (x, l) in load.iter_mut().enumerate() {
            let kept = (0..c).filter(|&s| route[(t * e + x) * c + s] != 0.0).count();
            *l += kept as f64 / (n as f64 * k as f64).max(1.0);
        }
    }
    load
}

/// Fraction of the `n·k` assignments dropped for lack of capacity.
pub fn moe_overflow(route: &[f64], n: usize, k: i64) -> f64 {
    let kept = route.iter().filter(|&&w| w != 0.0).count();
    1.0 - kept as f64 / (n as f64 * k as f64).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counter-based draws are SplitMix64's sequence: the i-th `next()` of a
    /// generator seeded with the stream.
    #[test]
    fn draws_follow_splitmix_in_order() {
        let stream = 0x1234_5678_9abc_def0u64;
        let mut state = stream;
        for c in 0..100 {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            assert_eq!(draw(stream, c), z ^ (z >> 31));
        }
        assert_eq!(dropout_stream(7, 9), 7 ^ dropout_mix(9));
        assert_eq!(noise_stream(7, 9), 7 ^ noise_mix(9));
    }
}
