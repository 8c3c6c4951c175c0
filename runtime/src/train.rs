//! The training loop, over any backend's `Executable`: per step, the `step` program once
//! per micro-batch (forward, backward, gradients added into the accumulators), then the
//! `apply` program (unscale, non-finite check, clipping, the optimizer update, all on the
//! device); the host sends the batch and a few scalars and reads back scalars only.
//! The loss scale's bookkeeping, the divergence guard and stopping on request live here;
//! the run directory (`run_dir`) keeps metrics and checkpoints; which programs exist and
//! what they compute is the compiler's business.

use crate::batches::Batches;
use crate::checkpoint::Tensors;
use crate::data::Corpus;
use crate::executable::{CallOptions, Executable, HostTensor};
use crate::loss_scale::LossScale;
use crate::memory::PlannedCall;
use crate::optim;
use crate::run_dir::{RunDir, SavedScale, Sidecar};
use crate::schedule::Schedule;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// Everything one training run needs besides the executable and its directory.
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
    /// Under loss scaling, more skipped steps in a row than this stop the run.
    pub max_skipped: u64,
    /// Write a checkpoint every this many steps (and always after the last).
    pub checkpoint_every: Option<u64>,
    /// The model's parameter buffers, as checkpoints name them.
    pub params: Vec<String>,
    /// The optimizer-state buffers and the name each has in the optimizer checkpoint.
    pub state: Vec<(String, String)>,
    /// Set (by a signal handler) to stop after the current step, with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Plan {
    /// The inputs of the `step` call for micro-batch `micro` of `step`: the batch, its
    /// weight in the step, and the loss scale in use.
    pub fn micro_inputs(&self, step: u64, micro: usize) -> Vec<(String, HostTensor)> {
        let index = (step - 1) * self.accumulate as u64 + micro as u64;
        let (tokens, targets) = self.batches.batch(&self.corpus, self.batch, self.seq, self.seed, index);
        let mut inputs: Vec<(String, HostTensor)> = self.token_inputs.iter().cloned().zip(tokens).collect();
        inputs.push(("targets".to_string(), targets));
        inputs.push((names::MICRO_SCALE.to_string(), HostTensor::scalar(1.0 / self.accumulate as f64)));
        if let Some(ls) = &self.loss_scale {
            inputs.push((names::LOSS_SCALE.to_string(), HostTensor::scalar(ls.scale)));
        }
        inputs
    }

    /// How micro-batch `micro` of `step` is called: dropout masks differ per step and
    /// micro-step, and replay in the backward.
    pub fn call_options(&self, step: u64, micro: usize) -> CallOptions {
        CallOptions { training: true, seed: self.seed ^ (step << 20) ^ micro as u64, check_finite: false }
    }

    /// The calls a step makes, with their input shapes, for `memory::check`.
    pub fn planned_calls(&self) -> Vec<PlannedCall<'_>> {
        let bt = vec![self.batch, self.seq];
        let mut step: Vec<(&str, Vec<usize>)> = self.token_inputs.iter().map(|n| (n.as_str(), bt.clone())).collect();
        step.push(("targets", bt));
        step.push((names::MICRO_SCALE, Vec::new()));
        let mut apply = vec![(names::LR, Vec::new())];
        apply.extend(self.optimizer.step_inputs(1).map(|(k, _)| (k, Vec::new())));
        if self.loss_scale.is_some() {
            step.push((names::LOSS_SCALE, Vec::new()));
            apply.push((names::LOSS_SCALE, Vec::new()));
        }
        vec![PlannedCall { program: names::STEP, inputs: step }, PlannedCall { program: names::APPLY, inputs: apply }]
    }

    fn stop_asked(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }
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

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every step ran; the last is checkpointed.
    Finished,
    /// A stop was asked: `step` finished and is checkpointed.
    Stopped { step: u64 },
    /// The run went non-finite and was stopped (nothing after `step` ran).
    Diverged(Divergence),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    pub step: u64,
    /// What went non-finite, in words.
    pub what: String,
    /// Whether the step's update was withheld, so the executable still holds the
    /// parameters the step started from (the anomaly check re-runs it on them).
    pub withheld: bool,
    /// The newest checkpoint of the run, if any.
    pub last_checkpoint: Option<u64>,
}

