//! Instance tree + Graph IR → the `modelc inspect` report: parameters per block as a
//! tree (counts, shares, doc lines) with the exact total; FLOPs from the IR's op costs
//! evaluated at the workload's batch and sequence (the backward's from the training
//! graph after the pass pipeline); memory for parameters, gradients,
//! optimizer state and activations.

use crate::elab::instance::{Instance, Member};
use crate::elab::value::Value;
use crate::graph::op::Op;
use crate::graph::Graph;
use crate::Workload;
use modelc_grammar::ast::CopiesKind;
use modelc_runtime::optim::Kind;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub name: String,
    /// The block's name, or `param` for a learned tensor.
    pub kind: String,
    /// `repeat` or `stack` copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies: Option<u64>,
    /// Learned parameters in this node, all copies included.
    pub params: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Node>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub args: serde_json::Map<String, serde_json::Value>,
    pub params: Params,
    pub workload: Workload,
    pub flops: Flops,
    pub memory: Memory,
}

/// FLOPs counted from the Graph IR's op costs (not `6N`).
#[derive(Clone, Debug, Serialize)]
pub struct Flops {
    pub forward_per_token: u64,
    pub forward_per_step: u64,
    /// The `attention` nodes' share of the forward pass.
    pub attention_per_step: u64,
    /// Backward: the op costs of the training graph's backward nodes (after the pass
    /// pipeline), those the loss, aux losses and metrics do not depend on. Frozen
    /// parameters get no weight gradient, recomputed segments count here. `None` when the
    /// model has no training graph (its objective cannot be built).
    pub backward_per_step: Option<u64>,
    /// The optimizer's update, per parameter by optimizer (AdamW 12, SGD 2 or 3 with
    /// momentum, Adafactor 10).
    pub optimizer_per_step: u64,
    /// Forward + backward + optimizer.
    pub train_step: u64,
    pub train_step_per_token: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub params_bytes: u64,
    pub grads_bytes: u64,
    pub optimizer_bytes: u64,
    /// Every forward value kept for the backward pass, without buffer reuse or
    /// recomputation: an upper bound until memory planning exists.
    pub activations_bytes: u64,
    /// The peak of live activations over one training step when each value is freed after
    /// its last use (what the interpreter measures), with the recipe's `recompute`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activations_peak_bytes: Option<u64>,
    /// The same peak without `recompute`, when the recipe sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activations_peak_bytes_without_recompute: Option<u64>,
    /// The training step's temporaries under the Kernel IR memory plan (fused kernels,
    /// buffers reused by liveness, updates in place): the peak of live bytes, which the
    /// Kernel IR executor measures, and the sum of every temporary without reuse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_plan: Option<KernelPlan>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelPlan {
    pub kernels: usize,
    pub peak_bytes: u64,
    pub arena_bytes: u64,
    pub unplanned_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub total: u64,
    /// What the recipe trains (`adapter`, `trainable`); the rest is frozen.
    pub trainable: u64,
    pub frozen: u64,
    pub tree: Vec<Node>,
}

