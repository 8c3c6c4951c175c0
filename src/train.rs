//! The training loop over the reference interpreter: the compiler's training graph (model,
//! objective, backward) run once per micro-batch, the runtime's optimizer and schedule
//! applied per step, one JSON line of metrics per step. Compiled backends will replace the
//! interpreter under the same loop.

use modelc_compiler::autodiff::LOSS_SCALE;
use modelc_compiler::elab::instance::Instance;
use modelc_compiler::elab::value::Value;
use modelc_compiler::graph::Graph;
use modelc_compiler::interp::{self, tensor::Tensor};
use modelc_runtime::init::{init, Init};
use modelc_runtime::loss_scale::LossScale;
use modelc_runtime::optim::{Kind, Optimizer};
use modelc_runtime::schedule::{Phase, Schedule};
use std::collections::HashMap;
use std::io::Write;

/// Parameters from their declared initialisers, each seeded by its name.
pub fn init_params(instance: &Instance, seed: u64) -> HashMap<String, Tensor> {
    let mut params = HashMap::new();
    instance.for_each_weight("", &[], &mut |name, shape, weight| {
        let (kind, args) = call_parts(&weight.init);
        let arg = |i: usize| args.get(i).copied().unwrap_or(0.0);
        let spec = match kind.as_str() {
            "zeros" => Init::Zeros,
            "ones" => Init::Ones,
            "constant" => Init::Constant(arg(0)),
            "uniform" => Init::Uniform { low: arg(0), high: arg(1) },
            "xavier" => Init::Xavier,
            "kaiming" => Init::Kaiming,
            "scaled_normal" => Init::ScaledNormal { std: arg(0), layers: arg(1) },
            _ => Init::Normal { std: if args.is_empty() { 0.02 } else { arg(0) } },
        };
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let data = init(&spec, name, &shape, seed);
        params.insert(name.to_string(), Tensor::new(shape, data));
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
pub fn initial_params(
    instance: &Instance,
    w: &modelc_compiler::Workload,
    seed: u64,
) -> Result<HashMap<String, Tensor>, String> {
    let mut params = init_params(instance, seed);
    let (base, upcycle) = match (&w.base, &w.upcycle) {
        (Some(base), _) => (base, None),
        (None, Some(up)) => (&up.path, Some(up.noise)),
        (None, None) => return Ok(params),
    };
    let path = std::path::Path::new(base);
    let loaded = if path.is_dir() {
        latest_checkpoint(path).map(|(_, p, _, _)| p.into_iter().map(|(k, t)| (k, (t.shape, t.data))).collect())
    } else {
        modelc_runtime::checkpoint::load(path)
    };
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
            Some(t) if &t.shape != shape => {
                wrong.push(format!("{name}: the checkpoint's is {shape:?}, the model's {:?}", t.shape))
            }
            Some(t) => {
                t.data.clone_from(data);
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
            if t.shape[axes..] != shape[..] {
                wrong.push(format!(
                    "{name}: the checkpoint's `{dense}` is {shape:?}, one expert's {:?}",
                    &t.shape[axes..]
                ));
                used.insert(dense);
                continue;
            }
            t.data = upcycled(data, t.data.len() / data.len(), noise, &name, seed);
            found.insert(name);
            used.insert(dense);
        }
        unexpected.retain(|n| !used.contains(n));
        fresh = params.keys().filter(|k| !found.contains(*k)).cloned().collect();
        fresh.sort();
    }
    let mut missing: Vec<String> = params
        .keys()
        .filter(|k| !found.contains(*k) && upcycle.is_none() && (w.trainable.is_none() || !w.is_trainable(k)))
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

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    }
}

/// `name(args...)` or a bare `name`, with numeric positional arguments.
fn call_parts(v: &Value) -> (String, Vec<f64>) {
    match v {
        Value::Call { name, args } => {
            (name.clone(), args.iter().filter(|(k, _)| k.is_none()).filter_map(|(_, v)| num(v)).collect())
        }
        Value::Symbol(name) => (name.clone(), Vec::new()),
        _ => (String::new(), Vec::new()),
    }
}

fn named(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Call { args, .. } => args.iter().find(|(k, _)| k.as_deref() == Some(key)).map(|(_, v)| v.clone()),
        _ => None,
    }
}

