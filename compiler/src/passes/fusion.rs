//! Graph IR → the same graph with fusion groups: which nodes run together as one kernel.
//! Nodes are visited from the last to the first; a node joins the group of its consumers
//! when they are all in one group and the group still lowers to one kernel with it
//! (asked of the Kernel IR lowering, which knows how each op reads its arguments). So
//! elementwise chains fuse, a reduction fuses with its producers and with the consumers
//! that read it per row (norm statistics and normalisation, softmax, log-softmax with the
//! loss), a `matmul` takes its elementwise consumers as an epilogue (bias, activation,
//! residual, scale) and its operands' movement as strides, and the backward's matching
//! patterns fuse the same way. Then the optimizer's per-parameter updates, which read
//! only parameters, state and scalars, become one horizontal group: the whole update in
//! one kernel. A node stays out of its consumers' group when they are in several groups
//! (its value is stored and read by each), when it is a library call, or when the
//! lowering refuses; `MODELC_DEBUG=3` prints one line per group with why it stopped.
//! Decisions depend only on the graph: deterministic.

use crate::graph::op::Op;
use crate::graph::{Graph, Group, ValueId};
use crate::kernel::lower::{fits_gemm, fits_one_nest, is_library};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Loop,
    /// Holds a `matmul` (the node).
    Gemm(usize),
    /// A library routine, alone.
    Routine,
}

struct Building {
    nodes: Vec<usize>,
    kind: Kind,
    /// Why producers stayed out, counted.
    stops: BTreeMap<String, usize>,
}

pub fn run(mut graph: Graph) -> Result<Graph, String> {
    let n = graph.nodes.len();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in graph.nodes.iter().enumerate() {
        for a in &node.args {
            if !consumers[a.0 as usize].contains(&i) {
                consumers[a.0 as usize].push(i);
            }
        }
    }
    let mut external = vec![false; n];
    let named = graph.grads.iter().chain(&graph.updates).chain(&graph.metrics).chain(&graph.aux_losses);
    for v in graph.outputs.iter().chain(named.map(|(_, v)| v)) {
        external[v.0 as usize] = true;
    }
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    let mut groups: Vec<Building> = Vec::new();
    for i in (0..n).rev() {
        let op = &graph.nodes[i].op;
        if op.is_leaf() {
            continue;
        }
        let target = absorbing_group(&graph, i, &consumers, &group_of, &external, &groups);
        let joined = match target {
            Ok(g) => {
                let mut trial = groups[g].nodes.clone();
                trial.push(i);
                trial.sort_unstable();
                let outside = |m: usize| external[m] || consumers[m].iter().any(|c| group_of[*c] != Some(g) && *c != i);
                let kind = match (groups[g].kind, op) {
                    (Kind::Routine, _) => Err("its consumer is a library routine".to_string()),
                    (Kind::Loop, Op::MatMul) => fits_gemm(&graph, i, &trial, &outside).map(|_| Kind::Gemm(i)),
                    (Kind::Loop, _) if is_library(op) => Err(format!("`{}` is a library call", op.name())),
                    (Kind::Loop, _) => fits_one_nest(&graph, &trial, &outside).map(|_| Kind::Loop),
                    (Kind::Gemm(_), Op::MatMul) => Err("its consumer's kernel already holds a GEMM".to_string()),
                    (Kind::Gemm(_), _) if is_library(op) => Err(format!("`{}` is a library call", op.name())),
                    (Kind::Gemm(m), _) => fits_gemm(&graph, m, &trial, &outside).map(|_| Kind::Gemm(m)),
                };
                match kind {
                    Ok(kind) => {
                        groups[g].nodes.push(i);
                        groups[g].kind = kind;
                        group_of[i] = Some(g);
                        true
                    }
                    Err(why) => {
                        *groups[g].stops.entry(format!("%{i} {}: {why}", op.name())).or_insert(0) += 1;
                        false
                    }
                }
            }
            Err(why) => {
                for c in &consumers[i] {
                    if let Some(g) = group_of[*c] {
                        *groups[g].stops.entry(format!("%{i} {}: {why}", op.name())).or_insert(0) += 1;
                    }
                }
                false
            }
        };
        if !joined {
            let kind = if matches!(op, Op::MatMul) {
                Kind::Gemm(i)
            } else if is_library(op) {
                Kind::Routine
            } else {
                Kind::Loop
            };
            group_of[i] = Some(groups.len());
            groups.push(Building { nodes: vec![i], kind, stops: BTreeMap::new() });
        }
    }
    merge_stored_edges(&graph, &mut groups, &mut group_of, &consumers, &external);
    let horizontal = horizontal(&graph, &groups, &group_of, &consumers, &external);
    graph.groups = Vec::new();
    let mut parts_of_update: Vec<Vec<ValueId>> = Vec::new();
    for (gi, g) in groups.iter().enumerate().filter(|(_, g)| !g.nodes.is_empty()) {
        let mut nodes = g.nodes.clone();
        nodes.sort_unstable();
        let part: Vec<ValueId> = nodes.iter().map(|&m| ValueId(m as u32)).collect();
        if horizontal.contains(&gi) {
            parts_of_update.push(part);
        } else if part.len() > 1 {
            graph.groups.push(Group { parts: vec![part] });
        }
    }
    if parts_of_update.len() > 1 {
        parts_of_update.sort();
        graph.groups.push(Group { parts: parts_of_update });
    } else if let Some(p) = parts_of_update.pop().filter(|p| p.len() > 1) {
        graph.groups.push(Group { parts: vec![p] });
    }
    graph.groups.sort_by_key(|g| g.nodes().map(|v| v.0).min());
    if debug_level() >= 3 {
        explain(&graph, &groups, horizontal.len());
    }
    Ok(graph)
}

