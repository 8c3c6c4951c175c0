//! The Kernel IR's library routines over whole row-major buffers, through the shared
//! reference numerics (`crate::library`): operands unpacked by shape, the result laid out
//! as the output buffer's shape says. Bad data (an index out of range, a `k` past the
//! axis) is an error, never a panic.

use crate::kernel::Routine;
use crate::library;

type Operand<'a> = (&'a [f64], &'a [usize]);

fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// `x` (shape `from`) broadcast to `to` (NumPy rules).
fn broadcast(x: &[f64], from: &[usize], to: &[usize]) -> Vec<f64> {
    let skip = to.len() - from.len();
    let total: usize = to.iter().product();
    let mut strides = vec![0usize; to.len()];
    let mut s = 1;
    for k in (0..from.len()).rev() {
        strides[skip + k] = if from[k] == 1 { 0 } else { s };
        s *= from[k];
    }
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; to.len()];
    for _ in 0..total {
        out.push(x[idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()]);
        for d in (0..to.len()).rev() {
            idx[d] += 1;
            if idx[d] < to[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

fn count(what: &str, name: &str, value: i64, limit: usize) -> Result<usize, String> {
    match usize::try_from(value) {
        Ok(v) if (1..=limit).contains(&v) => Ok(v),
        _ => Err(format!("`{what}` needs 1 <= {name} <= {limit}, found {name} = {value}")),
    }
}

fn index(v: f64, len: usize, what: &str) -> Result<usize, String> {
    if v < 0.0 || v >= len as f64 || v.fract() != 0.0 {
        return Err(format!("{what} index {v} is out of range 0..{len}"));
    }
    Ok(v as usize)
}

/// `attention`'s operands unpacked: q, k, v with their dims, the bias broadcast.
struct AttentionOperands<'a> {
    q: &'a [f64],
    k: &'a [f64],
    v: &'a [f64],
    bias: Option<Vec<f64>>,
    qdims: (usize, usize, usize, usize),
    kdims: (usize, usize, usize),
}

fn attention_operands<'a>(ins: &[Operand<'a>], has_bias: bool) -> Result<AttentionOperands<'a>, String> {
    let [(q, qs), (k, ks), (v, vs), ..] = ins else { return Err("`attention` needs q, k and v".into()) };
    let (b, h, t, hd) = (qs[0], qs[1], qs[2], qs[3]);
    let (hkv, s, dv) = (ks[1], ks[2], vs[3]);
    if hkv == 0 || h % hkv != 0 {
        return Err(format!("`attention` needs H % Hkv == 0, found H = {h}, Hkv = {hkv}"));
    }
    let bias = match (has_bias, ins.get(3)) {
        (true, Some((x, xs))) => Some(broadcast(x, xs, &[b, h, t, s])),
        (true, None) => return Err("`attention` is missing its bias".into()),
        (false, _) => None,
    };
    Ok(AttentionOperands { q, k, v, bias, qdims: (b, h, t, hd), kdims: (hkv, s, dv) })
}

pub fn run(routine: &Routine, ins: &[Operand], out: &[usize], capacity: Option<i64>) -> Result<Vec<f64>, String> {
    let arg = |k: usize| ins.get(k).copied().ok_or_else(|| format!("`{}` is missing operand {k}", routine.name()));
    Ok(match routine {
        Routine::Attention { causal, window, softcap, scale, has_bias } => {
            let a = attention_operands(ins, *has_bias)?;
            library::attention((a.q, a.k, a.v, a.bias.as_deref()), a.qdims, a.kdims, *causal, *window, *softcap, *scale)
        }
        Routine::AttentionGrad { wrt, causal, window, softcap, scale, has_bias } => {
            let a = attention_operands(ins, *has_bias)?;
            let (dout, _) = arg(ins.len().saturating_sub(1))?;
            library::attention_grad(
                (a.q, a.k, a.v, a.bias.as_deref(), dout),
                a.qdims,
                a.kdims,
                (*causal, *window, *softcap, *scale),
                library::AttentionWrt::of(*wrt),
            )
        }
        Routine::ScatterAdd { axis } => {
            let ((x, xs), (idx, is), (src, _)) = (arg(0)?, arg(1)?, arg(2)?);
            let mut out = x.to_vec();
            let x_strides = strides(xs);
            let i_strides = strides(is);
            for (i, &at) in idx.iter().enumerate() {
                let mut pos: Vec<usize> = (0..is.len()).map(|d| (i / i_strides[d]) % is[d].max(1)).collect();
                pos[*axis] = index(at, xs[*axis], "scatter_add")?;
                if pos.iter().zip(xs).any(|(p, s)| p >= s) {
                    return Err(format!("`scatter_add` index position {pos:?} is outside {xs:?}"));
                }
                out[pos.iter().zip(&x_strides).map(|(p, s)| p * s).sum::<usize>()] += src[i];
            }
            out
        }
        Routine::TopK { k, indices } => {
            let (x, xs) = arg(0)?;
            let n = *xs.last().unwrap_or(&1);
            let k = count("topk", "k", *k, n)?;
            library::topk(x, n, k, *indices)
        }
        Routine::Cumsum { axis } => {
            let (x, xs) = arg(0)?;
            let mut out = x.to_vec();
            library::cumsum(&mut out, around(xs, *axis));
            out
        }
        Routine::Lstm { reverse } => {
            let ((x, xs), (w_ih, _), (w_hh, hs), (bias, _)) = (arg(0)?, arg(1)?, arg(2)?, arg(3)?);
            library::lstm((x, w_ih, w_hh, bias), (xs[0], xs[1], xs[2], hs[0]), *reverse)
        }
        Routine::MoeRoute { k, .. } => {
            let (logits, ls) = arg(0)?;
            let (n, e) = (ls[0], ls[1]);
            let k = count("moe_route", "k", *k, e)?;
            let c = usize::try_from(capacity.unwrap_or(0)).map_err(|_| "a negative MoE capacity".to_string())?;
            library::moe_route(logits, (n, e), k, c)
        }
        Routine::MoeDispatch => {
            let ((route, rs), (x, xs)) = (arg(0)?, arg(1)?);
            library::moe_dispatch(route, x, (rs[0], rs[1], rs[2], xs[1]))
        }
        Routine::MoeCombine => {
            let ((route, rs), (y, ys)) = (arg(0)?, arg(1)?);
            library::moe_combine(route, y, (rs[0], rs[1], rs[2], ys[2]))
        }
        Routine::MoeBalance { k } => {
            let (logits, ls) = arg(0)?;
            let k = count("moe_balance", "k", *k, ls[1])?;
            vec![library::moe_balance(logits, (ls[0], ls[1]), k)]
        }
        Routine::MoeZLoss => {
            let (logits, ls) = arg(0)?;
            if ls[1] == 0 {
                return Err("`moe_zloss` over no experts".into());
            }
            vec![library::moe_zloss(logits, (ls[0], ls[1]))]
        }
        Routine::MoeLoad { k } => {
            let (route, rs) = arg(0)?;
            library::moe_load(route, (rs[0], rs[1], rs[2]), *k)
        }
        Routine::MoeOverflow { k } => {
            let (route, rs) = arg(1)?;
            vec![library::moe_overflow(route, rs[0], *k)]
        }
    })
    .and_then(|data: Vec<f64>| {
        let want: usize = out.iter().product();
        if data.len() == want {
            Ok(data)
        } else {
            Err(format!("`{}` made {} values for an output of shape {out:?}", routine.name(), data.len()))
        }
    })
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