/// The recipe's optimizer (`adamw(lr: 3e-4, betas: (0.9, 0.95), weight_decay: 0.1, ...)`)
/// and its peak learning rate.
pub fn optimizer(entry: Option<&Value>) -> Result<(Optimizer, f64), String> {
    let default = Value::Call { name: "adamw".into(), args: Vec::new() };
    let v = entry.unwrap_or(&default);
    let (name, _) = call_parts(v);
    let f = |key: &str, d: f64| named(v, key).and_then(|x| num(&x)).unwrap_or(d);
    let betas = match named(v, "betas") {
        Some(Value::Tuple(b)) if b.len() == 2 => (num(&b[0]).unwrap_or(0.9), num(&b[1]).unwrap_or(0.999)),
        _ => (0.9, 0.999),
    };
    let no_decay = match named(v, "no_decay") {
        Some(Value::List(items)) => items.iter().map(|i| i.to_string().trim_matches('"').to_string()).collect(),
        _ => Vec::new(),
    };
    let kind = match name.as_str() {
        "sgd" => Kind::Sgd {
            momentum: f("momentum", 0.0),
            nesterov: matches!(named(v, "nesterov"), Some(Value::Bool(true))),
        },
        "adam" => Kind::Adam { beta1: betas.0, beta2: betas.1, eps: f("eps", 1e-8) },
        "adamw" => Kind::AdamW { beta1: betas.0, beta2: betas.1, eps: f("eps", 1e-8) },
        "adafactor" => Kind::Adafactor { beta2: f("beta2", 0.999), eps: f("eps", 1e-30) },
        other => return Err(format!("unknown optimizer `{other}`: sgd, adam, adamw or adafactor")),
    };
    let default_decay = if name == "adamw" { 0.01 } else { 0.0 };
    let default_lr = if name == "sgd" { 0.1 } else { 1e-3 };
    Ok((Optimizer::new(kind, f("weight_decay", default_decay), no_decay), f("lr", default_lr)))
}

