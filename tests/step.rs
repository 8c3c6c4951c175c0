//! The training step as programs behind one backend interface: every bad recipe entry is a
//! located diagnostic (`tests/recipes/err/`, snapshots); the `apply` graph reproduces
//! `modelc_runtime::optim` (the oracle) bit for bit for every optimizer, with clipping,
//! loss scaling and the non-finite skip; a training step moves the batch in and scalars
//! out, nothing else; backends that are not built say which cargo feature they need.

mod common;

use common::*;
use modelc_compiler::backend::{self, interp::Interp, Backend, Program};
use modelc_compiler::graph::dim::Dim;
use modelc_compiler::graph::types::{DType, TensorType};
use modelc_compiler::training::{apply_graph, grad_buffer, state_buffer, ApplySpec};
use modelc_runtime::executable::{CallOptions, HostTensor};
use modelc_runtime::loss_scale::LossScale;
use modelc_runtime::optim::{Kind, Optimizer};
use std::collections::HashMap;
use std::process::Command;

#[test]
fn bad_recipes_are_rejected_with_located_diagnostics() {
    let rejected = rejected("tests/recipes/err", None);
    assert!(rejected.len() >= 20, "fixtures missing: {}", rejected.len());
    for (name, stderr) in rejected {
        insta::assert_snapshot!(format!("recipes__{name}"), stderr);
    }
}

/// A deterministic stream of values in (-1, 1), some exactly zero.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let x = ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0;
        if self.0 % 17 == 0 {
            0.0
        } else {
            x as f32 as f64
        }
    }

    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn f32_type(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape.iter().map(|&d| Dim::constant(d as i64)).collect())
}

/// The host loop the `apply` graph replaced (PR history: `src/train.rs` before the middle
/// end): unscale, the norm in name order, the loss scale's verdict, clipping, the
/// optimizer, f32 rounding. Returns the norm and whether the step applied.
fn host_step(
    opt: &mut Optimizer,
    params: &mut HashMap<String, (Vec<usize>, Vec<f64>)>,
    mut grads: HashMap<String, Vec<f64>>,
    clip: Option<f64>,
    loss_scale: Option<&mut LossScale>,
    lr: f64,
) -> (f64, bool) {
    let used = loss_scale.as_ref().map(|ls| ls.scale);
    if let Some(s) = used {
        grads.values_mut().flatten().for_each(|g| *g /= s);
    }
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let norm = names.iter().flat_map(|n| &grads[*n]).map(|g| g * g).sum::<f64>().sqrt();
    let apply = match loss_scale {
        Some(ls) => ls.update(norm.is_finite()),
        None => true,
    };
    if let Some(clip) = clip.filter(|_| apply) {
        if norm > clip {
            let s = clip / norm;
            grads.values_mut().flatten().for_each(|g| *g *= s);
        }
    }
    if apply {
        opt.step(params, &grads, lr);
        params.values_mut().flat_map(|(_, d)| d.iter_mut()).for_each(|x| *x = *x as f32 as f64);
        opt.round_state_f32();
    }
    (norm, apply)
}

struct Case {
    kind: Kind,
    weight_decay: f64,
    no_decay: Vec<String>,
    clip: Option<f64>,
    loss_scale: Option<f64>,
}