/// The group `i` may join: the one holding every consumer of `i`; or, when its consumers
/// are in several groups, the one that runs first, with `i` stored there for the others
/// (a forward value the backward saves), unless that one reads another of them (a cycle).
fn absorbing_group(
    graph: &Graph,
    i: usize,
    consumers: &[Vec<usize>],
    group_of: &[Option<usize>],
    external: &[bool],
    groups: &[Building],
) -> Result<usize, String> {
    let cs = &consumers[i];
    if cs.is_empty() {
        return Err("nothing reads it inside the program".into());
    }
    let mut kernels: Vec<usize> = cs.iter().filter_map(|c| group_of[*c]).collect();
    kernels.sort_unstable();
    kernels.dedup();
    let first_node = |g: usize| groups[g].nodes.iter().copied().min().unwrap_or(usize::MAX);
    let target = *kernels.iter().min_by_key(|&&g| first_node(g)).ok_or("its consumer has no group")?;
    if external[i] && groups[target].kind != Kind::Loop {
        return Err("the host reads it and its consumer is a library call".into());
    }
    if kernels.len() > 1 {
        if groups[target].kind == Kind::Routine {
            return Err(format!("{} kernels read it, the first a library routine", kernels.len()));
        }
        // The others must not be needed before the target: no member of theirs may be an
        // ancestor of the target's members (only nodes after `i` can be).
        let others: std::collections::HashSet<usize> =
            kernels.iter().filter(|&&g| g != target).flat_map(|&g| groups[g].nodes.iter().copied()).collect();
        let mut stack: Vec<usize> = groups[target].nodes.clone();
        let mut seen = std::collections::HashSet::new();
        while let Some(m) = stack.pop() {
            if m <= i || !seen.insert(m) {
                continue;
            }
            if others.contains(&m) {
                return Err(format!("{} kernels read it, and the first reads another", kernels.len()));
            }
            stack.extend(graph.nodes[m].args.iter().map(|a| a.0 as usize));
        }
    }
    Ok(target)
}

/// Merges a group into a group that reads what it stores, when the two lower as one
/// kernel and no third group has to run between them: siblings that the reverse walk
/// split (a value stored for an update and read by the next computation), so the value
/// stays in registers. Groups that became empty are left so, in place.
fn merge_stored_edges(
    graph: &Graph,
    groups: &mut [Building],
    group_of: &mut [Option<usize>],
    consumers: &[Vec<usize>],
    external: &[bool],
) {
    let mut failed: std::collections::HashSet<(usize, usize)> = std::collections::HashSet::new();
    loop {
        // The group graph: who reads whom.
        let k = groups.len();
        let mut succ: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); k];
        for (i, node) in graph.nodes.iter().enumerate() {
            let Some(gi) = group_of[i] else { continue };
            for a in &node.args {
                if let Some(ga) = group_of[a.0 as usize] {
                    if ga != gi {
                        succ[ga].insert(gi);
                    }
                }
            }
        }
        let mut merged = false;
        'pairs: for a in 0..k {
            if groups[a].nodes.is_empty() || groups[a].kind == Kind::Routine {
                continue;
            }
            for &b in &succ[a] {
                if failed.contains(&(a, b)) || groups[b].kind == Kind::Routine {
                    continue;
                }
                // No third group on a path from `a` to `b`.
                let mut stack: Vec<usize> = succ[a].iter().copied().filter(|&c| c != b).collect();
                let mut seen = std::collections::HashSet::new();
                let mut between = false;
                while let Some(c) = stack.pop() {
                    if !seen.insert(c) {
                        continue;
                    }
                    if succ[c].contains(&b) {
                        between = true;
                        break;
                    }
                    stack.extend(succ[c].iter().copied().filter(|&d| d != b));
                }
                // Nor any kernel of the graph's order between them: the merged kernel runs
                // where `a` ran, so `b`'s work would move earlier past it and its results
                // live longer (a recomputed segment pulled back into the forward).
                let (a_last, b_first) = (
                    groups[a].nodes.iter().copied().max().unwrap_or(0),
                    groups[b].nodes.iter().copied().min().unwrap_or(0),
                );
                if b_first > a_last {
                    between |= (a_last + 1..b_first)
                        .any(|m| group_of[m].is_some_and(|g| g != a && g != b) && !graph.nodes[m].op.is_leaf());
                }
                if between {
                    failed.insert((a, b));
                    continue;
                }
                let mut union: Vec<usize> = groups[a].nodes.iter().chain(&groups[b].nodes).copied().collect();
                union.sort_unstable();
                let inside = |m: usize| union.binary_search(&m).is_ok();
                let outside = |m: usize| external[m] || consumers[m].iter().any(|c| !inside(*c));
                let kind = match (groups[a].kind, groups[b].kind) {
                    (Kind::Loop, Kind::Loop) => fits_one_nest(graph, &union, &outside).map(|_| Kind::Loop),
                    (Kind::Gemm(m), Kind::Loop) | (Kind::Loop, Kind::Gemm(m)) => {
                        fits_gemm(graph, m, &union, &outside).map(|_| Kind::Gemm(m))
                    }
                    _ => Err(String::new()),
                };
                match kind {
                    Ok(kind) => {
                        let moved = std::mem::take(&mut groups[a].nodes);
                        for &m in &moved {
                            group_of[m] = Some(b);
                        }
                        groups[b].nodes.extend(moved);
                        groups[b].kind = kind;
                        let stops = std::mem::take(&mut groups[a].stops);
                        groups[b].stops.extend(stops);
                        failed.retain(|&(x, y)| x != b && y != b);
                        merged = true;
                        break 'pairs;
                    }
                    Err(_) => {
                        failed.insert((a, b));
                    }
                }
            }
        }
        if !merged {
            break;
        }
    }
}

