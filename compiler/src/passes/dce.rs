//! Graph IR → Graph IR without dead nodes: a node survives if an output, aux loss,
//! metric, gradient or update reads it, directly or through other nodes. Survivors keep
//! their order. Every `input` leaf survives too, read or not: the interpreter binds the
//! symbolic dims (`B`, `T`) from the inputs' shapes, and callers feed inputs by name. So
//! does each `param` an update writes to, since the update names it.

use super::{push_node, take_nodes, Remap};
use crate::graph::op::Op;
use crate::graph::{Graph, Node, ValueId};

pub fn run(mut graph: Graph) -> Result<Graph, String> {
    let n = graph.nodes.len();
    let mut live = vec![false; n];
    let roots = graph
        .outputs
        .iter()
        .chain(graph.aux_losses.iter().map(|(_, v)| v))
        .chain(graph.metrics.iter().map(|(_, v)| v))
        .chain(graph.grads.iter().map(|(_, v)| v))
        .chain(graph.updates.iter().map(|(_, v)| v));
    for v in roots {
        live[v.0 as usize] = true;
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        live[i] |= match &node.op {
            Op::Input { .. } => true,
            Op::Param { name } => graph.updates.iter().any(|(u, _)| u == name),
            _ => false,
        };
    }
    // Arguments come before their readers, so one backward sweep finds everything.
    for i in (0..n).rev() {
        if live[i] {
            for a in &graph.nodes[i].args {
                live[a.0 as usize] = true;
            }
        }
    }
    let (nodes, mut out) = take_nodes(&mut graph);
    let mut map = Remap::with_capacity(n);
    for (node, live) in nodes.into_iter().zip(live) {
        // A dead node's slot is never read: nothing live refers to it.
        let id = if live {
            let args = node.args.iter().map(|a| map.get(*a)).collect();
            push_node(&mut out, Node { args, ..node })
        } else {
            ValueId(u32::MAX)
        };
        map.push(id);
    }
    map.finish(&graph, &mut out);
    Ok(out)
}
