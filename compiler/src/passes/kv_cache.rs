//! Incremental decoding: a decoder's forward graph → its decode-step graph with a KV
//! cache. The step takes the `T` new tokens, the `past` positions already decoded
//! (`kv_past`, a scalar) and, per causal self-attention, the cached keys and values
//! `[B, Hkv, P, hd]` (inputs `cache.N.k`, `cache.N.v`). It returns the logits of the new
//! tokens, then each layer's keys and values extended to `P + T` positions, the next
//! step's cache.
//!
//! Two rewrites make the step equal to the full forward on the whole sequence:
//! - positions: every `arange n=T` (RoPE angles, learned position tables) becomes
//!   `arange(T) + kv_past`;
//! - attention: the new keys and values (after RoPE) are appended to the cache, and
//!   attention runs over all `P + T` keys. Its causal and sliding-window masks are aligned
//!   to the last query (query `i` sees keys up to `P + i`), so nothing else changes.

use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Op};
use crate::graph::types::{DType, TensorType};
use crate::graph::{Graph, ValueId};

/// The scalar input holding how many positions the cache already holds.
pub const PAST: &str = "kv_past";
/// The symbol of the cached length in the cache inputs' types.
pub const CACHED: &str = "P";

/// One attention layer's cache: the input names and the output indices of its extended
/// keys and values.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSlot {
    pub k_input: String,
    pub v_input: String,
    pub k_output: usize,
    pub v_output: usize,
    /// `[Hkv, hd]` of the cached keys (the batch and the length vary).
    pub heads: usize,
    pub head_dim: usize,
    pub v_dim: usize,
}

/// The decode-step graph of `graph` (a model's forward with one token input `[B, T]`).
pub fn decode_step(graph: &Graph) -> Result<(Graph, Vec<CacheSlot>), String> {
    let t = Dim::symbol("T");
    let mut out = Graph { dim_defs: graph.dim_defs.clone(), ..Graph::default() };
    let mut map: Vec<ValueId> = Vec::with_capacity(graph.nodes.len());
    let mut past: Option<ValueId> = None;
    let mut slots = Vec::new();
    let mut extra_outputs = Vec::new();
    for node in &graph.nodes {
        let args: Vec<ValueId> = node.args.iter().map(|a| map[a.0 as usize]).collect();
        let id = match &node.op {
            Op::Arange { n } if *n == t => {
                let p = *past.get_or_insert_with(|| {
                    out.push(Op::Input { name: PAST.into() }, Vec::new(), TensorType::scalar(DType::I32), "kv_cache")
                });
                let r = out.push(node.op.clone(), args, node.ty.clone(), &node.scope);
                push(&mut out, Op::Binary(Binary::Add), vec![r, p], &node.scope)?
            }
            Op::Attention { causal, has_bias, .. } => {
                let (q, k) = (graph.ty(node.args[0]), graph.ty(node.args[1]));
                let self_attention = q.shape.get(2) == Some(&t) && k.shape.get(2) == Some(&t);
                if !self_attention || !causal {
                    return Err(format!(
                        "`{}` is not causal self-attention: generation needs a decoder-only model",
                        node.scope
                    ));
                }
                if *has_bias {
                    return Err(format!("`{}` takes an attention bias, which the KV cache cannot extend", node.scope));
                }
                let n = slots.len();
                let mut full = Vec::new();
                for (which, arg) in [("k", args[1]), ("v", args[2])] {
                    let ty = out.ty(arg).clone();
                    let cached = TensorType::new(
                        ty.dtype,
                        vec![ty.shape[0].clone(), ty.shape[1].clone(), Dim::symbol(CACHED), ty.shape[3].clone()],
                    );
                    let name = format!("cache.{n}.{which}");
                    let input = out.push(Op::Input { name }, Vec::new(), cached, "kv_cache");
                    full.push(push(&mut out, Op::Concat { axis: 2 }, vec![input, arg], &node.scope)?);
                }
                let dims = |v: ValueId, i: usize| out.ty(v).shape[i].as_constant().unwrap_or(0) as usize;
                slots.push(CacheSlot {
                    k_input: format!("cache.{n}.k"),
                    v_input: format!("cache.{n}.v"),
                    k_output: 0,
                    v_output: 0,
                    heads: dims(full[0], 1),
                    head_dim: dims(full[0], 3),
                    v_dim: dims(full[1], 3),
                });
                extra_outputs.push((full[0], full[1]));
                let mut new_args = vec![args[0], full[0], full[1]];
                new_args.extend_from_slice(&args[3..]);
                push(&mut out, node.op.clone(), new_args, &node.scope)?
            }
            _ => out.push(node.op.clone(), args, node.ty.clone(), &node.scope),
        };
        map.push(id);
    }
    if slots.is_empty() {
        return Err("the model has no attention to cache".into());
    }
    let logits = *graph.outputs.first().ok_or("the model has no output")?;
    out.outputs = vec![map[logits.0 as usize]];
    for (slot, (k, v)) in slots.iter_mut().zip(extra_outputs) {
        slot.k_output = out.outputs.len();
        out.outputs.push(k);
        slot.v_output = out.outputs.len();
        out.outputs.push(v);
    }
    Ok((out, slots))
}

/// Appends a node, its type from the op's shape rule.
fn push(g: &mut Graph, op: Op, args: Vec<ValueId>, scope: &str) -> Result<ValueId, String> {
    let tys: Vec<&TensorType> = args.iter().map(|a| g.ty(*a)).collect();
    let ty = op.infer(&tys).map_err(|e| format!("{e} (in {scope})"))?;
    Ok(g.push(op, args, ty, scope))
}
