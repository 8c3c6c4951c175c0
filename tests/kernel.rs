//! The Kernel IR and its reference executor against the Graph IR interpreter: every
//! example's training step trained on both (bit for bit in practice; within 1e-6 at
//! native precision and 1e-12 in f64, as promised), `run` and greedy cached `generate`
//! alike, the printed Kernel IR parsing back, the planned memory peak equal to the
//! measured one, and what fusion saves in bytes moved.

mod common;

use common::*;
use modelc_compiler::backend::interp::Interp;
use modelc_compiler::backend::kernel::{KernelExecutable, Rounding};
use modelc_compiler::backend::{Backend, KernelReference, Program};
use modelc_compiler::kernel::{self, KernelProgram};
use modelc_runtime::executable::{CallOptions, Executable, HostTensor};
use std::path::PathBuf;

/// An example recipe, built as `modelc train` builds it.
struct Built {
    instance: modelc_compiler::elab::instance::Instance,
    graph: modelc_compiler::graph::Graph,
    w: modelc_compiler::Workload,
}

fn build(file: &str, recipe: &str, lowering: modelc_compiler::Lowering) -> Built {
    let path = root().join(file);
    let text = std::fs::read_to_string(&path).expect("example");
    let mut program = modelc_compiler::load(modelc_grammar::SourceFile::new(file.to_string(), text), &path)
        .unwrap_or_else(|e| panic!("{file}: {:?}", e.error));
    let target = modelc_compiler::Target { recipe: Some(recipe.into()), ..Default::default() };
    let instance = modelc_compiler::instantiate(&mut program, &target).expect("instance");
    let graph = modelc_compiler::elab::forward::elaborate(&program, &instance).expect("graph");
    let w = modelc_compiler::workload(&program, &target, None, None).expect("workload");
    let graph = modelc_compiler::lower(graph, &w, lowering).expect("lowered");
    Built { instance, graph, w }
}

/// Trains `steps` steps on `backend` (from the declared initialisers, seed 1): every
/// metrics row and the final parameters.
fn train(file: &str, recipe: &str, backend: &dyn Backend, steps: u64) -> (Vec<serde_json::Value>, Vec<Vec<f64>>) {
    let b = build(file, recipe, modelc_compiler::Lowering::Training);
    let tokens = modelc::train::token_inputs(&b.graph);
    let mut training = modelc::train::compile(backend, b.graph, &b.instance, &b.w, false).expect("compiles");
    let params = modelc::train::init_params(&b.instance, 1);
    modelc::train::write_params(training.exe.as_mut(), params, "the initial parameters").expect("params");
    let r = &b.w.recipe;
    let dir = std::env::temp_dir().join(format!(
        "modelc-kernel-{}-{}-{recipe}-{}",
        std::process::id(),
        file.replace('/', "_"),
        backend.name()
    ));
    let fingerprint = modelc_runtime::run_dir::Fingerprint {
        file: file.into(),
        model: String::new(),
        recipe_name: recipe.into(),
        recipe: String::new(),
        seed: 1,
        data_name: "builtin".into(),
        data: String::new(),
        steps,
    };
    let mut run = modelc_runtime::run_dir::RunDir::create(&dir, &fingerprint, true).expect("run dir");
    let mut plan = modelc_runtime::train::Plan {
        steps,
        start_step: 1,
        optimizer_step: 0,
        accumulate: r.accumulate.max(1) as usize,
        batch: b.w.batch as usize,
        seq: b.w.seq as usize,
        seed: 1,
        token_inputs: tokens,
        batches: r.objective.batches.clone(),
        corpus: modelc_runtime::data::Corpus::builtin(),
        schedule: modelc_runtime::schedule::Schedule { peak: r.optimizer.lr, total: steps, phases: r.schedule.clone() },
        optimizer: r.optimizer.kind.clone(),
        loss_scale: r.precision.loss_scale(),
        max_skipped: 1000,
        checkpoint_every: None,
        params: training.params.clone(),
        state: training.state.clone(),
        stop: None,
    };
    let ended = modelc_runtime::train::train(training.exe.as_mut(), &mut plan, &mut run, &mut |_| {});
    assert_eq!(ended, Ok(modelc_runtime::train::Outcome::Finished), "{file} {recipe} on {}", backend.name());
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics");
    let rows = text.lines().map(|l| serde_json::from_str(l).expect("row")).collect();
    let weights = modelc_runtime::train::read_params(training.exe.as_mut(), &training.params)
        .expect("read")
        .into_values()
        .map(|(_, d)| d)
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    (rows, weights)
}