/// Runs `steps` updates through the apply graph and through the oracle from the same
/// start; every parameter and state value must agree to the bit after each step.
fn agree(case: &Case, steps: u64, poison: Option<u64>) {
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("blocks.0.attn.wq.weight".into(), vec![6, 4]),
        ("blocks.0.norm.weight".into(), vec![4]),
        ("experts.w".into(), vec![3, 2, 5]),
        ("bias".into(), vec![5]),
    ];
    let mut rng = Stream(42);
    let mut host: HashMap<String, (Vec<usize>, Vec<f64>)> =
        shapes.iter().map(|(n, s)| (n.clone(), (s.clone(), rng.vec(s.iter().product(), 1.0)))).collect();
    let spec = ApplySpec {
        optimizer: case.kind.clone(),
        weight_decay: case.weight_decay,
        no_decay: case.no_decay.clone(),
        clip: case.clip,
        loss_scaled: case.loss_scale.is_some(),
    };
    let graph = apply_graph(&shapes, &spec).expect("apply graph");
    let norm_id = graph.outputs[0];
    let buffers: Vec<(String, TensorType)> = shapes.iter().map(|(n, s)| (n.clone(), f32_type(s))).collect();
    let program = Program { name: "apply".into(), graph, returns: vec![("grad_norm".into(), norm_id)] };
    let mut exe = Interp::NATIVE.compile(buffers, vec![program]).expect("compiles");
    for (name, (shape, data)) in &host {
        exe.write(name, HostTensor::new(shape.clone(), data.clone())).expect("write");
    }
    let mut opt = Optimizer::new(case.kind.clone(), case.weight_decay, case.no_decay.clone());
    let mut scale = case.loss_scale.map(|s| LossScale::dynamic(s, 2));
    let mut t = 0;
    for step in 1..=steps {
        let lr = 0.01 / step as f64;
        let grad_scale = case.loss_scale.unwrap_or(1.0);
        let mut grads: HashMap<String, Vec<f64>> =
            shapes.iter().map(|(n, s)| (n.clone(), rng.vec(s.iter().product(), grad_scale * 3.0))).collect();
        if poison == Some(step) {
            grads.get_mut("bias").expect("bias")[1] = f64::INFINITY;
        }
        for (name, shape) in &shapes {
            exe.write(&grad_buffer(name), HostTensor::new(shape.clone(), grads[name].clone())).expect("grad");
        }
        let mut inputs = vec![("lr", HostTensor::scalar(lr))];
        inputs.extend(case.kind.step_inputs(t + 1).map(|(k, v)| (k, HostTensor::scalar(v))));
        if let Some(ls) = &scale {
            inputs.push(("loss_scale", HostTensor::scalar(ls.scale)));
        }
        let out = exe.call("apply", inputs, CallOptions::default()).expect("apply runs");
        let (norm, applied) = host_step(&mut opt, &mut host, grads, case.clip, scale.as_mut(), lr);
        let got = out[0].1.data[0];
        assert!(
            got.to_bits() == norm.to_bits() || (got.is_nan() && norm.is_nan()),
            "{:?} step {step}: norm {got} vs {norm}",
            case.kind
        );
        assert_eq!(applied, poison != Some(step), "{:?}: the poisoned step must be skipped", case.kind);
        if applied {
            t += 1;
        }
        for (name, (_, want)) in &host {
            let have = exe.read(name).expect("read").data;
            let same = have.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{:?} step {step}: `{name}` differs\n apply {have:?}\n optim {want:?}", case.kind);
        }
        let (_, state) = opt.state();
        for (name, shape) in &shapes {
            for (prefix, _) in case.kind.state_of(shape) {
                let (buffer, key) = state_buffer(prefix, name);
                let have = exe.read(&buffer).expect("state").data;
                let want = state.get(&key).map(|(_, d)| d.clone()).unwrap_or_else(|| vec![0.0; have.len()]);
                let same = have.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{:?} step {step}: state `{key}` differs", case.kind);
            }
            let acc = exe.read(&grad_buffer(name)).expect("accumulator").data;
            assert!(acc.iter().all(|&x| x == 0.0), "the accumulator of `{name}` is reset");
        }
    }
}

#[test]
fn the_apply_graph_is_the_optimizer_bit_for_bit() {
    let adam = |eps| Kind::Adam { beta1: 0.9, beta2: 0.99, eps };
    let cases = [
        Case {
            kind: Kind::Sgd { momentum: 0.0, nesterov: false },
            weight_decay: 0.0,
            no_decay: vec![],
            clip: None,
            loss_scale: None,
        },
        Case {
            kind: Kind::Sgd { momentum: 0.9, nesterov: false },
            weight_decay: 0.01,
            no_decay: vec!["norm".into()],
            clip: Some(0.5),
            loss_scale: None,
        },
        Case {
            kind: Kind::Sgd { momentum: 0.9, nesterov: true },
            weight_decay: 0.01,
            no_decay: vec![],
            clip: Some(5.0),
            loss_scale: None,
        },
        Case { kind: adam(1e-8), weight_decay: 0.0, no_decay: vec![], clip: None, loss_scale: None },
        Case { kind: adam(1e-7), weight_decay: 0.05, no_decay: vec!["bias".into()], clip: Some(1.0), loss_scale: None },
        Case {
            kind: Kind::AdamW { beta1: 0.9, beta2: 0.95, eps: 1e-8 },
            weight_decay: 0.1,
            no_decay: vec!["norm".into(), "bias".into()],
            clip: Some(1.0),
            loss_scale: None,
        },
        Case {
            kind: Kind::Adafactor { beta2: 0.999, eps: 1e-30 },
            weight_decay: 0.0,
            no_decay: vec![],
            clip: None,
            loss_scale: None,
        },
        Case {
            kind: Kind::Adafactor { beta2: 0.99, eps: 1e-30 },
            weight_decay: 0.01,
            no_decay: vec![],
            clip: Some(0.7),
            loss_scale: None,
        },
    ];
    for case in &cases {
        agree(case, 4, None);
    }
}

