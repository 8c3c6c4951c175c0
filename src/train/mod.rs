//! A recipe → what a training run starts from: the parameters (declared initialisers, a
//! `from` checkpoint, or upcycling) and the training programs (`step`, `apply`) compiled
//! by the chosen backend into an executable that holds parameters and optimizer state.
//! The loop itself is the runtime's (`modelc_runtime::train`), generic over backends;
//! `command.rs` is `modelc train`, `fingerprint.rs` says what a run is, `anomaly.rs`
//! finds the first non-finite op of a diverged step, `signals.rs` stops a run cleanly.

pub mod anomaly;
pub mod command;
pub mod fingerprint;
pub mod signals;

use modelc_compiler::backend::{Backend, Program};
use modelc_compiler::elab::instance::Instance;
use modelc_compiler::graph::types::{DType, TensorType};
use modelc_compiler::graph::Graph;
use modelc_compiler::training::{self, ApplySpec};
use modelc_runtime::checkpoint::Tensors;
use modelc_runtime::executable::{Executable, HostTensor};
use modelc_runtime::init::init;
use modelc_runtime::train::names;

/// Parameters from their declared initialisers, each seeded by its name.
pub fn init_params(instance: &Instance, seed: u64) -> Tensors {
    let mut params = Tensors::new();
    instance.for_each_weight("", &[], &mut |name, shape, weight| {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let data = init(&weight.init, name, &shape, seed);
        params.insert(name.to_string(), (shape, data));
    });
    params
}

/// The parameters a run starts from: the declared initialisers, then the recipe's `from`
/// checkpoint over them. Every parameter must come from the checkpoint, except trainable
/// ones of a recipe that trains only some (a new adapter keeps its initialiser); every
/// tensor of the checkpoint must be a parameter of the same shape.
///
/// `init = upcycle(..)` reads a dense checkpoint instead: each parameter under a `stack`
/// that the checkpoint lacks is tiled from the dense tensor it replaces, plus noise; what
/// the dense model has no counterpart for (the routers) keeps its initialiser.
pub fn initial_params(instance: &Instance, w: &modelc_compiler::Workload, seed: u64) -> Result<Tensors, String> {
    let mut params = init_params(instance, seed);
    let (base, upcycle) = match (&w.recipe.base, &w.recipe.upcycle) {
        (Some(base), _) => (base, None),
        (None, Some(up)) => (&up.path, Some(up.noise)),
        (None, None) => return Ok(params),
    };
    let loaded = load_weights(std::path::Path::new(base));
    let how = if upcycle.is_some() { "upcycles" } else { "starts `from`" };
    let tensors = loaded.map_err(|e| {
        format!(
            "the recipe {how} \"{base}\", which cannot be read: {e}\n  help: the path is relative to the working directory; train the base model first (`modelc train examples/llama.model` writes `runs/llama-tiny/final.safetensors`)"
        )
    })?;
    let (mut unexpected, mut wrong) = (Vec::new(), Vec::new());
    let mut found = std::collections::HashSet::new();
    let mut used = std::collections::HashSet::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let (shape, data) = &tensors[name];
        match params.get_mut(name) {
            None => unexpected.push(name.clone()),
            Some(t) if &t.0 != shape => {
                wrong.push(format!("{name}: the checkpoint's is {shape:?}, the model's {:?}", t.0))
            }
            Some(t) => {
                t.1.clone_from(data);
                found.insert(name.clone());
                used.insert(name.clone());
            }
        }
    }
    let mut fresh = Vec::new();
    if let Some(noise) = upcycle {
        for (name, dense, axes) in instance.stacked_params() {
            let Some((shape, data)) = tensors.get(&dense).filter(|_| !found.contains(&name)) else { continue };
            let Some(t) = params.get_mut(&name) else { continue };
            if t.0[axes..] != shape[..] {
                wrong.push(format!("{name}: the checkpoint's `{dense}` is {shape:?}, one expert's {:?}", &t.0[axes..]));
                used.insert(dense);
                continue;
            }
            t.1 = upcycled(data, t.1.len() / data.len(), noise, &name, seed);
            found.insert(name);
            used.insert(dense);
        }
        unexpected.retain(|n| !used.contains(n));
        fresh = params.keys().filter(|k| !found.contains(*k)).cloned().collect();
        fresh.sort();
    }
    let mut missing: Vec<String> = params
        .keys()
        .filter(|k| !found.contains(*k) && upcycle.is_none() && (w.recipe.trainable.is_none() || !w.is_trainable(k)))
        .cloned()
        .collect();
    missing.sort();
    if missing.is_empty() && wrong.is_empty() && unexpected.is_empty() {
        if upcycle.is_some() {
            eprintln!(
                "upcycled from {base}: {} tensors copied or tiled into experts; initialised fresh: {}",
                found.len(),
                if fresh.is_empty() { "none".to_string() } else { fresh.join(", ") }
            );
        }
        return Ok(params);
    }
    let mut msg = format!("the checkpoint `{base}` does not fit `{}`:", instance.block_name);
    for (what, list) in [("missing from it", &missing), ("not in the model", &unexpected), ("wrong shape", &wrong)] {
        if !list.is_empty() {
            let more = if list.len() > 8 { format!(" (and {} more)", list.len() - 8) } else { String::new() };
            msg.push_str(&format!("\n  {what}: {}{more}", list.iter().take(8).cloned().collect::<Vec<_>>().join(", ")));
        }
    }
    msg.push_str("\n  help: the recipe's model arguments must be those the checkpoint was trained with");
    if upcycle.is_some() {
        msg.push_str(" (an expert's width is the dense MLP's)");
    }
    Err(msg)
}