/// The difference relative to the values, and absolute below 1: a weight that is
/// numerical noise around zero (a bias before a norm, whose gradient is zero but for
/// rounding) is compared by how far it moved, not by its relative change.
fn relative(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs()).max(1.0)
    }
}

/// The largest relative difference between two runs: every number of every row (the
/// throughput and the interpreter-measured activation peak aside) and every weight.
fn worst(a: &(Vec<serde_json::Value>, Vec<Vec<f64>>), b: &(Vec<serde_json::Value>, Vec<Vec<f64>>)) -> f64 {
    let mut worst = 0.0f64;
    assert_eq!(a.0.len(), b.0.len());
    for (x, y) in a.0.iter().zip(&b.0) {
        for (k, v) in x.as_object().expect("a row") {
            if k == "tokens_per_s" || k == "activations_peak_bytes" {
                continue;
            }
            let nums = |v: &serde_json::Value| -> Vec<f64> {
                match v {
                    serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_f64()).collect(),
                    other => other.as_f64().into_iter().collect(),
                }
            };
            for (p, q) in nums(v).into_iter().zip(nums(&y[k])) {
                worst = worst.max(relative(p, q));
            }
        }
    }
    for (p, q) in a.1.iter().zip(&b.1) {
        for (x, y) in p.iter().zip(q) {
            worst = worst.max(relative(*x, *y));
        }
    }
    worst
}

/// Ten training steps on the Kernel IR executor against the interpreter, at native
/// precision (within 1e-6) and in f64 (within 1e-12).
fn parity(file: &str, recipe: &str) {
    let native = worst(
        &train(file, recipe, &KernelReference { rounding: Rounding::Native }, 10),
        &train(file, recipe, &Interp::NATIVE, 10),
    );
    assert!(native <= 1e-6, "{file} {recipe}: native precision differs by {native:e}");
    let f64s = worst(
        &train(file, recipe, &KernelReference { rounding: Rounding::F64 }, 10),
        &train(file, recipe, &Interp::F64, 10),
    );
    assert!(f64s <= 1e-12, "{file} {recipe}: f64 differs by {f64s:e}");
    eprintln!("{file} {recipe}: 10 steps, native within {native:e}, f64 within {f64s:e}");
}

macro_rules! parity_tests {
    ($($name:ident: $file:expr, $recipe:expr;)*) => {
        $(
            #[test]
            fn $name() {
                parity($file, $recipe);
            }
        )*
    };
}

parity_tests! {
    trains_like_interp_llama: "examples/llama.model", "tiny";
    trains_like_interp_llama_f16: "examples/llama.model", "tiny_f16";
    trains_like_interp_gpt2: "examples/gpt2.model", "tiny";
    trains_like_interp_gpt2_recompute: "examples/gpt2.model", "tiny_recompute";
    trains_like_interp_mistral: "examples/mistral.model", "tiny";
    trains_like_interp_gemma2: "examples/gemma2.model", "tiny";
    trains_like_interp_mixtral: "examples/mixtral.model", "tiny";
    trains_like_interp_mixtral_upcycled: "examples/mixtral.model", "tiny_upcycled";
    trains_like_interp_deepseek_moe: "examples/deepseek_moe.model", "tiny";
    trains_like_interp_bert: "examples/bert.model", "tiny";
    trains_like_interp_t5: "examples/t5.model", "tiny";
    trains_like_interp_lora: "examples/lora.model", "tiny";
    trains_like_interp_ptuning: "examples/ptuning.model", "tiny";
    trains_like_interp_bf16_accumulate: "tests/train/optimizers.model", "bf16_accumulate";
    trains_like_interp_adafactor: "tests/train/optimizers.model", "adafactor_decay";
    trains_like_interp_sgd_nesterov: "tests/train/optimizers.model", "sgd_nesterov";
}

