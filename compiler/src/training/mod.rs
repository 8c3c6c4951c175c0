//! The training step as Graph IR programs: the training graph (forward, objective,
//! backward) with its gradients added into accumulator buffers (`step`), and the optimizer
//! update of every trainable parameter (`apply`: unscaling, the non-finite check, global-
//! norm clipping, SGD/Adam/AdamW/Adafactor, master weights and state rounded to f32).
//! Both update their buffers in place through the graph's declared `updates`; the host
//! feeds the batch and a few scalars and reads back scalars only.
//!
//! The arithmetic mirrors `modelc_runtime::optim` operation for operation (the oracle), so
//! the reference interpreter reproduces it bit for bit: the update computes in f64 and
//! rounds what it stores to f32, as the optimizer always has.

mod apply;
mod builder;

pub use apply::{apply_graph, ApplySpec};
pub use builder::Builder;

use crate::graph::op::Binary;
use crate::graph::types::DType;
use crate::graph::{Graph, ValueId};
use modelc_runtime::train::names;

/// The persistent buffer that accumulates parameter `name`'s gradient over micro-steps.
pub fn grad_buffer(name: &str) -> String {
    format!("grad:{name}")
}

/// The optimizer-state buffer `prefix` (`m`, `v`, `rows`, `cols`) of parameter `name`,
/// and its name in the optimizer checkpoint.
pub fn state_buffer(prefix: &str, name: &str) -> (String, String) {
    (format!("{prefix}:{name}"), format!("{prefix}.{name}"))
}

/// A program of the training step: its graph and what it hands back to the host.
pub struct StepProgram {
    pub graph: Graph,
    pub returns: Vec<(String, ValueId)>,
}

/// The `step` program: the training graph, plus `grad:NAME += grad · micro_scale` for
/// every trainable parameter (in f64, as the host accumulated). Returns the loss, every
/// aux loss and every metric, by name.
pub fn step_program(mut graph: Graph) -> Result<StepProgram, String> {
    graph.outputs.first().ok_or("the training graph has no loss")?;
    let grads = graph.grads.clone();
    let mut b = Builder::new(&mut graph, "step");
    let micro = b.input(names::MICRO_SCALE, DType::F64, &[]);
    let mut updates = Vec::new();
    for (name, g) in &grads {
        let ty = b.ty(*g).clone();
        let acc = b.param(&grad_buffer(name), DType::F64, &ty.shape);
        let g64 = b.cast(*g, DType::F64)?;
        let scaled = b.binary(Binary::Mul, g64, micro)?;
        let sum = b.binary(Binary::Add, acc, scaled)?;
        updates.push((grad_buffer(name), sum));
    }
    graph.updates.extend(updates);
    // The tail goes through the pipeline too (verified after every pass in debug builds).
    let graph = crate::passes::pipeline(graph)?;
    let loss = graph.outputs[0];
    let mut returns = vec![(names::LOSS.to_string(), loss)];
    returns.extend(graph.aux_losses.iter().chain(&graph.metrics).cloned());
    Ok(StepProgram { graph, returns })
}
