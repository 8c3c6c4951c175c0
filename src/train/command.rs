//! `modelc train`: a recipe → a run directory. Checks every input first (flags, the
//! training text against the sequence length, the memory the step needs), opens or
//! resumes the run directory (refusing another run's), drives the runtime's loop, and
//! turns how it ended (finished, stopped by a signal, diverged) into the exit status.

use crate::commands::{self, EXIT_INPUT, EXIT_OK, EXIT_UNSUPPORTED};
use crate::report::Reporter;
use modelc_compiler::{inspect, Lowering, Target};
use modelc_runtime::data::Corpus;
use modelc_runtime::memory;
use modelc_runtime::run_dir::{self, RunDir};
use modelc_runtime::train::{Divergence, Outcome};
use std::path::{Path, PathBuf};

/// How `modelc train` was asked to run, beyond the target.
pub struct TrainArgs<'a> {
    pub data: Option<&'a Path>,
    pub steps: Option<u64>,
    pub out: Option<&'a Path>,
    pub seed: Option<u64>,
    pub checkpoint_every: Option<u64>,
    pub resume: Option<&'a Path>,
    /// Start over in an `--out` directory that holds a run.
    pub overwrite: bool,
    /// On divergence, re-run the step through the interpreter to find the first op whose
    /// output went non-finite.
    pub detect_anomaly: bool,
    /// `--memory-limit`, in bytes.
    pub memory_limit: Option<u64>,
    /// `--backend`: which backend compiles and runs the programs.
    pub backend: &'a str,
}