/// Every example's Kernel IR (the training step's programs, and the forward) prints,
/// parses back to the same program and verifies.
#[test]
fn kernel_ir_prints_and_parses_back() {
    for (file, recipe) in example_recipes() {
        let b = build(&file, &recipe, modelc_compiler::Lowering::Training);
        let programs = modelc::train::training_programs(b.graph, &b.instance, &b.w).expect("programs").programs;
        let forward = build(&file, &recipe, modelc_compiler::Lowering::Outputs).graph;
        for p in programs.iter().chain([&Program::of_outputs("forward", forward)]) {
            let k = kernel::lower::lower(&p.graph, &p.returns).unwrap_or_else(|e| panic!("{file} {}: {e}", p.name));
            kernel::verify::verify(&k).unwrap_or_else(|e| panic!("{file} {}: {e}", p.name));
            let text = k.to_string();
            let back = kernel::parse::parse(&text).unwrap_or_else(|e| panic!("{file} {}: {e}", p.name));
            assert_eq!(back.to_string(), text, "{file} {}: the text does not round-trip", p.name);
            assert_eq!(back, k, "{file} {}: parsed back to another program", p.name);
        }
    }
}

fn example_recipes() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in model_files("examples") {
        let source = std::fs::read_to_string(root().join(&file)).expect("example");
        for line in source.lines() {
            if let Some(rest) = line.strip_prefix("recipe tiny") {
                out.push((file.clone(), format!("tiny{}", rest.trim_end_matches(" {").trim())));
            }
        }
    }
    assert!(out.len() >= 13, "found only {} example recipes", out.len());
    out
}

