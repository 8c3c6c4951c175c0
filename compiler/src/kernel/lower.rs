//! Graph IR (after the pass pipeline, with its fusion groups) → Kernel IR. Every group
//! (and every node in none) becomes one kernel, in an order where each kernel's inputs are
//! made before it: a loop nest (`nest.rs`), a GEMM with the group's elementwise epilogue
//! and its operands' movement folded into strides (`gemm.rs`), or a library routine. A
//! node gets a buffer when something outside its group reads it (another kernel, a return,
//! an update); every other value lives only inside its kernel.

mod gemm;
pub mod index;
mod nest;

use super::{BufId, Buffer, BufferKind, Call, Dim, Index, Kernel, KernelBody, KernelProgram, Routine};
use crate::graph::op::Op;
use crate::graph::{Graph, ValueId};
use nest::Nest;
use std::collections::{HashMap, HashSet};

/// Lowers a graph whose values `returns` the host reads back. Nodes in no fusion group
/// lower one kernel each (what an unfused graph is).
pub fn lower(graph: &Graph, returns: &[(String, ValueId)]) -> Result<KernelProgram, String> {
    let mut program = Lowering::new(graph, returns)?.run()?;
    super::memory_plan::in_place(&mut program);
    super::verify::verify(&program).map_err(|e| format!("the lowered Kernel IR is malformed: {e}"))?;
    Ok(program)
}

/// Whether `nodes` (one part of a group) lower to one loop nest, and if not, why: what
/// fusion asks before it grows a group.
pub fn fits_one_nest(graph: &Graph, nodes: &[usize], outside: &dyn Fn(usize) -> bool) -> Result<(), String> {
    let members: HashSet<usize> = nodes.iter().copied().collect();
    // Pretend every value read from outside has a buffer: only the index structure matters.
    let mut buffers = HashMap::new();
    for &n in nodes {
        for a in &graph.nodes[n].args {
            buffers.insert(a.0 as usize, BufId(0));
        }
    }
    let outputs: Vec<usize> = nodes.iter().copied().filter(|&n| outside(n)).collect();
    nest_of(graph, &members, &buffers, &outputs, &|_| BufId(0)).map(|_| ())
}

/// Whether `nodes` (a group holding the `matmul` node `m`) lower to one GEMM: the
/// operands' movement folded into strided views, the rest an elementwise epilogue.
pub fn fits_gemm(graph: &Graph, m: usize, nodes: &[usize], outside: &dyn Fn(usize) -> bool) -> Result<(), String> {
    let members: HashSet<usize> = nodes.iter().copied().collect();
    // A buffer of its own for each value read from outside, so operands keep their shapes.
    let mut buffers = HashMap::new();
    for &n in nodes {
        for a in &graph.nodes[n].args {
            buffers.insert(a.0 as usize, BufId(a.0));
        }
        buffers.insert(n, BufId(n as u32));
    }
    let outputs: Vec<usize> = nodes.iter().copied().filter(|&n| outside(n)).collect();
    gemm::lower(graph, m, &members, &buffers, &outputs).map(|_| ())
}

/// A kernel's unit: a fusion group, or one node in none.
struct Unit {
    parts: Vec<Vec<usize>>,
}

struct Lowering<'g> {
    g: &'g Graph,
    returns: &'g [(String, ValueId)],
    program: KernelProgram,
    /// The buffer of each leaf and materialised node.
    buffers: HashMap<usize, BufId>,
    units: Vec<Unit>,
    unit_of: Vec<usize>,
    /// Nodes something outside their unit reads.
    materialised: Vec<bool>,
}