pub fn train(path: &Path, target: &Target, args: &TrainArgs, report: &Reporter) -> i32 {
    // `--steps 0` is allowed: it writes the initial parameters as the final weights.
    if args.checkpoint_every == Some(0) {
        report.plain_error("`--checkpoint-every 0`: must be at least 1 (the last step is always checkpointed)");
        return EXIT_INPUT;
    }
    if let (Some(out), Some(resume)) = (args.out, args.resume) {
        if out != resume {
            report.plain_error(&format!(
                "`--out {}` and `--resume {}` name different directories: a resumed run continues in its own",
                out.display(),
                resume.display()
            ));
            return EXIT_INPUT;
        }
    }
    let Some(mut program) = commands::load_program(path, report) else {
        return EXIT_INPUT;
    };
    let mut target = target.clone();
    if target.recipe.is_none() {
        target.recipe = Some("tiny".to_string());
    }
    let backend = match commands::backend(args.backend, report) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let (instance, graph, w) = match commands::interpreter_graph(&mut program, &target, Lowering::Training, report) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let r = &w.recipe;
    // A resumed run's seed, length and training text default to its own.
    let recorded = args.resume.and_then(run_dir::recorded);
    let steps = args.steps.or(recorded.as_ref().map(|f| f.steps)).or(r.steps).unwrap_or(100);
    let seed = args.seed.or(recorded.as_ref().map(|f| f.seed)).unwrap_or(r.seed);
    let recorded_data = recorded.as_ref().filter(|f| f.data_name != "builtin").map(|f| PathBuf::from(&f.data_name));
    let data = args.data.map(Path::to_path_buf).or(recorded_data);
    let corpus = match &data {
        None => Corpus::builtin(),
        Some(p) => match Corpus::from_file(p) {
            Ok(c) => c,
            Err(why) => {
                report.plain_error(&why);
                return EXIT_INPUT;
            }
        },
    };
    let data_name = data.as_ref().map_or("builtin".to_string(), |p| p.display().to_string());
    let text_max = corpus.tokens.iter().copied().max().unwrap_or(0);
    let checked = commands::check_text_length(&program, &w, corpus.tokens.len(), &data_name, report)
        .and_then(|_| commands::check_token_ids(&graph, &w, text_max, report));
    if let Err(code) = checked {
        return code;
    }
    let token_inputs = crate::train::token_inputs(&graph);
    if token_inputs.is_empty() {
        report.plain_error("the model takes no token ids");
        return EXIT_UNSUPPORTED;
    }
    let fingerprint = crate::train::fingerprint::of(
        &program,
        &path.display().to_string(),
        &target,
        seed,
        steps,
        crate::train::fingerprint::DataId::of_tokens(&data_name, &corpus.tokens),
    );
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = args.out.or(args.resume).map(Path::to_path_buf).unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{stem}-{}", target.recipe.as_deref().unwrap_or("tiny")))
    });
    let mut training = match crate::train::compile(backend.as_ref(), graph, &instance, &w, args.detect_anomaly) {
        Ok(t) => t,
        Err(why) => {
            report.plain_error(&format!("compiling the training step: {why}"));
            return EXIT_UNSUPPORTED;
        }
    };
    let mut plan = modelc_runtime::train::Plan {
        steps,
        start_step: 1,
        optimizer_step: 0,
        accumulate: r.accumulate.max(1) as usize,
        batch: w.batch.max(1) as usize,
        seq: w.seq.max(1) as usize,
        seed,
        token_inputs,
        batches: r.objective.batches.clone(),
        corpus,
        schedule: modelc_runtime::schedule::Schedule { peak: r.optimizer.lr, total: steps, phases: r.schedule.clone() },
        optimizer: r.optimizer.kind.clone(),
        loss_scale: r.precision.loss_scale(),
        max_skipped: r.precision.max_skipped(),
        checkpoint_every: args.checkpoint_every.or(r.checkpoint),
        params: training.params.clone(),
        state: training.state.clone(),
        stop: None,
    };
    // Memory first: nothing of the step's size is allocated before it is known to fit.
    let remedies = format!(
        "lower `batch` (now {}) with `accumulate = N` to keep the batch per step, set `recompute = blocks`, or shorten `seq` (now {})",
        plan.batch, plan.seq
    );
    let budget = match memory::check(training.exe.as_ref(), &plan.planned_calls(), args.memory_limit, &remedies) {
        Ok((plan, budget)) => (plan, budget),
        Err(why) => {
            report.plain_error(&why);
            return EXIT_INPUT;
        }
    };
    let mut run = match open_run(&dir, args, &fingerprint, &instance, &w, seed, &mut training, &mut plan) {
        Ok(run) => run,
        Err(why) => {
            report.plain_error(&why);
            return EXIT_INPUT;
        }
    };
    let memory_line = match &budget.1 {
        Some((avail, _)) => format!("{} of {} free", memory::human(budget.0.total()), memory::human(*avail)),
        None => memory::human(budget.0.total()),
    };
    eprintln!(
        "training {} ({} parameters) for {steps} steps, batch {} x {} tokens, seed {seed}, backend {}, memory {memory_line}; metrics in {}",
        instance.block_name,
        inspect::thousands(instance.param_count()),
        plan.batch,
        plan.seq,
        backend.name(),
        dir.join(run_dir::METRICS).display()
    );
    let stop = match crate::train::signals::Stop::install() {
        Ok(s) => s,
        Err(why) => {
            report.plain_error(&why);
            return EXIT_INPUT;
        }
    };
    plan.stop = Some(stop.flag.clone());
    let mut progress = crate::progress::Progress::new(plan.steps, plan.start_step);
    let trained = modelc_runtime::train::train(training.exe.as_mut(), &mut plan, &mut run, &mut |s| progress.step(s));
    progress.finish();
    match trained {
        Err(why) => {
            report.plain_error(&format!("training: {why}"));
            EXIT_INPUT
        }
        Ok(Outcome::Stopped { step }) => {
            let (signal, code) = stop.received().unwrap_or(("a stop request", 130));
            eprintln!(
                "stopped by {signal} after step {step} of {steps}: checkpoint step-{step} written; continue with `modelc train {} --recipe {} --resume {}`",
                path.display(),
                target.recipe.as_deref().unwrap_or("tiny"),
                dir.display()
            );
            code
        }
        Ok(Outcome::Diverged(d)) => {
            let found = match (args.detect_anomaly, training.step.take()) {
                (true, Some(step)) if d.withheld => {
                    Some(crate::train::anomaly::locate(step, training.exe.as_mut(), &instance, &plan, d.step))
                }
                _ => None,
            };
            report.plain_error(&divergence_message(&d, &dir, &w, found, args.detect_anomaly));
            EXIT_INPUT
        }
        Ok(Outcome::Finished) => finish(&mut training, backend.as_ref(), &w, &dir, report),
    }
}