pub fn report(instance: &Instance, graph: &Graph, workload: Workload) -> Report {
    let args = instance.args.iter().map(|(k, v)| (k.clone(), json(v))).collect();
    let total = instance.param_count();
    let mut trainable = 0u64;
    instance.for_each_param("", &[], &mut |name, shape| {
        if workload.is_trainable(name) {
            trainable = trainable.saturating_add(shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64)));
        }
    });
    // `B` is the batch; every other signature symbol (`T`, `S`) is the sequence length.
    let (batch, seq) = (workload.batch, workload.seq);
    let bind = move |s: &str| Some(if s == "B" { batch } else { seq });
    let eval = |d: &crate::graph::dim::Dim| graph.eval_dim(d, &bind).unwrap_or(0).max(0) as u64;
    let (mut forward, mut attention, mut activations) = (0u64, 0u64, 0u64);
    for n in &graph.nodes {
        let args: Vec<&crate::graph::types::TensorType> = n.args.iter().map(|a| graph.ty(*a)).collect();
        let cost = n.op.cost(&args, &n.ty);
        let flops = eval(&cost.flops);
        forward = forward.saturating_add(flops);
        if matches!(n.op, Op::Attention { .. }) {
            attention = attention.saturating_add(flops);
        }
        // The caller's buffers, constants and views of other values take no memory of their own.
        if !(n.op.is_external() || n.op.is_view() || matches!(n.op, Op::Scalar { .. })) {
            activations = activations.saturating_add(eval(&n.ty.bytes()));
        }
    }
    let tokens = batch.saturating_mul(seq).max(1) as u64;
    let mixed = workload.recipe.precision.compute().is_some();
    // f32 parameters, plus a compute copy in 2 bytes under mixed precision.
    let params_bytes = total.saturating_mul(if mixed { 6 } else { 4 });
    // Frozen parameters have no gradient and no optimizer state.
    let grads_bytes = trainable.saturating_mul(if mixed { 2 } else { 4 });
    let optimizer_bytes = optimizer_bytes(instance, &workload);
    // The training graph (objective, precision, backward, pass pipeline), built once.
    let training = crate::lower(graph.clone(), &workload, crate::Lowering::Training).ok();
    let backward = training.as_ref().map(|g| backward_flops(g, &eval));
    // Liveness over the training graph at this workload. Only for a recipe's objective:
    // without one there is no training step to measure.
    let peak = |g: &Graph| {
        let sizes: Vec<u64> =
            g.nodes.iter().map(|n| g.eval_dim(&n.ty.bytes(), &bind).unwrap_or(0).max(0) as u64).collect();
        crate::memory::peak_bytes(g, &sizes, &crate::memory::kept(g))
    };
    let has_recipe = !workload.recipe.name.is_empty();
    let activations_peak_bytes = training.as_ref().filter(|_| has_recipe).map(peak);
    let activations_peak_bytes_without_recompute =
        workload.recipe.recompute.as_ref().filter(|_| has_recipe).and_then(|_| {
            let mut w = workload.clone();
            w.recipe.recompute = None;
            crate::lower(graph.clone(), &w, crate::Lowering::Training).ok().map(|g| peak(&g))
        });
    let kernel_plan = training.clone().filter(|_| has_recipe).and_then(|g| {
        let step = crate::training::step_program(g).ok()?;
        let program = crate::kernel::lower::lower(&step.graph, &step.returns).ok()?;
        let live = crate::kernel::memory_plan::liveness(&program);
        let dim = |d: &crate::graph::dim::Dim| step.graph.eval_dim(d, &bind).and_then(|v| u64::try_from(v).ok());
        let placed = crate::kernel::memory_plan::place(&program, &live, &dim, None);
        Some(KernelPlan {
            kernels: program.kernels.len(),
            peak_bytes: placed.peak,
            arena_bytes: placed.arena,
            unplanned_bytes: placed.unplanned,
        })
    });
    Report {
        model: instance.block_name.clone(),
        args,
        params: Params { total, trainable, frozen: total.saturating_sub(trainable), tree: children(instance, 1, &[]) },
        flops: {
            let per_param = match workload.recipe.optimizer.kind {
                Kind::Sgd { momentum, .. } if momentum > 0.0 => 3,
                Kind::Sgd { .. } => 2,
                Kind::Adafactor { .. } => 10,
                Kind::Adam { .. } | Kind::AdamW { .. } => 12,
            };
            let optimizer = trainable.saturating_mul(per_param);
            let train = forward.saturating_add(backward.unwrap_or(0)).saturating_add(optimizer);
            Flops {
                forward_per_token: forward / tokens,
                forward_per_step: forward,
                attention_per_step: attention,
                backward_per_step: backward,
                optimizer_per_step: optimizer,
                train_step: train,
                train_step_per_token: train / tokens,
            }
        },
        memory: Memory {
            params_bytes,
            grads_bytes,
            optimizer_bytes,
            activations_bytes: activations,
            activations_peak_bytes,
            activations_peak_bytes_without_recompute,
            kernel_plan,
        },
        workload,
    }
}

/// The FLOPs of a training graph's backward nodes: those that no output, aux loss or
/// metric depends on (the forward is exactly what they depend on). A backward node that
/// CSE merged into an equal forward node costs nothing here, as it costs nothing to run.
fn backward_flops(g: &Graph, eval: &dyn Fn(&crate::graph::dim::Dim) -> u64) -> u64 {
    let mut forward = vec![false; g.nodes.len()];
    let roots = g.outputs.iter().chain(g.aux_losses.iter().chain(&g.metrics).map(|(_, v)| v));
    for v in roots {
        forward[v.0 as usize] = true;
    }
    for i in (0..g.nodes.len()).rev() {
        if forward[i] {
            for a in &g.nodes[i].args {
                forward[a.0 as usize] = true;
            }
        }
    }
    let mut total = 0u64;
    for (n, _) in g.nodes.iter().zip(&forward).filter(|(_, f)| !**f) {
        let args: Vec<&crate::graph::types::TensorType> = n.args.iter().map(|a| g.ty(*a)).collect();
        total += eval(&n.op.cost(&args, &n.ty).flops);
    }
    total
}

