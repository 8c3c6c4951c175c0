//! Graph IR → Graph IR rewrites. Each pass is one module and keeps the graph's meaning.
//!
//! `precision` (mixed precision, between the objective and autodiff) and `kv_cache` (the
//! decode step, for `generate`) take arguments and run where `lower` and the driver call
//! them. The optimisation pipeline is the `PASSES` table: `lower` runs it last (after
//! autodiff for training, after precision otherwise), `modelc emit --after PASS` prints
//! the IR after any of its passes. Its passes change no result: the interpreter gives
//! bit-identical values on the optimised graph, in f64 and at native precision.

pub mod cse;
pub mod dce;
pub mod fusion;
pub mod kv_cache;
pub mod precision;
pub mod simplify;

use crate::graph::verify::verify;
use crate::graph::{Graph, Node, ValueId};

/// One pass of the pipeline.
pub struct Pass {
    /// Its name for `--after` and fixture headers (`; pass: cse`).
    pub name: &'static str,
    pub description: &'static str,
    pub run: fn(Graph) -> Result<Graph, String>,
}

/// The pipeline, in order. Simplification first (it turns chains into shared values),
/// then CSE (which leaves the duplicates it merged unread), then DCE, then fusion (which
/// changes no node, only groups them).
pub const PASSES: &[Pass] = &[
    Pass {
        name: "simplify",
        description:
            "constant folding, exact identities (x*1, x/1, x+(-0), x-0, x*0 where exact), movement and cast chains",
        run: simplify::run,
    },
    Pass {
        name: "cse",
        description: "common subexpressions: one node per op, attributes, arguments and type (random ops excepted)",
        run: cse::run,
    },
    Pass {
        name: "dce",
        description: "dead code: nodes no output, loss, metric, gradient or update reads (inputs are kept)",
        run: dce::run,
    },
    Pass {
        name: "fusion",
        description: "fusion groups: the nodes that run as one kernel (elementwise chains, reductions with their producers and row-wise consumers, GEMM epilogues, the optimizer's updates)",
        run: fusion::run,
    },
];

/// The pass called `name`.
pub fn pass(name: &str) -> Option<&'static Pass> {
    PASSES.iter().find(|p| p.name == name)
}

/// Runs the pipeline; `verify` checks the graph before and after every pass in debug
/// builds (and so in tests).
pub fn pipeline(graph: Graph) -> Result<Graph, String> {
    pipeline_observed(graph, &mut |_, _| {})
}

/// `pipeline`, showing `after` the graph after each pass (`--print-after-all`).
pub fn pipeline_observed(mut graph: Graph, after: &mut dyn FnMut(&Pass, &Graph)) -> Result<Graph, String> {
    // Groups name nodes by position, which the passes move: fusion makes them anew.
    graph.groups.clear();
    if cfg!(debug_assertions) {
        verify(&graph).map_err(|e| format!("the graph entering the pass pipeline is malformed: {e}"))?;
    }
    for p in PASSES {
        graph = (p.run)(graph)?;
        if cfg!(debug_assertions) {
            verify(&graph).map_err(|e| format!("pass `{}` broke the graph: {e}", p.name))?;
        }
        after(p, &graph);
    }
    Ok(graph)
}

/// Runs one pass and verifies its result, in every build (the pass fixtures' driver).
pub fn run_verified(p: &Pass, graph: Graph) -> Result<Graph, String> {
    let out = (p.run)(graph)?;
    verify(&out).map_err(|e| format!("pass `{}` broke the graph: {e}", p.name))?;
    Ok(out)
}

/// Takes a graph's nodes out, leaving its named and returned values; and the empty graph
/// (with the same dim defs) a pass rebuilds into. Passes move nodes rather than clone them:
/// a Llama-2-7B training graph has 12k nodes, and `inspect` runs the pipeline on it.
pub(crate) fn take_nodes(graph: &mut Graph) -> (Vec<Node>, Graph) {
    let out = Graph { dim_defs: std::mem::take(&mut graph.dim_defs), ..Graph::default() };
    (std::mem::take(&mut graph.nodes), out)
}

/// Appends a node as it is.
pub(crate) fn push_node(g: &mut Graph, node: Node) -> ValueId {
    g.nodes.push(node);
    ValueId(g.nodes.len() as u32 - 1)
}

/// Where every pass keeps a value it rewrites: the old id's new id.
pub(crate) struct Remap(Vec<ValueId>);

impl Remap {
    pub(crate) fn with_capacity(n: usize) -> Remap {
        Remap(Vec::with_capacity(n))
    }

    pub(crate) fn push(&mut self, v: ValueId) {
        self.0.push(v);
    }

    pub(crate) fn get(&self, v: ValueId) -> ValueId {
        self.0[v.0 as usize]
    }

    /// The named and returned values of `old`, carried over to `new`.
    pub(crate) fn finish(&self, old: &Graph, new: &mut Graph) {
        let named = |list: &[(String, ValueId)]| -> Vec<(String, ValueId)> {
            list.iter().map(|(n, v)| (n.clone(), self.get(*v))).collect()
        };
        new.outputs = old.outputs.iter().map(|v| self.get(*v)).collect();
        new.aux_losses = named(&old.aux_losses);
        new.metrics = named(&old.metrics);
        new.grads = named(&old.grads);
        new.updates = named(&old.updates);
    }
}
