//! Graph IR → Graph IR with common subexpressions merged: structural hash-consing, one
//! node per (op, attributes, arguments, type). A later duplicate is replaced by the first
//! node and dropped, so its readers read the first one. The merged node keeps the first
//! one's scope. Arguments are compared after merging, so whole repeated chains collapse
//! in one sweep (each call's RoPE tables, MoE statistics computed once per use).
//!
//! Not merged:
//! - **random ops** (`dropout`, `noise`). In the interpreter their draws are a function of
//!   (seed, key), so two with the same key and input are the same value; but that is a
//!   property of this interpreter's generator, not of the ops, and a backend drawing from
//!   a stateful or offset-based generator would give two different masks. Keeping both
//!   costs one elementwise op; merging could silently change a compiled model.
//! - **recomputed copies** (autodiff's `recompute`, scopes ending in `.recompute`) with
//!   anything outside their segment: they duplicate the forward on purpose, so that the
//!   forward's activations die early; merging them back would undo the memory saving.

use super::Remap;
use crate::autodiff::RECOMPUTE_SUFFIX;
use crate::graph::op::Op;
use crate::graph::types::TensorType;
use crate::graph::{Graph, ValueId};
use std::collections::HashMap;

/// What makes two nodes the same value.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    /// The op and its attributes, exactly (the text form is lossless; scalars by bits).
    op: String,
    args: Vec<ValueId>,
    ty: TensorType,
    /// The scope of a recomputed copy; `None` for everything else.
    recompute: Option<String>,
}

pub fn run(graph: Graph) -> Result<Graph, String> {
    let mut out = Graph { dim_defs: graph.dim_defs.clone(), ..Graph::default() };
    let mut map = Remap::with_capacity(graph.nodes.len());
    let mut seen: HashMap<Key, ValueId> = HashMap::new();
    for node in &graph.nodes {
        let args: Vec<ValueId> = node.args.iter().map(|a| map.get(*a)).collect();
        if node.op.is_random() {
            map.push(out.push(node.op.clone(), args, node.ty.clone(), &node.scope));
            continue;
        }
        let op = match &node.op {
            Op::Scalar { value } => format!("scalar {:#x}", value.to_bits()),
            op => format!("{}{}", op.name(), op.attrs()),
        };
        let recompute = node.scope.ends_with(RECOMPUTE_SUFFIX).then(|| node.scope.clone());
        let key = Key { op, args, ty: node.ty.clone(), recompute };
        let id = match seen.get(&key) {
            Some(&first) => first,
            None => {
                let id = out.push(node.op.clone(), key.args.clone(), node.ty.clone(), &node.scope);
                seen.insert(key, id);
                id
            }
        };
        map.push(id);
    }
    map.finish(&graph, &mut out);
    Ok(out)
}
