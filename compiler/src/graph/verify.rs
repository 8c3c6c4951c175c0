//! Graph IR → `Ok` or the first broken invariant, naming the bad node. Runs after every
//! pass in debug builds and tests (`passes::pipeline`), and on every parsed fixture.
//!
//! Invariants: arguments refer to earlier nodes (SSA order, so one forward sweep
//! evaluates the graph); each node's type is what `Op::infer` gives for its arguments'
//! types (leaves declare theirs); outputs, aux losses, metrics, gradients and updates name
//! existing nodes; each update names a `param` leaf of this graph once, with its type.

use super::op::Op;
use super::types::TensorType;
use super::{Graph, ValueId};
use std::collections::HashSet;
use std::fmt;

/// A broken invariant, at a node when one is to blame.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyError {
    pub node: Option<usize>,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for VerifyError {}

/// `%12 (matmul in blocks.0.attn.wq)`: how messages name a node.
fn describe(g: &Graph, i: usize) -> String {
    let n = &g.nodes[i];
    if n.scope.is_empty() {
        format!("%{i} ({})", n.op.name())
    } else {
        format!("%{i} ({} in {})", n.op.name(), n.scope)
    }
}

pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    for (i, node) in g.nodes.iter().enumerate() {
        let bad = |message: String| VerifyError { node: Some(i), message: format!("{}: {message}", describe(g, i)) };
        if let Some(a) = node.args.iter().find(|a| a.0 as usize >= i) {
            return Err(bad(format!("argument %{} is not an earlier node", a.0)));
        }
        match &node.op {
            // Leaves declare their types; a scalar constant may have any dtype.
            Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } | Op::Scalar { .. } if !node.args.is_empty() => {
                return Err(bad(format!("a leaf takes no arguments, found {}", node.args.len())));
            }
            Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } => {}
            Op::Scalar { .. } if node.ty.rank() != 0 => {
                return Err(bad(format!("a scalar has type {}[], found {}", node.ty.dtype.name(), node.ty)));
            }
            Op::Scalar { .. } => {}
            op => {
                let args: Vec<&TensorType> = node.args.iter().map(|a| g.ty(*a)).collect();
                match op.infer(&args) {
                    Ok(ty) if ty == node.ty => {}
                    Ok(ty) => return Err(bad(format!("its type is {}, but its arguments give {ty}", node.ty))),
                    Err(why) => return Err(bad(why)),
                }
            }
        }
    }
    let exists = |what: &str, v: ValueId| -> Result<(), VerifyError> {
        if (v.0 as usize) < g.nodes.len() {
            Ok(())
        } else {
            Err(VerifyError { node: None, message: format!("{what} is %{}, which is not a node", v.0) })
        }
    };
    for o in &g.outputs {
        exists("an output", *o)?;
    }
    let named = [("aux_loss", &g.aux_losses), ("metric", &g.metrics), ("grad", &g.grads), ("update", &g.updates)];
    for (kind, list) in named {
        for (name, v) in list {
            exists(&format!("{kind} `{name}`"), *v)?;
        }
    }
    verify_groups(g)?;
    let mut updated = HashSet::new();
    for (name, v) in &g.updates {
        if !updated.insert(name.as_str()) {
            return Err(VerifyError { node: None, message: format!("`{name}` is updated twice") });
        }
        let param = g.nodes.iter().position(|n| matches!(&n.op, Op::Param { name: p } if p == name));
        let Some(p) = param else {
            return Err(VerifyError { node: None, message: format!("update `{name}` names no `param` of this graph") });
        };
        if g.nodes[p].ty != *g.ty(*v) {
            return Err(VerifyError {
                node: Some(v.0 as usize),
                message: format!(
                    "update `{name}` = {} has type {}, but the parameter is {}",
                    describe(g, v.0 as usize),
                    g.ty(*v),
                    g.nodes[p].ty
                ),
            });
        }
    }
    Ok(())
}