/// The groups that only compute what updates persistent buffers, from leaves and scalars:
/// the optimizer's per-parameter updates, launched as one kernel.
fn horizontal(
    graph: &Graph,
    groups: &[Building],
    group_of: &[Option<usize>],
    consumers: &[Vec<usize>],
    external: &[bool],
) -> Vec<usize> {
    let updated: std::collections::HashSet<usize> = graph.updates.iter().map(|(_, v)| v.0 as usize).collect();
    let reads_outputs = graph.outputs.iter().chain(graph.metrics.iter().map(|(_, v)| v)).map(|v| v.0 as usize);
    let returned: std::collections::HashSet<usize> = reads_outputs.collect();
    (0..groups.len())
        .filter(|&gi| {
            let g = &groups[gi];
            if g.kind != Kind::Loop || g.nodes.is_empty() {
                return false;
            }
            let mut stores_an_update = false;
            for &m in &g.nodes {
                let node = &graph.nodes[m];
                if matches!(
                    node.op,
                    Op::Reduce { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::CrossEntropy { .. }
                ) {
                    return false;
                }
                let read_elsewhere = consumers[m].iter().any(|c| group_of[*c] != Some(gi));
                if read_elsewhere || returned.contains(&m) {
                    return false;
                }
                if external[m] && !updated.contains(&m) {
                    return false;
                }
                stores_an_update |= updated.contains(&m);
                for a in &node.args {
                    let a = a.0 as usize;
                    let inside = group_of[a] == Some(gi);
                    if !inside && !graph.nodes[a].op.is_leaf() && graph.nodes[a].ty.rank() > 0 {
                        return false;
                    }
                }
            }
            stores_an_update
        })
        .collect()
}

/// `MODELC_DEBUG`, the level of detail of what the compiler says it does (3: fusion).
pub fn debug_level() -> u32 {
    std::env::var("MODELC_DEBUG").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn explain(graph: &Graph, groups: &[Building], horizontal: usize) {
    for g in groups.iter().filter(|g| g.nodes.len() > 1 || (!g.nodes.is_empty() && !g.stops.is_empty())) {
        let mut nodes = g.nodes.clone();
        nodes.sort_unstable();
        let mut ops: BTreeMap<String, usize> = BTreeMap::new();
        for &m in &nodes {
            *ops.entry(graph.nodes[m].op.name()).or_insert(0) += 1;
        }
        let what: Vec<String> = ops.iter().map(|(o, c)| if *c > 1 { format!("{c} {o}") } else { o.clone() }).collect();
        let kind = match g.kind {
            Kind::Loop => "loop nest",
            Kind::Gemm(_) => "GEMM with epilogue",
            Kind::Routine => "library routine",
        };
        let stops: Vec<String> =
            g.stops.iter().map(|(why, c)| if *c > 1 { format!("{why} (x{c})") } else { why.clone() }).collect();
        eprintln!(
            "fusion: %{}..%{} ({} nodes, {kind}: {}) fused{}",
            nodes[0],
            nodes[nodes.len() - 1],
            nodes.len(),
            what.join(", "),
            if stops.is_empty() { String::new() } else { format!("; stopped at {}", stops.join("; ")) }
        );
    }
    if horizontal > 1 {
        eprintln!("fusion: {horizontal} parameter updates launched as one kernel (they read only leaves and scalars)");
    }
}