/// `copies` copies of a dense tensor, each with its own Gaussian noise of `noise` times the
/// tensor's standard deviation (seeded by the parameter's name, like its initialiser).
fn upcycled(dense: &[f64], copies: usize, noise: f64, name: &str, seed: u64) -> Vec<f64> {
    let n = dense.len() as f64;
    let mean = dense.iter().sum::<f64>() / n;
    let std = (dense.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
    let mut rng = modelc_runtime::rng::Rng::for_name(seed, &format!("{name}#upcycle"));
    let mut out = Vec::with_capacity(dense.len() * copies);
    for _ in 0..copies {
        out.extend(dense.iter().map(|x| if noise > 0.0 { x + noise * std * rng.normal() } else { *x }));
    }
    out
}

/// The graph's integer inputs other than the targets, in order.
pub fn token_inputs(graph: &Graph) -> Vec<String> {
    graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            modelc_compiler::graph::op::Op::Input { name } if name != "targets" && !n.ty.dtype.is_float() => {
                Some(name.clone())
            }
            _ => None,
        })
        .collect()
}

/// Every parameter of the model as an f32 buffer, in declaration order.
pub fn model_buffers(instance: &Instance) -> Vec<(String, TensorType)> {
    let mut out = Vec::new();
    instance.for_each_param("", &[], &mut |name, shape| {
        let dims = shape.iter().map(|&d| modelc_compiler::graph::dim::Dim::constant(d)).collect();
        out.push((name.to_string(), TensorType::new(DType::F32, dims)));
    });
    out
}

/// The parameters of a checkpoint: a safetensors file, or a run directory's newest
/// intact checkpoint.
pub fn load_weights(path: &std::path::Path) -> Result<Tensors, String> {
    if path.is_dir() {
        modelc_runtime::run_dir::latest_checkpoint(path).map(|r| r.params)
    } else {
        modelc_runtime::checkpoint::load(path)
    }
}

/// Writes host parameters into the executable's buffers (rounded to their f32 storage).
/// Every model parameter must be given (a buffer left zeroed would run silently wrong)
/// with the model's shape; tensors the executable has no buffer for are not the model's
/// and are left out. `from` names where the weights come from, for the errors.
pub fn write_params(exe: &mut dyn Executable, mut params: Tensors, from: &str) -> Result<(), String> {
    let buffers: std::collections::HashMap<String, Vec<usize>> =
        exe.buffers().into_iter().map(|b| (b.name, b.shape)).collect();
    let mut missing: Vec<&String> = buffers.keys().filter(|n| !n.contains(':') && !params.contains_key(*n)).collect();
    missing.sort();
    if let Some(first) = missing.first() {
        return Err(format!(
            "missing parameter `{first}`{} in {from}: the weights do not hold it",
            if missing.len() > 1 { format!(" (and {} more)", missing.len() - 1) } else { String::new() }
        ));
    }
    params.retain(|k, _| buffers.contains_key(k));
    let wrong: Vec<String> = params
        .iter()
        .filter(|(name, (shape, _))| buffers.get(*name) != Some(shape))
        .map(|(name, (shape, _))| format!("`{name}` is {shape:?} in {from}, the model's is {:?}", buffers[name]))
        .collect();
    if let Some(first) = wrong.first() {
        let more = if wrong.len() > 1 { format!(" (and {} more)", wrong.len() - 1) } else { String::new() };
        return Err(format!(
            "{first}{more}\n  help: the weights are of another model, or of other arguments of this one"
        ));
    }
    for (name, (shape, data)) in params {
        exe.write(&name, HostTensor::new(shape, data))?;
    }
    Ok(())
}