#[test]
fn loss_scaling_unscales_and_skips_a_non_finite_step() {
    for kind in [
        Kind::AdamW { beta1: 0.9, beta2: 0.95, eps: 1e-8 },
        Kind::Sgd { momentum: 0.9, nesterov: false },
        Kind::Adafactor { beta2: 0.99, eps: 1e-30 },
    ] {
        let case = Case { kind, weight_decay: 0.1, no_decay: vec![], clip: Some(1.0), loss_scale: Some(1024.0) };
        agree(&case, 5, Some(3));
    }
}

/// Compiles the tiny recipe of `file` for training and returns the executable with the
/// compiled run's plan pieces (through the binary's library, as `modelc train` does).
fn compiled(file: &str, recipe: &str) -> (modelc::train::Training, modelc_compiler::Workload, Vec<String>) {
    let path = root().join(file);
    let text = std::fs::read_to_string(&path).expect("example");
    let mut program = modelc_compiler::load(modelc_grammar::SourceFile::new(file.to_string(), text), &path)
        .unwrap_or_else(|e| panic!("{file}: {:?}", e.error));
    let target = modelc_compiler::Target { recipe: Some(recipe.into()), ..Default::default() };
    let instance = modelc_compiler::instantiate(&mut program, &target).expect("instance");
    let graph = modelc_compiler::elab::forward::elaborate(&program, &instance).expect("graph");
    let w = modelc_compiler::workload(&program, &target, None, None).expect("workload");
    let graph = modelc_compiler::lower(graph, &w, modelc_compiler::Lowering::Training).expect("training graph");
    let tokens = modelc::train::token_inputs(&graph);
    let mut training = modelc::train::compile(&Interp::NATIVE, graph, &instance, &w, false).expect("compiles");
    let params = modelc::train::initial_params(&instance, &w, 1).expect("params");
    modelc::train::write_params(training.exe.as_mut(), params, "the initial parameters").expect("params written");
    (training, w, tokens)
}

#[test]
fn a_training_step_moves_the_batch_in_and_scalars_out() {
    for (file, recipe) in
        [("examples/llama.model", "tiny"), ("examples/llama.model", "tiny_f16"), ("examples/mixtral.model", "tiny")]
    {
        let (mut training, w, tokens) = compiled(file, recipe);
        let r = &w.recipe;
        let (b, t) = (w.batch as usize, w.seq as usize);
        let dir = std::env::temp_dir().join(format!("modelc-step-{}-{recipe}-{}", std::process::id(), file.len()));
        let fingerprint = modelc_runtime::run_dir::Fingerprint {
            file: file.to_string(),
            model: String::new(),
            recipe_name: recipe.to_string(),
            recipe: String::new(),
            seed: 1,
            data_name: "builtin".into(),
            data: String::new(),
            steps: 2,
        };
        let mut run = modelc_runtime::run_dir::RunDir::create(&dir, &fingerprint, true).expect("run dir");
        let plan = |steps: u64, start_step: u64| modelc_runtime::train::Plan {
            steps,
            start_step,
            optimizer_step: start_step - 1,
            accumulate: 1,
            batch: b,
            seq: t,
            seed: 1,
            token_inputs: tokens.clone(),
            batches: r.objective.batches.clone(),
            corpus: modelc_runtime::data::Corpus::builtin(),
            schedule: modelc_runtime::schedule::Schedule {
                peak: r.optimizer.lr,
                total: 100,
                phases: r.schedule.clone(),
            },
            optimizer: r.optimizer.kind.clone(),
            loss_scale: r.precision.loss_scale(),
            max_skipped: 20,
            checkpoint_every: None,
            params: Vec::new(),
            state: Vec::new(),
            stop: None,
        };
        // Two steps (the last one writes a checkpoint of nothing: no buffers are named).
        let before = training.exe.traffic();
        let ended = modelc_runtime::train::train(training.exe.as_mut(), &mut plan(2, 1), &mut run, &mut |_| {});
        assert_eq!(ended, Ok(modelc_runtime::train::Outcome::Finished));
        let metrics = std::fs::read(dir.join("metrics.jsonl")).expect("metrics");
        let moved = training.exe.traffic().since(&before);
        // In: token ids (i32) and targets (i32) per micro-step, the micro-step weight (f64),
        // the learning rate and the bias corrections (f64); under loss scaling the scale,
        // to the backward (f32) and to the update (f64).
        let scaled = usize::from(r.precision.loss_scale().is_some());
        let step_in = (2 * b * t * 4 + (1 + 1 + 2) * 8 + scaled * (4 + 8)) as u64;
        // Out: the loss, the aux losses and metrics (f32, a few vectors of experts), the norm.
        let step_out: u64 = 4 + 8 + 4 * metrics_floats(&metrics) as u64 / 2;
        assert_eq!(moved.calls, 4, "{file} {recipe}: one step and one apply call per step");
        assert_eq!(moved.to_device, 2 * step_in, "{file} {recipe}: {moved}");
        assert_eq!(moved.to_host, 2 * step_out, "{file} {recipe}: {moved}");
        let param_bytes: usize = training.exe.buffers().iter().map(|b| b.shape.iter().product::<usize>()).sum();
        assert!(moved.to_host < 1024 && (param_bytes as u64) > 100 * moved.to_host, "{file} {recipe}: {moved}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// The floats of the aux losses and metrics that the metric lines hold.
fn metrics_floats(metrics: &[u8]) -> usize {
    let fixed = ["step", "loss", "lr", "grad_norm", "tokens_per_s", "activations_peak_bytes", "loss_scale", "skipped"];
    String::from_utf8_lossy(metrics)
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).expect("json");
            row.as_object()
                .expect("object")
                .iter()
                .filter(|(k, _)| !fixed.contains(&k.as_str()))
                .map(|(_, v)| v.as_array().map_or(1, Vec::len))
                .sum::<usize>()
        })
        .sum()
}

