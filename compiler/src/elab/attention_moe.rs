//! Bound calls of the fused primitives → Graph IR: attention, the mixture-of-experts
//! family (`moe_route` returns a route value that only the other MoE primitives take),
//! the loss and the LSTM recurrence.

use super::forward::{Builder, Frame, RValue};
use super::primitives::Call;
use crate::error::Error;
use crate::graph::dim::Dim;
use crate::graph::op::Op;
use crate::graph::DimDef;
use modelc_grammar::Diagnostic;

type Built = Result<RValue, Error>;

/// `attention(q, k, v, causal:, window:, softcap:, scale:, bias:)`; `scale` defaults to
/// `hd ** -0.5`.
pub(super) fn attention(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let q = b.tensor_arg(c, "q", frame)?;
    let k = b.tensor_arg(c, "k", frame)?;
    let v = b.tensor_arg(c, "v", frame)?;
    let causal = c.bool("causal");
    let window = c.int("window");
    let softcap = c.number("softcap");
    let hd = b.ty(q).shape.last().and_then(|d| d.as_constant()).unwrap_or(1);
    let scale = c.number("scale").unwrap_or(1.0 / (hd as f64).sqrt());
    let mut ids = vec![q, k, v];
    let has_bias = match c.get("bias") {
        None => false,
        Some((bias, s)) => {
            ids.push(b.tensor_like(bias.clone(), None, frame, s)?);
            true
        }
    };
    Ok(RValue::Tensor(b.node(Op::Attention { causal, window, softcap, scale, has_bias }, ids, frame, c.span)?))
}

pub(super) fn cross_entropy(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let logits = b.tensor_arg(c, "logits", frame)?;
    let targets = b.tensor_arg(c, "targets", frame)?;
    let ignore = c.int("ignore").unwrap_or(-100);
    Ok(RValue::Tensor(b.node(Op::CrossEntropy { ignore }, vec![logits, targets], frame, c.span)?))
}

pub(super) fn lstm(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let ids = ["x", "w_ih", "w_hh", "bias"].iter().map(|n| b.tensor_arg(c, n, frame)).collect::<Result<Vec<_>, _>>()?;
    let reverse = c.bool("reverse");
    Ok(RValue::Tensor(b.node(Op::Lstm { reverse }, ids, frame, c.span)?))
}

/// `moe_route(logits [N, E], k:, capacity:, noise:)` → a route: the combine weights
/// `[N, E, C]`, the logits and `k`.
pub(super) fn moe_route(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let logits = b.tensor_arg(c, "logits", frame)?;
    let k = c.int("k").ok_or_else(|| b.missing(c, "k", frame))?;
    let noise = c.number("noise").unwrap_or(0.0);
    let lt = b.ty(logits).clone();
    if lt.rank() != 2 {
        return Err(b.err(
            frame,
            Diagnostic::error(format!("`moe_route` takes router logits [N, E], found {}", lt.shape_text()), c.span)
                .with_label("here"),
        ));
    }
    let capacity = match c.number("capacity") {
        // Dropless: an expert may take every token.
        None => lt.shape[0].clone(),
        Some(cf) => b.capacity_dim(cf, k, &lt.shape[0], &lt.shape[1]),
    };
    // Noisy top-k gating: the route (and its gradient) sees the noisy logits; the
    // balance and z-losses keep the clean ones.
    let gated = if noise > 0.0 {
        let key = b.graph.nodes.iter().filter(|n| matches!(n.op, Op::Noise { .. })).count() as u64;
        b.node(Op::Noise { std: noise, key }, vec![logits], frame, c.span)?
    } else {
        logits
    };
    let combine = b.node(Op::MoeRoute { k, capacity }, vec![gated], frame, c.span)?;
    Ok(RValue::Route { combine, logits, k })
}

/// The route argument of the other MoE primitives.
fn route(
    b: &Builder<'_>,
    c: &Call,
    frame: &Frame<'_>,
) -> Result<(crate::graph::ValueId, crate::graph::ValueId, i64), Error> {
    match c.get("route") {
        Some((RValue::Route { combine, logits, k }, _)) => Ok((*combine, *logits, *k)),
        _ => Err(b.err(
            frame,
            Diagnostic::error(format!("`{}` takes the route of `moe_route` first", c.prim.name), c.span)
                .with_label("here"),
        )),
    }
}

/// `moe_dispatch(route, x [N, d])` → each expert's slots `[E, C, d]`.
pub(super) fn moe_dispatch(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let (combine, _, _) = route(b, c, frame)?;
    let x = b.tensor_arg(c, "x", frame)?;
    Ok(RValue::Tensor(b.node(Op::MoeDispatch, vec![combine, x], frame, c.span)?))
}

/// `moe_combine(route, y [E, C, d])` → the expert outputs weighted back into `[N, d]`.
pub(super) fn moe_combine(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let (combine, _, _) = route(b, c, frame)?;
    let y = b.tensor_arg(c, "y", frame)?;
    Ok(RValue::Tensor(b.node(Op::MoeCombine, vec![combine, y], frame, c.span)?))
}

pub(super) fn moe_balance(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let (combine, logits, k) = route(b, c, frame)?;
    Ok(RValue::Tensor(b.node(Op::MoeBalance { k }, vec![logits, combine], frame, c.span)?))
}

pub(super) fn moe_zloss(b: &mut Builder<'_>, c: &Call, frame: &Frame<'_>) -> Built {
    let logits = b.tensor_arg(c, "logits", frame)?;
    Ok(RValue::Tensor(b.node(Op::MoeZLoss, vec![logits], frame, c.span)?))
}

impl Builder<'_> {
    /// The capacity `ceil(cf · k · N / E)` as a dim: a constant when `N` is, otherwise
    /// a named dim whose formula the graph records.
    pub(super) fn capacity_dim(&mut self, cf: f64, k: i64, n: &Dim, e: &Dim) -> Dim {
        if let (Some(n), Some(e)) = (n.as_constant(), e.as_constant()) {
            return Dim::constant((cf * k as f64 * n as f64 / e as f64).ceil() as i64);
        }
        let same = |d: &&DimDef| d.capacity == cf && d.k == k && d.tokens == *n && d.experts == *e;
        if let Some(def) = self.graph.dim_defs.iter().find(same) {
            return Dim::symbol(&def.name);
        }
        let name = format!("C{}", self.graph.dim_defs.len());
        self.graph.dim_defs.push(DimDef { name: name.clone(), capacity: cf, k, tokens: n.clone(), experts: e.clone() });
        Dim::symbol(&name)
    }
}