impl<'g> Lowering<'g> {
    fn new(g: &'g Graph, returns: &'g [(String, ValueId)]) -> Result<Lowering<'g>, String> {
        let n = g.nodes.len();
        let mut units: Vec<Unit> = Vec::new();
        let mut unit_of = vec![usize::MAX; n];
        for group in &g.groups {
            let parts: Vec<Vec<usize>> = group.parts.iter().map(|p| p.iter().map(|v| v.0 as usize).collect()).collect();
            for &m in parts.iter().flatten() {
                unit_of[m] = units.len();
            }
            units.push(Unit { parts });
        }
        for (i, node) in g.nodes.iter().enumerate() {
            if unit_of[i] == usize::MAX && !node.op.is_leaf() {
                unit_of[i] = units.len();
                units.push(Unit { parts: vec![vec![i]] });
            }
        }
        let mut materialised = vec![false; n];
        for (i, node) in g.nodes.iter().enumerate() {
            for a in &node.args {
                let a = a.0 as usize;
                if !g.nodes[a].op.is_leaf() && unit_of[a] != unit_of[i] {
                    materialised[a] = true;
                }
            }
        }
        for (_, v) in returns.iter().chain(&g.updates) {
            materialised[v.0 as usize] = true;
        }
        let mut me = Lowering {
            g,
            returns,
            program: KernelProgram { dim_defs: g.dim_defs.clone(), ..Default::default() },
            buffers: HashMap::new(),
            units,
            unit_of,
            materialised,
        };
        for (i, node) in g.nodes.iter().enumerate() {
            let kind = match &node.op {
                Op::Input { name } => BufferKind::Input(name.clone()),
                Op::Param { name } => BufferKind::Param(name.clone()),
                _ if me.materialised[i] && !node.op.is_leaf() => BufferKind::Temp,
                _ => continue,
            };
            let b = me.add_buffer(i, kind);
            me.buffers.insert(i, b);
        }
        Ok(me)
    }

    fn add_buffer(&mut self, node: usize, kind: BufferKind) -> BufId {
        let ty = &self.g.nodes[node].ty;
        self.program.buffers.push(Buffer { dtype: ty.dtype, shape: ty.shape.clone(), kind });
        BufId(self.program.buffers.len() as u32 - 1)
    }

    /// The units in an order where each runs after every unit it reads (ties: the one
    /// whose first node comes first).
    fn order(&self) -> Result<Vec<usize>, String> {
        let k = self.units.len();
        let mut succ: Vec<Vec<usize>> = vec![Vec::new(); k];
        let mut indegree = vec![0usize; k];
        for (i, node) in self.g.nodes.iter().enumerate() {
            let u = self.unit_of[i];
            if u == usize::MAX {
                continue;
            }
            for a in &node.args {
                let w = self.unit_of[a.0 as usize];
                if w != usize::MAX && w != u && !succ[w].contains(&u) {
                    succ[w].push(u);
                    indegree[u] += 1;
                }
            }
        }
        let first: Vec<usize> =
            self.units.iter().map(|u| u.parts.iter().flatten().copied().min().unwrap_or(0)).collect();
        let mut ready: std::collections::BTreeSet<(usize, usize)> =
            (0..k).filter(|&u| indegree[u] == 0).map(|u| (first[u], u)).collect();
        let mut out = Vec::with_capacity(k);
        while let Some(&(f, u)) = ready.iter().next() {
            ready.remove(&(f, u));
            out.push(u);
            for &w in &succ[u] {
                indegree[w] -= 1;
                if indegree[w] == 0 {
                    ready.insert((first[w], w));
                }
            }
        }
        if out.len() < k {
            return Err("the fusion groups form a cycle".into());
        }
        Ok(out)
    }

    fn run(mut self) -> Result<KernelProgram, String> {
        for u in self.order()? {
            let parts = std::mem::take(&mut self.units[u].parts);
            // What nothing in this program reads (a metric that `run` does not return).
            if !parts.iter().flatten().any(|&n| self.materialised[n]) {
                continue;
            }
            let kernel = self.unit(&parts)?;
            self.push_kernel(kernel, &parts);
        }
        // What the host reads back, and what persists: buffers (a constant that was never
        // computed by a kernel gets one that a kernel fills).
        for (name, v) in self.returns {
            let b = self.buffer_of(v.0 as usize)?;
            self.program.returns.push((name.clone(), b));
        }
        for (name, v) in &self.g.updates {
            let b = self.buffer_of(v.0 as usize)?;
            if !matches!(&self.program.buffer(b).kind, BufferKind::Param(p) if p == name) {
                self.program.updates.push((name.clone(), b));
            }
        }
        Ok(self.program)
    }

    fn push_kernel(&mut self, body: KernelBody, parts: &[Vec<usize>]) {
        let mut scopes: Vec<&str> = Vec::new();
        for &n in parts.iter().flatten() {
            let s = self.g.nodes[n].scope.as_str();
            if !s.is_empty() && !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        let scope = match scopes.len() {
            0 => String::new(),
            1..=3 => scopes.join(", "),
            k => format!("{}, ... ({k} scopes)", scopes[..2].join(", ")),
        };
        let name = format!("k{}", self.program.kernels.len());
        self.program.kernels.push(Kernel { name, scope, body });
    }

    /// A buffer holding node `n`'s value: its own, or one a small kernel fills (a
    /// constant or index the host reads back, or a library routine's operand).
    fn buffer_of(&mut self, n: usize) -> Result<BufId, String> {
        if let Some(b) = self.buffers.get(&n) {
            return Ok(*b);
        }
        let b = self.add_buffer(n, BufferKind::Temp);
        self.buffers.insert(n, b);
        let members = HashSet::from([n]);
        let nest = nest_of(self.g, &members, &self.buffers, &[n], &|_| b)?;
        self.push_kernel(KernelBody::Loops(vec![nest]), &[vec![n]]);
        Ok(b)
    }

    fn unit(&mut self, parts: &[Vec<usize>]) -> Result<KernelBody, String> {
        let g = self.g;
        let library: Vec<usize> = parts.iter().flatten().copied().filter(|&n| is_library(&g.nodes[n].op)).collect();
        match library.as_slice() {
            [] => {
                let mut nests = Vec::with_capacity(parts.len());
                for part in parts {
                    let members: HashSet<usize> = part.iter().copied().collect();
                    let outputs: Vec<usize> = part.iter().copied().filter(|&n| self.materialised[n]).collect();
                    if outputs.is_empty() {
                        continue;
                    }
                    let buffers = &self.buffers;
                    let nest = nest_of(g, &members, buffers, &outputs, &|n| buffers[&n])
                        .map_err(|why| format!("lowering {}: {why}", describe(g, part)))?;
                    nests.push(nest);
                }
                Ok(KernelBody::Loops(nests))
            }
            [m] if matches!(g.nodes[*m].op, Op::MatMul) && parts.len() == 1 => {
                let members: HashSet<usize> = parts[0].iter().copied().collect();
                let outputs: Vec<usize> = parts[0].iter().copied().filter(|&n| self.materialised[n]).collect();
                let buffers = &self.buffers;
                gemm::lower(g, *m, &members, buffers, &outputs)
                    .map(|gm| KernelBody::Call(Call::Gemm(Box::new(gm))))
                    .map_err(|why| format!("lowering {}: {why}", describe(g, &parts[0])))
            }
            [r] if parts.len() == 1 && parts[0].len() == 1 => self.routine(*r),
            _ => Err(format!("{} mixes library calls with other nodes", describe(g, &parts[0]))),
        }
    }

    fn routine(&mut self, n: usize) -> Result<KernelBody, String> {
        let node = &self.g.nodes[n];
        let routine = match &node.op {
            Op::Attention { causal, window, softcap, scale, has_bias } => Routine::Attention {
                causal: *causal,
                window: *window,
                softcap: *softcap,
                scale: *scale,
                has_bias: *has_bias,
            },
            Op::AttentionGrad { wrt, causal, window, softcap, scale, has_bias } => Routine::AttentionGrad {
                wrt: *wrt,
                causal: *causal,
                window: *window,
                softcap: *softcap,
                scale: *scale,
                has_bias: *has_bias,
            },
            Op::ScatterAdd { axis } => Routine::ScatterAdd { axis: *axis },
            Op::TopK { k, indices } => Routine::TopK { k: *k, indices: *indices },
            Op::Cumsum { axis } => Routine::Cumsum { axis: *axis },
            Op::Lstm { reverse } => Routine::Lstm { reverse: *reverse },
            Op::MoeRoute { k, capacity } => Routine::MoeRoute { k: *k, capacity: capacity.clone() },
            Op::MoeDispatch => Routine::MoeDispatch,
            Op::MoeCombine => Routine::MoeCombine,
            Op::MoeBalance { k } => Routine::MoeBalance { k: *k },
            Op::MoeZLoss => Routine::MoeZLoss,
            Op::MoeLoad { k } => Routine::MoeLoad { k: *k },
            Op::MoeOverflow { k } => Routine::MoeOverflow { k: *k },
            other => return Err(format!("`{}` has no library routine", other.name())),
        };
        let args: Vec<usize> = node.args.iter().map(|a| a.0 as usize).collect();
        let mut bufs = Vec::with_capacity(args.len());
        for a in args {
            bufs.push(self.buffer_of(a)?);
        }
        let out = self.buffer_of_output(n);
        Ok(KernelBody::Call(Call::Routine { routine, args: bufs, out }))
    }

    /// The buffer a library routine writes node `n` into (its own, even when nothing
    /// outside reads it: a routine always writes a whole buffer).
    fn buffer_of_output(&mut self, n: usize) -> BufId {
        if let Some(b) = self.buffers.get(&n) {
            return *b;
        }
        let b = self.add_buffer(n, BufferKind::Temp);
        self.buffers.insert(n, b);
        b
    }
}