#[test]
fn backends_not_built_name_their_feature() {
    for name in ["cpu", "cuda", "mlir"] {
        let why = backend::select(name).err().expect("not built");
        assert!(why.contains(&format!("cargo feature `{name}`")), "{why}");
    }
    let why = backend::select("interpp").err().expect("unknown");
    assert!(why.contains("did you mean `interp`?"), "{why}");
    assert_eq!(backend::select("interp").map(|b| b.name()).ok(), Some("interp"));
    let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(root())
        .args(["run", "examples/llama.model", "--recipe", "tiny", "--backend", "cuda"])
        .output()
        .expect("running modelc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cargo feature `cuda`") && !stderr.contains("panicked"), "{stderr}");
    // A name that is no backend at all is a bad flag value: exit 1, with a did-you-mean.
    let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(root())
        .args(["train", "examples/llama.model", "--steps", "1", "--backend", "interpp"])
        .output()
        .expect("running modelc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did you mean `interp`?"), "{stderr}");
}

/// The memory plan of a step covers what the interpreter then measures: its activations
/// (at each dtype's size, without the kept values) are at most the plan's intermediate
/// values (8 bytes an element, kept values and scratch included), and not far below it.
#[test]
fn the_memory_plan_covers_the_measured_peak() {
    for (file, recipe) in
        [("examples/llama.model", "tiny"), ("examples/gpt2.model", "tiny"), ("examples/t5.model", "tiny")]
    {
        let (mut training, w, tokens) = compiled(file, recipe);
        let (b, t) = (w.batch as usize, w.seq as usize);
        let mut shapes: Vec<(&str, Vec<usize>)> = tokens.iter().map(|n| (n.as_str(), vec![b, t])).collect();
        shapes.push(("targets", vec![b, t]));
        shapes.push(("micro_scale", Vec::new()));
        let plan = training.exe.plan("step", &shapes).expect("plan");
        let batches = w.recipe.objective.batches.clone();
        let (inputs, targets) = batches.batch(&modelc_runtime::data::Corpus::builtin(), b, t, 1, 0);
        let mut call: Vec<(&str, HostTensor)> = tokens.iter().map(String::as_str).zip(inputs).collect();
        call.push(("targets", targets));
        call.push(("micro_scale", HostTensor::scalar(1.0)));
        training.exe.call("step", call, Default::default()).expect("step");
        let measured = training.exe.activations_peak().expect("measured");
        assert!(plan.peak >= measured, "{file}: plan {plan:?} below the measured {measured}");
        assert!(plan.peak < 8 * measured, "{file}: plan {plan:?} far above the measured {measured}");
        assert_eq!(plan.inputs, (tokens.len() + 1) as u64 * (b * t) as u64 * 8 + 8, "{file}");
        let buffers: usize = training.exe.buffers().iter().map(|b| b.shape.iter().product::<usize>()).sum();
        assert_eq!(plan.buffers, buffers as u64 * 8, "{file}");
    }
}
