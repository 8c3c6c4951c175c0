//! Activation memory from liveness: a value lives from the node that makes it to the last
//! node that reads it (or to the end, for what the caller keeps: outputs, gradients,
//! losses). The interpreter frees values at their last use and measures its peak; `inspect`
//! replays the same schedule over a graph's types to predict it. Parameters and inputs are
//! the caller's buffers, and the kept values are the gradient buffers (`inspect` counts
//! them as gradients): neither is counted as activations.

use crate::graph::op::Op;
use crate::graph::{Graph, ValueId};

/// For each node, the index of the last node that reads it; `usize::MAX` for the values
/// that must survive the run (`keep`), and the node's own index for unread values.
pub fn last_uses(graph: &Graph, keep: &[ValueId]) -> Vec<usize> {
    let mut last: Vec<usize> = (0..graph.nodes.len()).collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        for a in &node.args {
            last[a.0 as usize] = last[a.0 as usize].max(i);
        }
    }
    for k in keep {
        last[k.0 as usize] = usize::MAX;
    }
    last
}

/// The values a training run reads after the graph has run: outputs, gradients, auxiliary
/// losses and metrics.
pub fn kept(graph: &Graph) -> Vec<ValueId> {
    let mut keep = graph.outputs.clone();
    keep.extend(graph.grads.iter().map(|(_, v)| *v));
    keep.extend(graph.updates.iter().map(|(_, v)| *v));
    keep.extend(graph.aux_losses.iter().chain(&graph.metrics).map(|(_, v)| *v));
    keep
}

/// Whether a node's value counts as activation memory (not a parameter or input buffer).
pub fn is_activation(op: &Op) -> bool {
    !op.is_external()
}

/// For each node, the values whose last use it is (from `last_uses`): what is freed once
/// it has run.
pub fn frees_after(last: &[usize]) -> Vec<Vec<usize>> {
    let mut frees: Vec<Vec<usize>> = vec![Vec::new(); last.len()];
    for (v, &l) in last.iter().enumerate() {
        if l != usize::MAX {
            frees[l].push(v);
        }
    }
    frees
}

/// The peak of live activation bytes when `graph` runs in order and frees each value after
/// its last use; `bytes[i]` is node `i`'s size.
pub fn peak_bytes(graph: &Graph, bytes: &[u64], keep: &[ValueId]) -> u64 {
    let last = last_uses(graph, keep);
    let frees = frees_after(&last);
    let (mut live, mut peak) = (0u64, 0u64);
    for (i, node) in graph.nodes.iter().enumerate() {
        if is_activation(&node.op) && last[i] != usize::MAX {
            live = live.saturating_add(bytes[i]);
        }
        peak = peak.max(live);
        for &v in &frees[i] {
            if is_activation(&graph.nodes[v].op) {
                live = live.saturating_sub(bytes[v]);
            }
        }
    }
    peak
}
