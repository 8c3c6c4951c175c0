//! The training loop, over any backend's `Executable`: per step, the `step` program once
//! per micro-batch (forward, backward, gradients added into the accumulators), then the
//! `apply` program (unscale, non-finite check, clipping, the optimizer update, all on the
//! device); the host sends the batch and a few scalars and reads back scalars only.
//! Checkpoints, metrics and the loss scale's bookkeeping live here; which programs exist
//! and what they compute is the compiler's business.

use crate::batches::Batches;
use crate::checkpoint::{save, write_atomically, Tensors};
use crate::data::Corpus;
use crate::executable::{CallOptions, Executable, HostTensor};
use crate::loss_scale::LossScale;
use crate::optim;
use crate::schedule::Schedule;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Names of the scalar inputs and returns the training programs share with the compiler,
/// which builds them.
pub mod names {
    /// `step`: the loss scale of mixed precision (the backward's seed).
    pub const LOSS_SCALE: &str = "loss_scale";
    /// `step`: the weight of this micro-batch's gradients in the step (1 / accumulate).
    pub const MICRO_SCALE: &str = "micro_scale";
    /// `step`: the objective's value.
    pub const LOSS: &str = "loss";
    /// `apply`: the learning rate of this step.
    pub const LR: &str = "lr";
    /// `apply`: the global gradient norm (after unscaling, before clipping).
    pub const GRAD_NORM: &str = "grad_norm";
    /// The `step`/`apply` program names.
    pub const STEP: &str = "step";
    pub const APPLY: &str = "apply";
}

/// Everything one training run needs besides the executable.
pub struct Plan {
    pub steps: u64,
    /// The first step to run: 1, or the step after a resumed checkpoint.
    pub start_step: u64,
    /// Optimizer steps taken so far (skipped steps do not count).
    pub optimizer_step: u64,
    pub accumulate: usize,
    pub batch: usize,
    pub seq: usize,
    pub seed: u64,
    /// The forward's integer inputs, in order (tokens; or encoder and decoder tokens).
    pub token_inputs: Vec<String>,
    pub batches: Batches,
    pub corpus: Corpus,
    pub schedule: Schedule,
    /// The optimizer: its bias corrections are scalar inputs of `apply`.
    pub optimizer: optim::Kind,
    /// Mixed precision's loss scale (the step takes it as an input).
    pub loss_scale: Option<LossScale>,
    /// Write a checkpoint every this many steps (and always after the last).
    pub checkpoint_every: Option<u64>,
    pub out_dir: PathBuf,
    /// The model's parameter buffers, as checkpoints name them.
    pub params: Vec<String>,
    /// The optimizer-state buffers and the name each has in the optimizer checkpoint.
    pub state: Vec<(String, String)>,
}

/// One step's headline numbers, for progress display.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: u64,
    pub steps: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
}

