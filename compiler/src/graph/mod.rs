//! The Graph IR: SSA values, each made by one node of one `Op`, with a `dtype[dims]`
//! type. Leaves are data inputs, parameters (by checkpoint name) and buffers. The text
//! form (`Display`) is deterministic, for `modelc emit --stage ir` and snapshots:
//! `%7: f32[B, T, 256] = matmul %5, %6  // blocks.0.attn.wq`. `parse` reads it back and
//! `verify` checks a graph's invariants.

pub mod dim;
pub mod op;
pub mod parse;
pub mod types;
pub mod verify;

use op::{Cost, Op};
use std::fmt;
use types::TensorType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub args: Vec<ValueId>,
    pub ty: TensorType,
    /// The block instance that made it (`blocks.0.attn`), for messages and profiles.
    pub scope: String,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub outputs: Vec<ValueId>,
    /// `aux_loss` terms by hierarchical name, added to the objective in training.
    pub aux_losses: Vec<(String, ValueId)>,
    /// `metric` values by hierarchical name, reported in training.
    pub metrics: Vec<(String, ValueId)>,
    /// Dims defined by a formula rather than bound by a signature: MoE capacities.
    pub dim_defs: Vec<DimDef>,
    /// After autodiff: each parameter's gradient, by checkpoint name.
    pub grads: Vec<(String, ValueId)>,
    /// Declared aliases: after a call, the persistent buffer (a `param` leaf of this
    /// name) holds this value. The training step's gradient accumulators and the apply
    /// graph's parameters and optimizer state are updated in place this way.
    pub updates: Vec<(String, ValueId)>,
    /// After fusion: the nodes that run together as one kernel. A node in no group is a
    /// kernel of its own; a group's parts are independent loop nests launched together
    /// (the optimizer's per-parameter updates). Leaves are in no group.
    pub groups: Vec<Group>,
}

/// One fusion group: its nodes, in order, per part.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    pub parts: Vec<Vec<ValueId>>,
}

impl Group {
    pub fn nodes(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.parts.iter().flatten().copied()
    }
}

/// `C0 = ceil(capacity * k * tokens / experts)`: an expert's slots in an MoE layer.
#[derive(Clone, Debug, PartialEq)]
pub struct DimDef {
    pub name: String,
    pub capacity: f64,
    pub k: i64,
    pub tokens: dim::Dim,
    pub experts: dim::Dim,
}

impl DimDef {
    pub fn eval(&self, value: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        let n = self.tokens.eval(value)? as f64;
        let e = self.experts.eval(value)? as f64;
        Some((self.capacity * self.k as f64 * n / e).ceil() as i64)
    }
}

impl fmt::Display for DimDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = ceil({:?} * {} * {} / {})", self.name, self.capacity, self.k, self.tokens, self.experts)
    }
}

impl Graph {
    /// Appends a node whose type was already checked.
    pub fn push(&mut self, op: Op, args: Vec<ValueId>, ty: TensorType, scope: &str) -> ValueId {
        self.nodes.push(Node { op, args, ty, scope: scope.to_string() });
        ValueId(self.nodes.len() as u32 - 1)
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.nodes[v.0 as usize].ty
    }

    /// Evaluates a dim of this graph with the symbols bound by `value`, resolving the
    /// graph's defined dims (MoE capacities) from their formulas.
    pub fn eval_dim(&self, d: &dim::Dim, value: &dyn Fn(&str) -> Option<i64>) -> Option<i128> {
        let defined = |s: &str| -> Option<i64> {
            match self.dim_defs.iter().find(|def| def.name == s) {
                Some(def) => def.eval(value),
                None => value(s),
            }
        };
        d.eval(&defined)
    }

    /// The total cost of the graph, summed over nodes.
    pub fn cost(&self) -> Cost {
        let mut total = Cost { flops: dim::Dim::constant(0), bytes: dim::Dim::constant(0) };
        for n in &self.nodes {
            let args: Vec<&TensorType> = n.args.iter().map(|a| self.ty(*a)).collect();
            let c = n.op.cost(&args, &n.ty);
            total.flops = total.flops.add(&c.flops);
            total.bytes = total.bytes.add(&c.bytes);
        }
        total
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for def in &self.dim_defs {
            writeln!(f, "dim {def}")?;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let args: Vec<String> = n.args.iter().map(|a| format!("%{}", a.0)).collect();
            let args = if args.is_empty() { String::new() } else { format!(" {}", args.join(", ")) };
            let scope = if n.scope.is_empty() { String::new() } else { format!("  // {}", n.scope) };
            writeln!(f, "%{i}: {} = {}{args}{}{scope}", n.ty, n.op.name(), n.op.attrs())?;
        }
        for (name, v) in &self.aux_losses {
            writeln!(f, "aux_loss {name} = %{}", v.0)?;
        }
        for (name, v) in &self.metrics {
            writeln!(f, "metric {name} = %{}", v.0)?;
        }
        for (name, v) in &self.grads {
            writeln!(f, "grad {name} = %{}", v.0)?;
        }
        for (name, v) in &self.updates {
            writeln!(f, "update {name} = %{}", v.0)?;
        }
        for g in &self.groups {
            let parts: Vec<String> =
                g.parts.iter().map(|p| p.iter().map(|v| format!("%{}", v.0)).collect::<Vec<_>>().join(", ")).collect();
            writeln!(f, "group {}", parts.join(" | "))?;
        }
        let outs: Vec<String> = self.outputs.iter().map(|o| format!("%{}", o.0)).collect();
        writeln!(f, "return {}", outs.join(", "))
    }
}