/// Trains from `plan.start_step` to `plan.steps`, appending one row per step to the run
/// directory and checkpointing after the rows it covers; `progress` is called after each
/// step. Stops early, with a checkpoint, when `plan.stop` is set; and with `Diverged`,
/// without applying the bad step, when the loss or gradient norm goes non-finite in f32
/// (or in bf16/f16 without loss scaling), or more than `max_skipped` steps in a row are
/// skipped under loss scaling.
pub fn train(
    exe: &mut dyn Executable,
    plan: &mut Plan,
    run: &mut RunDir,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<Outcome, String> {
    let (b, t) = (plan.batch, plan.seq);
    let mut skipped_in_a_row = 0u64;
    for step in plan.start_step..=plan.steps {
        let started = std::time::Instant::now();
        let (mut loss, mut extras) = (0.0, Vec::<(String, bool, Vec<f64>)>::new());
        let mut activations_peak = 0u64;
        let used_scale = plan.loss_scale.as_ref().map(|ls| ls.scale);
        let scale = 1.0 / plan.accumulate as f64;
        for micro in 0..plan.accumulate {
            let (names, tensors): (Vec<String>, Vec<HostTensor>) = plan.micro_inputs(step, micro).into_iter().unzip();
            let inputs = names.iter().map(String::as_str).zip(tensors).collect();
            let returned = exe.call(names::STEP, inputs, plan.call_options(step, micro))?;
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
        // The apply program withholds a step whose norm is not finite itself; under loss
        // scaling the host's copy of that decision moves the scale and the step count.
        let applied = match &mut plan.loss_scale {
            Some(ls) => ls.update(grad_norm.is_finite()),
            None => grad_norm.is_finite(),
        };
        if applied {
            plan.optimizer_step += 1;
            skipped_in_a_row = 0;
        } else {
            skipped_in_a_row += 1;
        }
        let diverged = match &plan.loss_scale {
            None if !loss.is_finite() || !grad_norm.is_finite() => {
                let what = if loss.is_finite() {
                    format!("the gradient norm is {grad_norm}")
                } else {
                    format!("the loss is {loss}")
                };
                Some(Divergence { step, what, withheld: !applied, last_checkpoint: run.last_checkpoint })
            }
            Some(ls) if skipped_in_a_row > plan.max_skipped => Some(Divergence {
                step,
                what: format!(
                    "{skipped_in_a_row} steps in a row were skipped for non-finite gradients (more than the recipe's `max_skipped` {}), the loss scale now {}",
                    plan.max_skipped, ls.scale
                ),
                withheld: true,
                last_checkpoint: run.last_checkpoint,
            }),
            _ => None,
        };
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let tokens_per_s = (b * t * plan.accumulate) as f64 / secs;
        // Non-finite numbers are `null` in JSON.
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
        if diverged.is_some() {
            line["diverged"] = serde_json::json!(true);
        }
        run.append(step, &line)?;
        crate::fault::point("metrics-row", step);
        if let Some(d) = diverged {
            return Ok(Outcome::Diverged(d));
        }
        let due = step == plan.steps || plan.checkpoint_every.is_some_and(|n| n > 0 && step % n == 0);
        let stop = plan.stop_asked();
        if due || stop {
            checkpoint(exe, plan, run, step)?;
        }
        progress(&StepReport { step, steps: plan.steps, loss, lr, grad_norm, tokens_per_s });
        if stop && step < plan.steps {
            return Ok(Outcome::Stopped { step });
        }
    }
    Ok(Outcome::Finished)
}

/// The model's parameters, read from the executable.
pub fn read_params(exe: &mut dyn Executable, names: &[String]) -> Result<Tensors, String> {
    names.iter().map(|n| exe.read(n).map(|t| (n.clone(), (t.shape, t.data)))).collect()
}

/// Reads parameters and optimizer state and hands them to the run directory, which
/// writes them after the rows up to `step` are on disk.
fn checkpoint(exe: &mut dyn Executable, plan: &Plan, run: &mut RunDir, step: u64) -> Result<(), String> {
    let params = read_params(exe, &plan.params)?;
    let mut state = Tensors::new();
    for (buffer, key) in &plan.state {
        let t = exe.read(buffer)?;
        state.insert(key.clone(), (vec![t.numel()], t.data));
    }
    let sidecar = Sidecar {
        step,
        seed: plan.seed,
        run: String::new(),
        params: String::new(),
        optimizer: String::new(),
        optimizer_step: plan.optimizer_step,
        next_batch: step * plan.accumulate as u64,
        loss_scale: plan.loss_scale.as_ref().map(|ls| SavedScale { scale: ls.scale, clean: ls.clean }),
        metrics_bytes: 0,
    };
    run.checkpoint(sidecar, &params, &state)
}
