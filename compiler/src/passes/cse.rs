//! Graph IR → Graph IR with common subexpressions merged: structural hash-consing, one
//! node per (op, attributes, arguments, type). A later duplicate is replaced by the first
//! node and dropped, so its readers read the first one. The merged node keeps the first
//! one's scope. Arguments are compared after merging, so whole repeated chains collapse
//! in one sweep (each call's RoPE tables, MoE statistics computed once per use).
//!
//! Merging never makes a big value live longer: a per-batch value (its type mentions `B`)
//! merges only if the first copy is still read after the duplicate, so the merge
//! frees the duplicate's buffer and extends nothing. Otherwise the first copy would stay
//! alive across everything in between (the backward's transpose of the encoder output,
//! reused by the next decoder layer's backward, held through that layer). Batch-independent
//! values (position tables, masks, MoE statistics, constants) always merge: they are small
//! next to activations, and rebuilding them per layer is what CSE is for.
//!
//! Not merged:
//! - **random ops** (`dropout`, `noise`). In the interpreter their draws are a function of
//!   (seed, key), so two with the same key and input are the same value; but that is a
//!   property of this interpreter's generator, not of the ops, and a backend drawing from
//!   a stateful or offset-based generator would give two different masks. Keeping both
//!   costs one elementwise op; merging could silently change a compiled model.
//! - **recomputed copies** (autodiff's `recompute`, scopes ending in `.recompute`) with
//!   anything but copies of the same scope: they duplicate the forward on purpose, so that
//!   the forward's activations die early; merging them back would undo the memory saving.

use super::{push_node, take_nodes, Remap};
use crate::autodiff::RECOMPUTE_SUFFIX;
use crate::graph::op::Op;
use crate::graph::types::TensorType;
use crate::graph::{Graph, Node, ValueId};
use std::collections::HashMap;

/// What makes two nodes the same value, with their types (compared, not hashed: types
/// are polynomials, costly to hash and to copy on a 12k-node graph).
#[derive(PartialEq, Eq, Hash)]
struct Key {
    /// The op and its attributes, exactly (the text form is lossless; scalars by bits).
    op: String,
    args: Vec<ValueId>,
    /// The scope of a recomputed copy; `None` for everything else.
    recompute: Option<String>,
}

pub fn run(mut graph: Graph) -> Result<Graph, String> {
    // The last reader of each node (`usize::MAX` for what the caller reads).
    let last_read = crate::memory::last_uses(&graph, &crate::memory::kept(&graph));
    let (nodes, mut out) = take_nodes(&mut graph);
    let mut map = Remap::with_capacity(nodes.len());
    // Per new node: the last old node that reads any old node it stands for.
    let mut read_until: Vec<usize> = Vec::with_capacity(nodes.len());
    // The copies of each key, latest last (a later duplicate merges into the latest copy
    // of its type, the one most likely still alive).
    let mut seen: HashMap<Key, Vec<ValueId>> = HashMap::new();
    for (j, node) in nodes.into_iter().enumerate() {
        let args: Vec<ValueId> = node.args.iter().map(|a| map.get(*a)).collect();
        if node.op.is_random() {
            map.push(push_node(&mut out, Node { args, ..node }));
            read_until.push(last_read[j]);
            continue;
        }
        let op = match &node.op {
            Op::Scalar { value } => format!("scalar {:#x}", value.to_bits()),
            op => format!("{}{}", op.name(), op.attrs()),
        };
        let recompute = node.scope.ends_with(RECOMPUTE_SUFFIX).then(|| node.scope.clone());
        let key = Key { op, args, recompute };
        let copies = seen.get(&key).map(Vec::as_slice).unwrap_or_default();
        let first = copies.iter().rev().copied().find(|c| out.nodes[c.0 as usize].ty == node.ty);
        let merge = first.filter(|c| read_until[c.0 as usize] > j || !per_batch(&node.ty));
        let id = match merge {
            Some(first) => {
                let until = &mut read_until[first.0 as usize];
                *until = (*until).max(last_read[j]);
                first
            }
            None => {
                let id = push_node(&mut out, Node { args: key.args.clone(), ..node });
                read_until.push(last_read[j]);
                seen.entry(key).or_default().push(id);
                id
            }
        };
        map.push(id);
    }
    map.finish(&graph, &mut out);
    Ok(out)
}

/// Whether a value's size grows with the batch (`B`), as activations do.
fn per_batch(ty: &TensorType) -> bool {
    ty.shape.iter().any(|d| d.symbols().any(|s| s == "B"))
}