/// A fresh run directory, or the resumed one with the executable restored from its
/// newest intact checkpoint (and the plan moved to the step after it).
#[allow(clippy::too_many_arguments)]
fn open_run(
    dir: &Path,
    args: &TrainArgs,
    fingerprint: &run_dir::Fingerprint,
    instance: &modelc_compiler::elab::instance::Instance,
    w: &modelc_compiler::Workload,
    seed: u64,
    training: &mut crate::train::Training,
    plan: &mut modelc_runtime::train::Plan,
) -> Result<RunDir, String> {
    if args.resume.is_none() {
        let params = crate::train::initial_params(instance, w, seed)?;
        crate::train::write_params(training.exe.as_mut(), params, "the initial parameters")?;
        return RunDir::create(dir, fingerprint, args.overwrite);
    }
    let (run, resumed, notes) = RunDir::resume(dir, fingerprint)?;
    for note in notes {
        eprintln!("note: {note}");
    }
    let from = format!("`{}`", dir.join(format!("step-{}.safetensors", resumed.step)).display());
    crate::train::write_params(training.exe.as_mut(), resumed.params, &from)?;
    let state_from = format!("`{}`", dir.join(format!("step-{}.optimizer.safetensors", resumed.step)).display());
    crate::train::write_state(training.exe.as_mut(), &training.state, resumed.state, &state_from)?;
    if let (Some(ls), Some((scale, clean))) = (plan.loss_scale.as_mut(), resumed.loss_scale) {
        (ls.scale, ls.clean) = (scale, clean);
    }
    (plan.start_step, plan.optimizer_step) = (resumed.step + 1, resumed.optimizer_step);
    if resumed.step >= plan.steps {
        eprintln!("the run in {} is complete ({} steps); rewriting its final weights", dir.display(), resumed.step);
    } else {
        eprintln!("resuming from step {} in {}", resumed.step, dir.display());
    }
    Ok(run)
}

fn divergence_message(
    d: &Divergence,
    dir: &Path,
    w: &modelc_compiler::Workload,
    found: Option<Result<Option<String>, String>>,
    detect: bool,
) -> String {
    let checkpoint = match d.last_checkpoint {
        Some(s) => format!("the last good checkpoint is {}", dir.join(format!("step-{s}.safetensors")).display()),
        None => "no checkpoint was written before it".to_string(),
    };
    let mut msg = format!(
        "training diverged at step {}: {}; the step was {}; {checkpoint}",
        d.step,
        d.what,
        if d.withheld { "not applied" } else { "applied" }
    );
    match found {
        Some(Ok(Some(op))) => msg.push_str(&format!("\n  {op}")),
        Some(Ok(None)) => msg.push_str(
            "\n  every op of the step's forward and backward stayed finite (re-run through the interpreter): the gradient norm overflowed in the update",
        ),
        Some(Err(why)) => msg.push_str(&format!("\n  --detect-anomaly could not re-run the step: {why}")),
        None if detect => msg.push_str("\n  --detect-anomaly: the step was applied, so it cannot be re-run as it was"),
        None => msg.push_str("\n  help: `--detect-anomaly` re-runs the step through the interpreter to find the first op whose output went non-finite"),
    }
    let lr = w.recipe.optimizer.lr;
    let clip = if w.recipe.clip.is_none() { ", add `clip = 1.0`" } else { "" };
    msg.push_str(&format!("\n  help: lower the learning rate (now {lr}){clip}, or train in f32"));
    msg
}

/// `final.safetensors`: the plain weights to start from, or to run; a LoRA recipe with
/// `merge = true` folds its adapters in first.
fn finish(
    training: &mut crate::train::Training,
    backend: &dyn modelc_compiler::backend::Backend,
    w: &modelc_compiler::Workload,
    dir: &Path,
    report: &Reporter,
) -> i32 {
    let finished =
        modelc_runtime::train::read_params(training.exe.as_mut(), &training.params).and_then(|mut tensors| {
            let merged = match (w.recipe.merge, w.lora()) {
                (true, Some(lora)) => {
                    crate::merge::merge(backend, &mut tensors, lora.scale())
                        .map_err(|e| format!("merging the adapters: {e}"))?;
                    true
                }
                _ => false,
            };
            let file = dir.join("final.safetensors");
            modelc_runtime::checkpoint::save(&file, &tensors)?;
            eprintln!("final weights{} in {}", if merged { " (adapters merged)" } else { "" }, file.display());
            Ok(())
        });
    match finished {
        Ok(()) => EXIT_OK,
        Err(why) => {
            report.plain_error(&why);
            EXIT_INPUT
        }
    }
}