/// Library ops: each a kernel of its own (`matmul` a GEMM, which may take an epilogue).
pub fn is_library(op: &Op) -> bool {
    match op {
        Op::MatMul
        | Op::Attention { .. }
        | Op::AttentionGrad { .. }
        | Op::ScatterAdd { .. }
        | Op::TopK { .. }
        | Op::Cumsum { .. }
        | Op::Lstm { .. }
        | Op::MoeRoute { .. }
        | Op::MoeDispatch
        | Op::MoeCombine
        | Op::MoeBalance { .. }
        | Op::MoeZLoss
        | Op::MoeLoad { .. }
        | Op::MoeOverflow { .. } => true,
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Buffer { .. }
        | Op::Scalar { .. }
        | Op::Arange { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Softcap { .. }
        | Op::Cast { .. }
        | Op::Dropout { .. }
        | Op::Noise { .. }
        | Op::Reduce { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Broadcast { .. }
        | Op::Pad { .. }
        | Op::Embedding
        | Op::Gather { .. }
        | Op::OneHot { .. }
        | Op::CrossEntropy { .. } => false,
    }
}

fn describe(g: &Graph, part: &[usize]) -> String {
    let names: Vec<String> = part.iter().take(4).map(|&n| format!("%{n} {}", g.nodes[n].op.name())).collect();
    let more = if part.len() > 4 { format!(" (+{})", part.len() - 4) } else { String::new() };
    format!("the group of {}{more}", names.join(", "))
}

/// The loop nest of one part: its outputs stored (each at the anchor's index, or at the
/// index of the anchor with its reduced axes at 0 or dropped), every member inlined.
fn nest_of(
    g: &Graph,
    members: &HashSet<usize>,
    buffers: &HashMap<usize, BufId>,
    outputs: &[usize],
    buffer: &dyn Fn(usize) -> BufId,
) -> Result<super::LoopNest, String> {
    let anchor_node = *outputs.iter().max_by_key(|&&n| (g.nodes[n].ty.rank(), n)).ok_or("a group with no output")?;
    let anchor = g.nodes[anchor_node].ty.shape.clone();
    let mut nest = Nest::new(g, members, buffers);
    let idx = nest.anchor(&anchor);
    for &o in outputs {
        let shape = &g.nodes[o].ty.shape;
        let text = |s: &[Dim]| format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
        let at = output_index(shape, &anchor, &idx).ok_or_else(|| {
            format!("output %{o} of shape {} does not fit the group's anchor {}", text(shape), text(&anchor))
        })?;
        nest.store(o, buffer(o), at.clone(), at)?;
    }
    nest.finish()
}

/// The index of an output of `shape` within the anchor's index space: the anchor's own
/// where the shapes agree, 0 on the output's size-1 dims, and the anchor's dims it lacks
/// skipped (matched left to right).
fn output_index(shape: &[Dim], anchor: &[Dim], idx: &[Index]) -> Option<Vec<Index>> {
    if shape == anchor {
        return Some(idx.to_vec());
    }
    if shape.len() == anchor.len() {
        return shape
            .iter()
            .zip(anchor)
            .zip(idx)
            .map(|((s, a), i)| if s == a { Some(i.clone()) } else { (s.as_constant() == Some(1)).then(Index::zero) })
            .collect();
    }
    let mut out = Vec::with_capacity(shape.len());
    let mut k = 0;
    for s in shape {
        while k < anchor.len() && anchor[k] != *s {
            k += 1;
        }
        if k == anchor.len() {
            return None;
        }
        out.push(idx[k].clone());
        k += 1;
    }
    Some(out)
}