/// Trains from `plan.start_step` to `plan.steps`, writing one JSON object per step to
/// `metrics` and calling `progress` after each. The executable holds the final weights.
pub fn train(
    exe: &mut dyn Executable,
    mut plan: Plan,
    metrics: &mut dyn Write,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<(), String> {
    let (b, t) = (plan.batch, plan.seq);
    for step in plan.start_step..=plan.steps {
        let started = std::time::Instant::now();
        let (mut loss, mut extras) = (0.0, Vec::<(String, bool, Vec<f64>)>::new());
        let mut activations_peak = 0u64;
        let used_scale = plan.loss_scale.as_ref().map(|ls| ls.scale);
        let scale = 1.0 / plan.accumulate as f64;
        for micro in 0..plan.accumulate {
            let index = (step - 1) * plan.accumulate as u64 + micro as u64;
            let (tokens, targets) = plan.batches.batch(&plan.corpus, b, t, plan.seed, index);
            let mut inputs: Vec<(&str, HostTensor)> =
                plan.token_inputs.iter().map(String::as_str).zip(tokens).collect();
            inputs.push(("targets", targets));
            inputs.push((names::MICRO_SCALE, HostTensor::scalar(scale)));
            if let Some(s) = used_scale {
                inputs.push((names::LOSS_SCALE, HostTensor::scalar(s)));
            }
            // Dropout masks differ per step and micro-step, and replay in the backward.
            let options = CallOptions { training: true, seed: plan.seed ^ (step << 20) ^ micro as u64 };
            let returned = exe.call(names::STEP, inputs, options)?;
            activations_peak = activations_peak.max(exe.activations_peak().unwrap_or(0));
            // The loss and every aux loss and metric, averaged over the micro-steps; a
            // vector metric element by element.
            for (name, v) in returned {
                if name == names::LOSS {
                    loss += v.data.first().copied().unwrap_or(f64::NAN) * scale;
                    continue;
                }
                let scaled = v.data.iter().map(|x| x * scale);
                match extras.iter_mut().find(|(n, _, _)| *n == name) {
                    Some((_, _, x)) => x.iter_mut().zip(scaled).for_each(|(a, b)| *a += b),
                    None => extras.push((name, v.shape.is_empty(), scaled.collect())),
                }
            }
        }
        let lr = plan.schedule.lr(step);
        let mut inputs = vec![(names::LR, HostTensor::scalar(lr))];
        inputs.extend(plan.optimizer.step_inputs(plan.optimizer_step + 1).map(|(k, v)| (k, HostTensor::scalar(v))));
        if let Some(s) = used_scale {
            inputs.push((names::LOSS_SCALE, HostTensor::scalar(s)));
        }
        let returned = exe.call(names::APPLY, inputs, CallOptions::default())?;
        let grad_norm = returned
            .iter()
            .find(|(n, _)| n == names::GRAD_NORM)
            .and_then(|(_, v)| v.data.first().copied())
            .ok_or("the apply program returned no grad_norm")?;
        // The apply program skipped a non-finite step itself (under loss scaling); the
        // host's copy of that decision moves the scale and the optimizer's step count.
        let applied = match &mut plan.loss_scale {
            Some(ls) => ls.update(grad_norm.is_finite()),
            None => true,
        };
        if applied {
            plan.optimizer_step += 1;
        }
        if step == plan.steps || plan.checkpoint_every.is_some_and(|n| n > 0 && step % n == 0) {
            checkpoint(exe, &plan, step)?;
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let tokens_per_s = (b * t * plan.accumulate) as f64 / secs;
        let mut line = serde_json::json!({
            "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
            "activations_peak_bytes": activations_peak,
        });
        if let Some(scale) = used_scale {
            line["loss_scale"] = serde_json::json!(scale);
            line["skipped"] = serde_json::json!(!applied);
        }
        for (name, scalar, v) in &extras {
            line[name] =
                if *scalar { serde_json::json!(v.first().copied().unwrap_or(0.0)) } else { serde_json::json!(v) };
        }
        writeln!(metrics, "{line}").map_err(|e| format!("writing metrics: {e}"))?;
        progress(&StepReport { step, steps: plan.steps, loss, lr, grad_norm, tokens_per_s });
    }
    Ok(())
}

/// The model's parameters, read from the executable.
pub fn read_params(exe: &mut dyn Executable, names: &[String]) -> Result<Tensors, String> {
    names.iter().map(|n| exe.read(n).map(|t| (n.clone(), (t.shape, t.data)))).collect()
}

/// Writes `step-N.safetensors` (parameters), `step-N.optimizer.safetensors` and the
/// `step-N.json` sidecar, each atomically; the sidecar last, so it only ever names files
/// that exist.
fn checkpoint(exe: &mut dyn Executable, plan: &Plan, step: u64) -> Result<(), String> {
    let params = read_params(exe, &plan.params)?;
    let mut state = Tensors::new();
    for (buffer, key) in &plan.state {
        let t = exe.read(buffer)?;
        state.insert(key.clone(), (vec![t.numel()], t.data));
    }
    let (pfile, ofile) = (format!("step-{step}.safetensors"), format!("step-{step}.optimizer.safetensors"));
    save(&plan.out_dir.join(&pfile), &params)?;
    save(&plan.out_dir.join(&ofile), &state)?;
    let mut sidecar = serde_json::json!({
        "step": step,
        "seed": plan.seed,
        "params": pfile,
        "optimizer": ofile,
        "optimizer_step": plan.optimizer_step,
        // Data order and dropout are functions of (seed, step): nothing else to restore.
        "next_batch": step * plan.accumulate as u64,
    });
    if let Some(ls) = &plan.loss_scale {
        sidecar["loss_scale"] = serde_json::json!({ "scale": ls.scale, "clean": ls.clean });
    }
    write_atomically(&plan.out_dir.join(format!("step-{step}.json")), format!("{sidecar:#}\n").as_bytes())
        .map_err(|e| format!("writing the checkpoint sidecar: {e}"))
}

/// A checkpoint read back: its step, parameters, optimizer step and state, and the loss
/// scale it saved (scale, clean steps).
pub struct Resumed {
    pub step: u64,
    pub params: Tensors,
    pub optimizer_step: u64,
    pub state: Tensors,
    pub loss_scale: Option<(f64, u64)>,
}

/// The latest checkpoint in `dir`.
pub fn latest_checkpoint(dir: &Path) -> Result<Resumed, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading `{}`: {e}", dir.display()))?;
    let step = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("step-")?.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max()
        .ok_or_else(|| format!("no checkpoint (step-N.json) in `{}`", dir.display()))?;
    let text = std::fs::read_to_string(dir.join(format!("step-{step}.json"))).map_err(|e| e.to_string())?;
    let sidecar: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("step-{step}.json: {e}"))?;
    let file = |key: &str| dir.join(sidecar[key].as_str().unwrap_or_default());
    let params = crate::checkpoint::load(&file("params"))?;
    let state = crate::checkpoint::load(&file("optimizer"))?;
    let loss_scale =
        sidecar["loss_scale"]["scale"].as_f64().map(|s| (s, sidecar["loss_scale"]["clean"].as_u64().unwrap_or(0)));
    Ok(Resumed { step, params, optimizer_step: sidecar["optimizer_step"].as_u64().unwrap_or(step), state, loss_scale })
}