/// Fusion groups: existing non-leaf nodes, each in at most one group, no empty part,
/// and no cycle between groups (each group can run once all it reads is computed).
fn verify_groups(g: &Graph) -> Result<(), VerifyError> {
    let mut group_of = vec![usize::MAX; g.nodes.len()];
    for (gi, group) in g.groups.iter().enumerate() {
        let bad = |node: Option<usize>, m: String| VerifyError { node, message: format!("group {gi}: {m}") };
        if group.parts.is_empty() || group.parts.iter().any(|p| p.is_empty()) {
            return Err(bad(None, "has an empty part".into()));
        }
        for v in group.nodes() {
            let i = v.0 as usize;
            if i >= g.nodes.len() {
                return Err(bad(None, format!("%{i} is not a node")));
            }
            if g.nodes[i].op.is_leaf() {
                return Err(bad(Some(i), format!("{} is a leaf; leaves are in no group", describe(g, i))));
            }
            if group_of[i] != usize::MAX {
                return Err(bad(Some(i), format!("{} is also in group {}", describe(g, i), group_of[i])));
            }
            group_of[i] = gi;
        }
    }
    // The groups (and the kernels of single ungrouped nodes) must form a DAG: each can
    // run once what it reads is computed.
    let n_groups = g.groups.len();
    let unit: Vec<usize> =
        (0..g.nodes.len()).map(|i| if group_of[i] != usize::MAX { group_of[i] } else { n_groups + i }).collect();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n_groups + g.nodes.len()];
    let mut indegree = vec![0usize; n_groups + g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        if node.op.is_leaf() {
            continue;
        }
        for a in &node.args {
            let ai = a.0 as usize;
            if !g.nodes[ai].op.is_leaf() && unit[ai] != unit[i] {
                edges[unit[ai]].push(unit[i]);
                indegree[unit[i]] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..indegree.len()).filter(|&u| indegree[u] == 0).collect();
    let mut done = 0;
    while let Some(u) = ready.pop() {
        done += 1;
        for &w in &edges[u] {
            indegree[w] -= 1;
            if indegree[w] == 0 {
                ready.push(w);
            }
        }
    }
    if done < indegree.len() {
        let stuck = (0..n_groups).find(|&u| indegree[u] > 0).unwrap_or(0);
        return Err(VerifyError {
            node: None,
            message: format!("group {stuck} is on a cycle: it reads a value that depends on its own members"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::parse::parse;

    fn check(text: &str) -> Result<(), String> {
        verify(&parse(text).expect("parses")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_well_formed_graph_verifies() {
        let text = "\
%0: f32[B, 4] = input \"x\"
%1: f32[4] = param \"w\"
%2: f32[B, 4] = mul %0, %1  // layer
%3: bf16[] = scalar 2
%4: f32[] = sum %2 axes=[0, 1] keepdim=false
update w = %1
return %4
";
        assert_eq!(check(text), Ok(()));
    }

    #[test]
    fn each_invariant_names_the_bad_node() {
        let cases = [
            // A wrong type.
            (
                "%0: f32[4] = input \"x\"\n%1: f32[5] = neg %0  // layer\nreturn %1\n",
                "%1 (neg in layer): its type is f32[5], but its arguments give f32[4]",
            ),
            // Use before definition.
            (
                "%0: f32[4] = neg %1\n%1: f32[4] = input \"x\"\nreturn %0\n",
                "%0 (neg): argument %1 is not an earlier node",
            ),
            ("%0: f32[4] = neg %0\nreturn %0\n", "argument %0 is not an earlier node"),
            // The shape rule's own message.
            (
                "%0: f32[4] = input \"x\"\n%1: f32[4] = matmul %0, %0\nreturn %1\n",
                "%1 (matmul): `@` needs two matrices",
            ),
            ("%0: f32[4] = scalar 1\nreturn %0\n", "%0 (scalar): a scalar has type f32[], found f32[4]"),
            ("%0: f32[] = scalar 1\n%1: f32[] = param %0 \"w\"\nreturn %1\n", "a leaf takes no arguments"),
            // Dangling references.
            ("%0: f32[] = scalar 1\nreturn %3\n", "an output is %3"),
            ("%0: f32[] = scalar 1\ngrad w = %1\nreturn %0\n", "grad `w` is %1"),
            ("%0: f32[] = scalar 1\nmetric m = %9\nreturn %0\n", "metric `m` is %9"),
            ("%0: f32[] = scalar 1\naux_loss z = %9\nreturn %0\n", "aux_loss `z` is %9"),
            ("%0: f32[] = scalar 1\nupdate w = %9\nreturn %0\n", "update `w` is %9"),
            // Updates.
            ("%0: f32[] = scalar 1\nupdate w = %0\nreturn %0\n", "update `w` names no `param`"),
            (
                "%0: f32[4] = param \"w\"\n%1: f32[] = scalar 1\nupdate w = %1\nreturn %0\n",
                "has type f32[], but the parameter is f32[4]",
            ),
            ("%0: f32[] = param \"w\"\nupdate w = %0\nupdate w = %0\nreturn %0\n", "`w` is updated twice"),
        ];
        for (text, want) in cases {
            let got = check(text).expect_err(text);
            assert!(got.contains(want), "{text}\ngot: {got}\nwant: {want}");
        }
    }
}