/// f32 optimizer state: Adam keeps two moments, SGD a momentum buffer if asked,
/// Adafactor row and column statistics for matrices (the full second moment for
/// vectors) and no momentum.
fn optimizer_bytes(instance: &Instance, w: &Workload) -> u64 {
    let mut bytes = 0u64;
    instance.for_each_param("", &[], &mut |name, shape| {
        if !w.is_trainable(name) {
            return;
        }
        // Sizes past `u64` saturate: an absurd model gets an absurd report, not a panic.
        let numel: u64 = shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64));
        let state = match w.recipe.optimizer.kind {
            Kind::Sgd { momentum, .. } if momentum > 0.0 => numel,
            Kind::Sgd { .. } => 0,
            Kind::Adafactor { .. } if shape.len() >= 2 => {
                let (r, c) = (shape[shape.len() - 2] as u64, shape[shape.len() - 1] as u64);
                (numel / r.saturating_mul(c).max(1)).saturating_mul(r.saturating_add(c))
            }
            Kind::Adafactor { .. } => numel,
            Kind::Adam { .. } | Kind::AdamW { .. } => numel.saturating_mul(2),
        };
        bytes = bytes.saturating_add(state.saturating_mul(4));
    });
    bytes
}

/// The doc comment's first sentence, shortened to fit a table column.
fn first_line(docs: &[String]) -> Option<String> {
    const MAX: usize = 60;
    let text = docs.join(" ");
    let sentence = match text.find(". ") {
        Some(i) => &text[..=i],
        None => text.trim(),
    };
    let sentence = sentence.trim();
    if sentence.is_empty() {
        return None;
    }
    if sentence.chars().count() <= MAX {
        return Some(sentence.to_string());
    }
    let cut: String = sentence.chars().take(MAX - 1).collect();
    Some(format!("{}…", cut.trim_end()))
}

/// The nodes under `instance`; `lead` are the copy axes of enclosing `stack`s, which every
/// tensor below carries.
fn children(instance: &Instance, multiplier: u64, lead: &[i64]) -> Vec<Node> {
    instance
        .members
        .iter()
        .filter_map(|m| match m {
            Member::Weight(w) => Some(Node {
                name: w.name.clone(),
                kind: "param".into(),
                copies: None,
                params: w.count().saturating_mul(multiplier),
                shape: Some(lead.iter().chain(&w.shape).copied().collect()),
                doc: first_line(&w.docs),
                children: Vec::new(),
            }),
            Member::Buffer { .. } | Member::Unused(_) => None,
            Member::Sub(s) => {
                let n = s.multiplier();
                let inner_lead: Vec<i64> = match s.copies {
                    Some((CopiesKind::Stack, k)) => lead.iter().copied().chain([k]).collect(),
                    _ => lead.to_vec(),
                };
                Some(Node {
                    name: s.name.clone(),
                    kind: s.instance.block_name.clone(),
                    copies: s.copies.map(|(_, n)| n as u64),
                    params: s.instance.param_count().saturating_mul(n).saturating_mul(multiplier),
                    shape: None,
                    doc: first_line(&s.docs).or_else(|| first_line(&s.instance.docs)),
                    children: children(&s.instance, n.saturating_mul(multiplier), &inner_lead),
                })
            }
        })
        .collect()
}

fn json(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => (*i).into(),
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, Into::into),
        Value::Bool(b) => (*b).into(),
        Value::Str(s) => s.clone().into(),
        Value::None => serde_json::Value::Null,
        other => other.to_string().into(),
    }
}