/// The training step's Kernel IR of every example, as `emit --stage kernel` prints it: a
/// compiler change shows up as a reviewed diff of the kernels.
#[test]
fn kernel_ir_snapshots() {
    for file in model_files("examples") {
        let source = std::fs::read_to_string(root().join(&file)).expect("example");
        if !source.contains("recipe tiny ") {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelc"))
            .args(["emit", &file, "--stage", "kernel", "--recipe", "tiny"])
            .current_dir(root())
            .output()
            .expect("modelc");
        assert_eq!(out.status.code(), Some(0), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        insta::assert_snapshot!(format!("kernel__{}", snapshot_name(&file)), String::from_utf8_lossy(&out.stdout));
    }
}

/// A training step's buffers and inputs, for calling the executor directly.
struct Step {
    exe: KernelExecutable,
    inputs: Vec<(String, HostTensor)>,
}

fn kernel_step(file: &str, recipe: &str, fused: bool) -> Step {
    let b = build(file, recipe, modelc_compiler::Lowering::Training);
    let tokens = modelc::train::token_inputs(&b.graph);
    let t = modelc::train::training_programs(b.graph, &b.instance, &b.w).expect("programs");
    let mut lowered = Vec::new();
    for mut p in t.programs {
        if !fused {
            p.graph.groups.clear();
        }
        lowered.push((p.name.clone(), kernel::lower::lower(&p.graph, &p.returns).expect("lowers")));
    }
    let declared = t
        .buffers
        .iter()
        .map(|(n, ty)| (n.clone(), ty.dtype, ty.shape.iter().map(|d| d.as_constant().unwrap_or(0) as usize).collect()))
        .collect();
    let mut exe = modelc_compiler::backend::kernel::compile(declared, lowered, Rounding::Native).expect("compiles");
    let params = modelc::train::init_params(&b.instance, 1);
    modelc::train::write_params(&mut exe, params, "the initial parameters").expect("params");
    let r = &b.w.recipe;
    let (bs, ts) = (b.w.batch as usize, b.w.seq as usize);
    let (ins, targets) = r.objective.batches.batch(&modelc_runtime::data::Corpus::builtin(), bs, ts, 1, 0);
    let mut inputs: Vec<(String, HostTensor)> = tokens.into_iter().zip(ins).collect();
    inputs.push(("targets".into(), targets));
    inputs.push(("micro_scale".into(), HostTensor::scalar(1.0)));
    if let Some(ls) = r.precision.loss_scale() {
        inputs.push(("loss_scale".into(), HostTensor::scalar(ls.scale)));
    }
    Step { exe, inputs }
}

impl Step {
    fn run(&mut self) {
        let inputs = self.inputs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.exe.call("step", inputs, CallOptions { training: true, seed: 1, check_finite: false }).expect("step");
    }

    fn program(&self) -> &KernelProgram {
        self.exe.program("step").expect("step")
    }

    fn planned_peak(&self) -> u64 {
        let shapes: Vec<(&str, Vec<usize>)> = self.inputs.iter().map(|(k, v)| (k.as_str(), v.shape.clone())).collect();
        self.exe.planned("step", &shapes).expect("plan").peak
    }
}

/// The memory plan is what the executor does: its measured peak of live bytes equals the
/// plan's, on every example; and reuse makes the plan smaller than no reuse.
#[test]
fn the_planned_peak_is_the_measured_peak() {
    for (file, recipe) in example_recipes() {
        let mut step = kernel_step(&file, &recipe, true);
        let planned = step.planned_peak();
        step.run();
        let measured = step.exe.activations_peak().expect("measured");
        assert_eq!(planned, measured, "{file} {recipe}: planned {planned} B, measured {measured} B");
        let shapes: Vec<(&str, Vec<usize>)> = step.inputs.iter().map(|(k, v)| (k.as_str(), v.shape.clone())).collect();
        let placed = step.exe.planned("step", &shapes).expect("plan");
        assert!(placed.peak < placed.unplanned, "{file} {recipe}: no reuse ({} of {})", placed.peak, placed.unplanned);
        assert!(placed.arena >= placed.peak, "{file} {recipe}: the arena is smaller than the peak");
    }
}

/// For llama `tiny`'s training step, fusion at least halves the bytes that elementwise and
/// reduction kernels move (loads and stores counted as they run).
#[test]
fn fusion_halves_the_bytes_loop_kernels_move_on_llama() {
    let mut fused = kernel_step("examples/llama.model", "tiny", true);
    let mut unfused = kernel_step("examples/llama.model", "tiny", false);
    fused.run();
    unfused.run();
    let (f, u) = (fused.exe.moved(), unfused.exe.moved());
    eprintln!(
        "llama tiny step: loop kernels move {} B fused, {} B unfused ({:.2}); {} vs {} kernels",
        f.loops,
        u.loops,
        f.loops as f64 / u.loops as f64,
        fused.program().kernels.len(),
        unfused.program().kernels.len()
    );
    assert!(f.loops * 2 <= u.loops, "fused {} B, unfused {} B", f.loops, u.loops);
}

/// `run` (the objective's loss) and greedy generation with the KV cache give what the
/// interpreter gives.
#[test]
fn run_and_generate_match_the_interpreter() {
    let bin = env!("CARGO_BIN_EXE_modelc");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).current_dir(root()).output().expect("modelc");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (file, recipe) in example_recipes() {
        if file.contains("lora") || file.contains("ptuning") || recipe.contains("upcycled") {
            continue;
        }
        let a = run(&["run", &file, "--recipe", &recipe, "--json"]);
        let b = run(&["run", &file, "--recipe", &recipe, "--json", "--backend", "kernel"]);
        assert_eq!(a, b, "{file} {recipe}: run");
    }
    for file in ["examples/llama.model", "examples/gpt2.model", "examples/mixtral.model"] {
        let args = ["generate", file, "--prompt", "The model ", "--max-tokens", "12", "--temperature", "0", "--json"];
        let a = run(&args);
        let b = run(&[&args[..], &["--backend", "kernel"]].concat());
        assert_eq!(a, b, "{file}: generate");
    }
}

/// The reference executor sees Kernel IR only: none of its sources names the Graph IR.
#[test]
fn the_kernel_executor_never_imports_the_graph_ir() {
    let dir: PathBuf = root().join("compiler/src/backend/kernel");
    for entry in std::fs::read_dir(&dir).expect("dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("source");
        for banned in ["crate::graph", "graph::", "crate::interp", "crate::passes", "crate::autodiff"] {
            assert!(!text.contains(banned), "{} names `{banned}`", path.display());
        }
    }
}

/// Graph IR fixtures (`tests/kernel/*.ir`) fused and lowered: the Kernel IR each makes is
/// a snapshot (docs/kernel-ir.md walks through `rmsnorm`).
#[test]
fn kernel_fixtures() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/kernel"))
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ir"))
        .collect();
    files.sort();
    assert!(files.len() >= 3);
    for path in files {
        let text = std::fs::read_to_string(&path).expect("fixture");
        let graph = modelc_compiler::graph::parse::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let graph = modelc_compiler::passes::fusion::run(graph).expect("fusion");
        let returns: Vec<(String, modelc_compiler::graph::ValueId)> =
            graph.outputs.iter().enumerate().map(|(i, v)| (format!("out{i}"), *v)).collect();
        let k = kernel::lower::lower(&graph, &returns).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("kernel_fixture__{name}"), format!("{graph}\n{k}"));
    }
}