/// `warmup(n) then cosine(to: x)` and the other phases, as a `Schedule`.
pub fn schedule(entry: Option<&Value>, peak: f64, total: u64) -> Result<Schedule, String> {
    fn phases(v: &Value, out: &mut Vec<Phase>) -> Result<(), String> {
        let (name, args) = call_parts(v);
        let to = named(v, "to").and_then(|x| num(&x)).unwrap_or(0.0);
        match name.as_str() {
            "then" => {
                if let Value::Call { args, .. } = v {
                    for (_, part) in args {
                        phases(part, out)?;
                    }
                }
            }
            "warmup" => out.push(Phase::Warmup { steps: args.first().copied().unwrap_or(0.0) as u64 }),
            "cosine" => out.push(Phase::Cosine { to }),
            "linear" => out.push(Phase::Linear { to }),
            "constant" => out.push(Phase::Constant),
            "inverse_sqrt" => out.push(Phase::InverseSqrt),
            "wsd" => out.push(Phase::Wsd { decay: named(v, "decay").and_then(|x| num(&x)).unwrap_or(0.1), to }),
            other => {
                return Err(format!("unknown schedule `{other}`: warmup, cosine, linear, constant, wsd, inverse_sqrt"))
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if let Some(v) = entry {
        phases(v, &mut out)?;
    }
    Ok(Schedule { peak, total, phases: out })
}

/// What the data pipeline makes of the corpus for the recipe's objective.
#[derive(Clone, Debug, PartialEq)]
pub enum Batches {
    /// Windows of `T + 1` tokens: inputs the first `T`, targets the last `T`.
    CausalLm,
    /// Windows of `T` tokens, masked; `dynamic` redraws the positions at every batch.
    Mlm { rate: f64, dynamic: bool, mask_id: u32 },
    /// Windows of `T` tokens with spans cut out: encoder input, decoder input, targets.
    SpanCorruption { noise: f64, mean_span: f64, first_sentinel: u32, sentinels: u32 },
}

impl Batches {
    /// From the recipe's `objective = ...`.
    pub fn from_recipe(v: Option<&Value>) -> Batches {
        match v {
            Some(v @ Value::Call { name, .. }) if name == "mlm" => Batches::Mlm {
                rate: named(v, "mask").and_then(|x| num(&x)).unwrap_or(0.15),
                dynamic: !matches!(named(v, "dynamic"), Some(Value::Bool(false))),
                mask_id: named(v, "mask_id").and_then(|x| num(&x)).map_or(modelc_runtime::tokens::MASK, |x| x as u32),
            },
            Some(Value::Symbol(name)) if name == "mlm" => {
                Batches::Mlm { rate: 0.15, dynamic: true, mask_id: modelc_runtime::tokens::MASK }
            }
            Some(v @ Value::Call { name, .. }) if name == "span_corruption" => {
                let f = |k: &str| named(v, k).and_then(|x| num(&x));
                Batches::SpanCorruption {
                    noise: f("noise").unwrap_or(0.15),
                    mean_span: f("mean_span").unwrap_or(3.0),
                    first_sentinel: f("first_sentinel").map_or(modelc_runtime::tokens::FIRST_SENTINEL, |x| x as u32),
                    sentinels: f("sentinels").map_or(32, |x| x as u32),
                }
            }
            _ => Batches::CausalLm,
        }
    }

    /// The model's integer inputs (in `forward` order) and the targets `[B, T]` of batch
    /// number `index`.
    pub fn batch(
        &self,
        corpus: &modelc_runtime::data::Corpus,
        b: usize,
        t: usize,
        seed: u64,
        index: u64,
    ) -> (Vec<Tensor>, Tensor) {
        let tensor = |rows: Vec<Vec<f64>>| Tensor::new(vec![b, t], rows.into_iter().flatten().collect());
        match self {
            Batches::CausalLm => {
                let windows = corpus.batch(b, t + 1, seed, index);
                let inputs = windows.iter().map(|w| w[..t].iter().map(|&x| x as f64).collect()).collect();
                let targets = windows.iter().map(|w| w[1..].iter().map(|&x| x as f64).collect()).collect();
                (vec![tensor(inputs)], tensor(targets))
            }
            Batches::Mlm { rate, dynamic, mask_id } => {
                let windows = corpus.batch(b, t, seed, index);
                let stream = if *dynamic { format!("mlm/{index}") } else { "mlm".to_string() };
                let mut rng = modelc_runtime::rng::Rng::for_name(seed, &stream);
                let (inputs, targets) = modelc_runtime::data::mlm(&windows, *rate, *mask_id, &mut rng);
                let inputs = inputs.iter().map(|w| w.iter().map(|&x| x as f64).collect()).collect();
                let targets = targets.iter().map(|w| w.iter().map(|&x| x as f64).collect()).collect();
                (vec![tensor(inputs)], tensor(targets))
            }
            Batches::SpanCorruption { noise, mean_span, first_sentinel, sentinels } => {
                let windows = corpus.batch(b, t, seed, index);
                let mut rng = modelc_runtime::rng::Rng::for_name(seed, &format!("spans/{index}"));
                let (mut src, mut dec, mut tgt) = (Vec::new(), Vec::new(), Vec::new());
                for w in &windows {
                    let (s, d, g) = modelc_runtime::data::span_corruption(
                        w,
                        *noise,
                        *mean_span,
                        *first_sentinel,
                        *sentinels,
                        &mut rng,
                    );
                    src.push(s.iter().map(|&x| x as f64).collect());
                    dec.push(d.iter().map(|&x| x as f64).collect());
                    tgt.push(g.iter().map(|&x| x as f64).collect());
                }
                (vec![tensor(src), tensor(dec)], tensor(tgt))
            }
        }
    }
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

/// The loss scale of `precision = mixed(..)`: `loss_scale: dynamic` (the default for
/// f16), `dynamic(init: 65536, growth_interval: 2000)`, or a number (static; bf16's
/// default is 1). `None` for f32 training.
pub fn loss_scale(entry: Option<&Value>) -> Result<Option<LossScale>, String> {
    let Some(Value::Call { name, args }) = entry.filter(|v| matches!(v, Value::Call { name, .. } if name == "mixed"))
    else {
        return Ok(None);
    };
    debug_assert_eq!(name, "mixed");
    let f16 = matches!(named(entry.unwrap_or(&Value::None), "compute"), Some(Value::Symbol(c)) if c == "f16");
    let dynamic = |init: f64, interval: u64| Ok(Some(LossScale::dynamic(init, interval)));
    match args.iter().find(|(k, _)| k.as_deref() == Some("loss_scale")).map(|(_, v)| v) {
        None if f16 => dynamic(65536.0, 2000),
        None => Ok(Some(LossScale::fixed(1.0))),
        Some(Value::Symbol(s)) if s == "dynamic" => dynamic(65536.0, 2000),
        Some(v @ Value::Call { name, .. }) if name == "dynamic" => {
            let init = named(v, "init").as_ref().and_then(num).unwrap_or(65536.0);
            let interval = named(v, "growth_interval").as_ref().and_then(num).unwrap_or(2000.0);
            dynamic(init, interval.max(1.0) as u64)
        }
        Some(v) => match num(v) {
            Some(x) if x > 0.0 => Ok(Some(LossScale::fixed(x))),
            _ => Err(format!(
                "`loss_scale` is `dynamic`, `dynamic(init:, growth_interval:)` or a positive number, not {v}"
            )),
        },
    }
}

/// Everything one training run needs.
pub struct Run<'a> {
    pub graph: &'a Graph,
    pub params: HashMap<String, Tensor>,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub clip: Option<f64>,
    pub accumulate: usize,
    pub steps: u64,
    pub batch: usize,
    pub seq: usize,
    pub seed: u64,
    /// The forward's integer inputs, in order (tokens; or encoder and decoder tokens).
    pub token_inputs: Vec<String>,
    pub batches: Batches,
    /// The first step to run: 1, or the step after a resumed checkpoint.
    pub start_step: u64,
    /// Write a checkpoint every this many steps (and always after the last).
    pub checkpoint_every: Option<u64>,
    pub out_dir: std::path::PathBuf,
    pub corpus: modelc_runtime::data::Corpus,
    /// Mixed precision's loss scale (the graph then takes it as the `loss_scale` input).
    pub loss_scale: Option<LossScale>,
}

/// Rounds to f32: master weights and optimizer state are f32, as checkpoints store them.
fn round_f32(params: &mut HashMap<String, Tensor>) {
    params.values_mut().flat_map(|t| t.data.iter_mut()).for_each(|x| *x = *x as f32 as f64);
}

/// Writes `step-N.safetensors` (parameters), `step-N.optimizer.safetensors` and the
/// `step-N.json` sidecar, each atomically; the sidecar last, so it only ever names files
/// that exist.
fn checkpoint(run: &Run, step: u64) -> Result<(), String> {
    use modelc_runtime::checkpoint::{save, write_atomically, Tensors};
    let params: Tensors = run.params.iter().map(|(k, t)| (k.clone(), (t.shape.clone(), t.data.clone()))).collect();
    let (opt_step, state) = run.optimizer.state();
    let (pfile, ofile) = (format!("step-{step}.safetensors"), format!("step-{step}.optimizer.safetensors"));
    save(&run.out_dir.join(&pfile), &params)?;
    save(&run.out_dir.join(&ofile), &state)?;
    let sidecar = serde_json::json!({
        "step": step,
        "seed": run.seed,
        "params": pfile,
        "optimizer": ofile,
        "optimizer_step": opt_step,
        // Data order and dropout are functions of (seed, step): nothing else to restore.
        "next_batch": step * run.accumulate as u64,
    });
    let mut sidecar = sidecar;
    if let Some(ls) = &run.loss_scale {
        sidecar["loss_scale"] = serde_json::json!({ "scale": ls.scale, "clean": ls.clean });
    }
    write_atomically(&run.out_dir.join(format!("step-{step}.json")), format!("{sidecar:#}\n").as_bytes())
        .map_err(|e| format!("writing the checkpoint sidecar: {e}"))
}

/// The latest checkpoint in `dir`: its step, parameters and optimizer state.
pub fn latest_checkpoint(
    dir: &std::path::Path,
) -> Result<(u64, HashMap<String, Tensor>, u64, modelc_runtime::checkpoint::Tensors), String> {
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
    let params = modelc_runtime::checkpoint::load(&file("params"))?
        .into_iter()
        .map(|(k, (s, d))| (k, Tensor::new(s, d)))
        .collect();
    let state = modelc_runtime::checkpoint::load(&file("optimizer"))?;
    Ok((step, params, sidecar["optimizer_step"].as_u64().unwrap_or(step), state))
}

/// Trains, writing one JSON object per step to `metrics`, and a progress line to stderr
/// every `every` steps. Returns the final parameters.
pub fn train(mut run: Run, metrics: &mut dyn Write, every: u64) -> Result<HashMap<String, Tensor>, String> {
    let (b, t) = (run.batch, run.seq);
    // A progress bar on a terminal, plain lines in logs.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(run.steps);
        bar.set_position(run.start_step - 1);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]") {
            bar.set_style(style);
        }
        bar
    });
    round_f32(&mut run.params);
    let keep = modelc_compiler::memory::kept(run.graph);
    for step in run.start_step..=run.steps {
        let started = std::time::Instant::now();
        let mut grads: HashMap<String, Vec<f64>> = HashMap::new();
        let (mut loss, mut extras) = (0.0, Vec::<(String, bool, Vec<f64>)>::new());
        let mut activations_peak = 0u64;
        for micro in 0..run.accumulate {
            let index = (step - 1) * run.accumulate as u64 + micro as u64;
            let (tokens, targets) = run.batches.batch(&run.corpus, b, t, run.seed, index);
            let mut inputs: HashMap<String, Tensor> = run.token_inputs.iter().cloned().zip(tokens).collect();
            inputs.insert("targets".to_string(), targets);
            if let Some(ls) = &run.loss_scale {
                inputs.insert(LOSS_SCALE.to_string(), Tensor::scalar(ls.scale));
            }
            // Dropout masks differ per step and micro-step, and replay in the backward.
            let options = interp::Options {
                precision: interp::Precision::Native,
                training: true,
                seed: run.seed ^ (step << 20) ^ micro as u64,
            };
            // Each value is freed after its last use; the peak of live activations is measured.
            let (values, peak) =
                interp::run_freeing(run.graph, &inputs, &run.params, &options, &keep).map_err(|e| e.0)?;
            activations_peak = activations_peak.max(peak);
            let scale = 1.0 / run.accumulate as f64;
            loss += values[run.graph.outputs[0].0 as usize].data[0] * scale;
            for (name, id) in &run.graph.grads {
                let g = &values[id.0 as usize].data;
                let acc = grads.entry(name.clone()).or_insert_with(|| vec![0.0; g.len()]);
                acc.iter_mut().zip(g).for_each(|(a, x)| *a += x * scale);
            }
            // Averaged over the micro-steps; a vector metric element by element.
            for (name, id) in run.graph.aux_losses.iter().chain(&run.graph.metrics) {
                let v = &values[id.0 as usize];
                let scaled = v.data.iter().map(|x| x * scale);
                match extras.iter_mut().find(|(n, _, _)| n == name) {
                    Some((_, _, x)) => x.iter_mut().zip(scaled).for_each(|(a, b)| *a += b),
                    None => extras.push((name.clone(), v.shape.is_empty(), scaled.collect())),
                }
            }
        }
        // Unscale; an inf/NaN gradient skips the step (and halves a dynamic scale).
        let used_scale = run.loss_scale.as_ref().map(|ls| ls.scale);
        if let Some(scale) = used_scale {
            grads.values_mut().flatten().for_each(|g| *g /= scale);
        }
        // Summed in name order: a HashMap's order differs between processes, and the norm
        // scales every update through clipping, so it must not depend on it.
        let mut names: Vec<&String> = grads.keys().collect();
        names.sort();
        let grad_norm = names.iter().flat_map(|n| &grads[*n]).map(|g| g * g).sum::<f64>().sqrt();
        let apply = match &mut run.loss_scale {
            Some(ls) => ls.update(grad_norm.is_finite()),
            None => true,
        };
        if let Some(clip) = run.clip.filter(|_| apply) {
            if grad_norm > clip {
                let s = clip / grad_norm;
                grads.values_mut().flatten().for_each(|g| *g *= s);
            }
        }
        let lr = run.schedule.lr(step);
        if apply {
            let mut flat: HashMap<String, (Vec<usize>, Vec<f64>)> =
                run.params.drain().map(|(k, v)| (k, (v.shape, v.data))).collect();
            run.optimizer.step(&mut flat, &grads, lr);
            run.params = flat.into_iter().map(|(k, (s, d))| (k, Tensor::new(s, d))).collect();
            round_f32(&mut run.params);
            run.optimizer.round_state_f32();
        }
        if step == run.steps || run.checkpoint_every.is_some_and(|n| n > 0 && step % n == 0) {
            checkpoint(&run, step)?;
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let tokens_per_s = (b * t * run.accumulate) as f64 / secs;
        let mut line = serde_json::json!({
            "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
            "activations_peak_bytes": activations_peak,
        });
        if let Some(scale) = used_scale {
            line["loss_scale"] = serde_json::json!(scale);
            line["skipped"] = serde_json::json!(!apply);
        }
        for (name, scalar, v) in &extras {
            line[name] =
                if *scalar { serde_json::json!(v.first().copied().unwrap_or(0.0)) } else { serde_json::json!(v) };
        }
        writeln!(metrics, "{line}").map_err(|e| format!("writing metrics: {e}"))?;
        match &bar {
            Some(bar) => {
                bar.set_message(format!("loss {loss:.4}  {tokens_per_s:.0} tokens/s"));
                bar.set_position(step);
            }
            None if step == 1 || step % every == 0 || step == run.steps => {
                eprintln!(
                    "step {step:>5}/{}  loss {loss:.4}  lr {lr:.2e}  grad_norm {grad_norm:.3}  {tokens_per_s:.0} tokens/s",
                    run.steps
                );
            }
            None => {}
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(run.params)
}