/// A compiled training run: the executable and the buffers a checkpoint holds.
pub struct Training {
    pub exe: Box<dyn Executable>,
    /// The `step` program, kept when `--detect-anomaly` may re-run it.
    pub step: Option<Program>,
    /// The model's parameters, in declaration order.
    pub params: Vec<String>,
    /// Each optimizer-state buffer and its name in the optimizer checkpoint.
    pub state: Vec<(String, String)>,
}

/// The training step's programs: `step` (forward, backward, gradients into accumulators)
/// and `apply` (unscale, norm, guard, clip, the optimizer), the model's buffers, and each
/// optimizer-state buffer with its name in the optimizer checkpoint.
pub struct TrainingPrograms {
    pub programs: Vec<Program>,
    pub buffers: Vec<(String, TensorType)>,
    pub state: Vec<(String, String)>,
}

/// The `step` and `apply` programs of the training graph (`lower(.., Training)`), for the
/// recipe's optimizer, clipping and loss scaling.
pub fn training_programs(
    graph: Graph,
    instance: &Instance,
    w: &modelc_compiler::Workload,
) -> Result<TrainingPrograms, String> {
    let buffers = model_buffers(instance);
    let shapes: std::collections::HashMap<&str, Vec<usize>> = buffers
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape.iter().map(|d| d.as_constant().unwrap_or(0) as usize).collect()))
        .collect();
    let trainable: Vec<(String, Vec<usize>)> = graph
        .grads
        .iter()
        .map(|(name, _)| {
            let shape =
                shapes.get(name.as_str()).cloned().ok_or_else(|| format!("gradient of unknown parameter `{name}`"))?;
            Ok((name.clone(), shape))
        })
        .collect::<Result<_, String>>()?;
    let opt = &w.recipe.optimizer;
    let spec = ApplySpec {
        optimizer: opt.kind.clone(),
        weight_decay: opt.weight_decay,
        no_decay: opt.no_decay.clone(),
        clip: w.recipe.clip,
        loss_scaled: w.recipe.precision.loss_scale().is_some(),
    };
    let mut state = Vec::new();
    for (name, shape) in &trainable {
        for (prefix, _) in opt.kind.state_of(shape) {
            let (buffer, key) = training::state_buffer(prefix, name);
            state.push((buffer, key));
        }
    }
    let apply = training::apply_graph(&trainable, &spec)?;
    let norm = apply.outputs[0];
    let step = training::step_program(graph)?;
    let programs = vec![
        Program { name: names::STEP.into(), graph: step.graph, returns: step.returns },
        Program { name: names::APPLY.into(), graph: apply, returns: vec![(names::GRAD_NORM.into(), norm)] },
    ];
    Ok(TrainingPrograms { programs, buffers, state })
}

/// Compiles the training step's programs on `backend`.
pub fn compile(
    backend: &dyn Backend,
    graph: Graph,
    instance: &Instance,
    w: &modelc_compiler::Workload,
    keep_step: bool,
) -> Result<Training, String> {
    let TrainingPrograms { programs, buffers, state } = training_programs(graph, instance, w)?;
    let params = buffers.iter().map(|(n, _)| n.clone()).collect();
    let step = keep_step.then(|| programs[0].clone());
    let exe = backend.compile(buffers, programs)?;
    Ok(Training { exe, step, params, state })
}

/// Restores optimizer state saved as `m.NAME`, ... (flattened) into its buffers; every
/// state buffer must be in the checkpoint (`from`), at its size.
pub fn write_state(
    exe: &mut dyn Executable,
    state: &[(String, String)],
    saved: Tensors,
    from: &str,
) -> Result<(), String> {
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        exe.buffers().into_iter().map(|b| (b.name, b.shape)).collect();
    for (buffer, key) in state {
        let Some((_, data)) = saved.get(key) else {
            return Err(format!("optimizer state `{key}` is missing from {from} (a checkpoint of another optimizer?)"));
        };
        let shape = shapes.get(buffer).cloned().unwrap_or_default();
        if shape.iter().product::<usize>() != data.len() {
            return Err(format!("`{key}` in {from} has {} values, the model's {shape:?}", data.len()));
        }
        exe.write(buffer, HostTensor::new(shape, data.clone()))?;
    }
    Ok(())
}