/// The table of the Kernel IR issue's report: per example recipe, the training step's
/// Graph IR nodes, kernels (loop nests, GEMMs, library routines), planned peak against
/// the sum of every temporary, and the bytes its kernels move fused and unfused.
/// `cargo test --release --test kernel kernel_report -- --ignored --nocapture`
#[test]
#[ignore]
fn kernel_report() {
    println!("| recipe | Graph IR nodes | kernels (loops / GEMMs / routines) unfused → fused | planned peak | no reuse | arena | loop bytes unfused → fused | all bytes unfused → fused |");
    println!("|---|---|---|---|---|---|---|---|");
    for (file, recipe) in example_recipes() {
        let nodes = {
            let b = build(&file, &recipe, modelc_compiler::Lowering::Training);
            let t = modelc::train::training_programs(b.graph, &b.instance, &b.w).expect("programs");
            t.programs[0].graph.nodes.iter().filter(|n| !n.op.is_leaf()).count()
        };
        let count = |p: &KernelProgram| {
            let (mut l, mut g, mut r) = (0, 0, 0);
            for k in &p.kernels {
                match &k.body {
                    kernel::KernelBody::Loops(_) => l += 1,
                    kernel::KernelBody::Call(kernel::Call::Gemm(_)) => g += 1,
                    kernel::KernelBody::Call(kernel::Call::Routine { .. }) => r += 1,
                }
            }
            format!("{l} / {g} / {r}")
        };
        let mut fused = kernel_step(&file, &recipe, true);
        let mut unfused = kernel_step(&file, &recipe, false);
        let shapes: Vec<(&str, Vec<usize>)> = fused.inputs.iter().map(|(k, v)| (k.as_str(), v.shape.clone())).collect();
        let placed = fused.exe.planned("step", &shapes).expect("plan");
        fused.run();
        unfused.run();
        let (f, u) = (fused.exe.moved(), unfused.exe.moved());
        let all = |m: modelc_compiler::backend::kernel::Moved| m.loops + m.gemms + m.routines;
        let kb = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
        println!(
            "| {} {recipe} | {nodes} | {} → {} | {} | {} | {} | {} → {} ({:.2}) | {} → {} ({:.2}) |",
            file.trim_start_matches("examples/").trim_end_matches(".model"),
            count(unfused.program()),
            count(fused.program()),
            kb(placed.peak),
            kb(placed.unplanned),
            kb(placed.arena),
            kb(u.loops),
            kb(f.loops),
            f.loops as f64 / u.loops as f64,
            kb(all(u)),
            kb(all(f)),
            all(f) as f64 / all(u) as f64,
        );
    }
}