/// Groups digits in threes: 6738415616 → 6,738,415,616.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human-readable table.
pub fn render(report: &Report) -> String {
    let mut rows: Vec<(String, String, String, String, String)> = Vec::new();
    fn walk(nodes: &[Node], depth: usize, total: u64, rows: &mut Vec<(String, String, String, String, String)>) {
        for n in nodes {
            let name =
                format!("{}{}{}", "  ".repeat(depth), n.name, n.copies.map(|c| format!(" ×{c}")).unwrap_or_default());
            let kind = match &n.shape {
                Some(shape) => format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
                None => n.kind.clone(),
            };
            let share = if total == 0 { 0.0 } else { 100.0 * n.params as f64 / total as f64 };
            rows.push((name, kind, thousands(n.params), format!("{share:.2}%"), n.doc.clone().unwrap_or_default()));
            walk(&n.children, depth + 1, total, rows);
        }
    }
    walk(&report.params.tree, 0, report.params.total, &mut rows);
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(4);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0).max(5);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(thousands(report.params.total).len());
    let mut out = format!("model {}: {} parameters\n\n", report.model, thousands(report.params.total));
    out.push_str(&format!("{:w0$}  {:w1$}  {:>w2$}  {:>7}\n", "name", "block", "params", "share"));
    for (name, kind, params, share, doc) in rows {
        let line = format!("{name:w0$}  {kind:w1$}  {params:>w2$}  {share:>7}  {doc}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{:w0$}  {:w1$}  {:>w2$}\n", "total", "", thousands(report.params.total)));
    let p = &report.params;
    if p.frozen > 0 {
        let share = 100.0 * p.trainable as f64 / p.total.max(1) as f64;
        out.push_str(&format!("{:w0$}  {:w1$}  {:>w2$}  {share:>6.2}%\n", "trainable", "", thousands(p.trainable)));
        out.push_str(&format!("{:w0$}  {:w1$}  {:>w2$}\n", "frozen", "", thousands(p.frozen)));
    }
    let (f, m, w) = (&report.flops, &report.memory, &report.workload);
    out.push_str(&format!("\nWorkload: batch {}, sequence {} ({})\n", w.batch, w.seq, w.from));
    out.push_str("FLOPs (from the Graph IR's op costs)\n");
    out.push_str(&format!("  forward per token      {:>24}\n", thousands(f.forward_per_token)));
    out.push_str(&format!("  forward per step       {:>24}\n", thousands(f.forward_per_step)));
    out.push_str(&format!("  attention per step     {:>24}\n", thousands(f.attention_per_step)));
    match f.backward_per_step {
        Some(b) => {
            out.push_str(&format!("  backward per step      {:>24}  (the backward graph's op costs)\n", thousands(b)))
        }
        None => out.push_str("  backward per step      (no training graph: the objective does not fit the model)\n"),
    }
    out.push_str(&format!("  optimizer per step     {:>24}\n", thousands(f.optimizer_per_step)));
    out.push_str(&format!("  training step          {:>24}\n", thousands(f.train_step)));
    out.push_str(&format!("  training per token     {:>24}\n", thousands(f.train_step_per_token)));
    out.push_str(&format!("Memory ({}, {})\n", w.recipe.precision.name(), w.recipe.optimizer.name()));
    out.push_str(&format!("  parameters             {:>24}\n", bytes(m.params_bytes)));
    out.push_str(&format!("  gradients              {:>24}\n", bytes(m.grads_bytes)));
    out.push_str(&format!("  optimizer state        {:>24}\n", bytes(m.optimizer_bytes)));
    out.push_str(&format!(
        "  activations            {:>24}  (every forward value kept, no reuse)\n",
        bytes(m.activations_bytes)
    ));
    if let Some(peak) = m.activations_peak_bytes {
        out.push_str(&format!(
            "  activations, peak      {:>24}  (training step, each value freed after its last use)\n",
            bytes(peak)
        ));
    }
    if let (Some(without), Some(name)) = (m.activations_peak_bytes_without_recompute, &w.recipe.recompute) {
        out.push_str(&format!(
            "    without recompute    {:>24}  (`recompute = {name}` saves the rest)\n",
            bytes(without)
        ));
    }
    if let Some(k) = &m.kernel_plan {
        out.push_str(&format!(
            "  activations, planned   {:>24}  (training step as {} fused kernels, buffers reused; {} without reuse)\n",
            bytes(k.peak_bytes),
            k.kernels,
            bytes(k.unplanned_bytes)
        ));
    }
    out
}

/// `28.1 GB (28,134,...)`: a readable size with the exact count.
fn bytes(n: u64) -> String {
    let units = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)];
    let (unit, scale) = units.iter().find(|(_, s)| n as f64 >= *s).copied().unwrap_or(("B", 1.0));
    format!("{:.1} {unit}", n as f64 / scale)
}
