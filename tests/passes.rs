//! The Graph IR pass pipeline: fixtures (`tests/passes/<pass>/*.ir`, a `; pass: NAME`
//! header, the IR, and a snapshot of the pass's output, cranelift filetest style); the
//! text form's round trip on every example's graphs; and the pipeline's contract on every
//! example's tiny recipes: the interpreter gives bit-identical results on the optimised
//! graph, in f64 and at native precision, and the pipeline is a fixed point of CSE and DCE.

mod common;

use common::*;
use modelc_compiler::graph::parse::parse;
use modelc_compiler::graph::verify::verify;
use modelc_compiler::graph::Graph;
use modelc_compiler::interp::tensor::Tensor;
use modelc_compiler::interp::{self, Precision};
use modelc_compiler::passes::{self, kv_cache};
use modelc_compiler::{elab::forward::elaborate, instantiate, load, lower_unoptimized, workload, Lowering, Target};
use std::collections::HashMap;

/// Each fixture's pass runs (with `verify` on its input and output) and its output is a
/// snapshot. Reviewing a snapshot diff is reviewing what the pass does.
#[test]
fn pass_fixtures() {
    let mut count: HashMap<String, usize> = HashMap::new();
    for p in passes::PASSES {
        let dir = root().join("tests/passes").join(p.name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ir"))
            .collect();
        files.sort();
        for path in files {
            let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("fixture");
            let header = text.lines().next().unwrap_or_default();
            assert_eq!(header, format!("; pass: {}", p.name), "{}: the first line names the pass", path.display());
            let input = parse(&text).unwrap_or_else(|e| panic!("{}:{e}", path.display()));
            verify(&input).unwrap_or_else(|e| panic!("{}: the fixture itself is malformed: {e}", path.display()));
            let output = passes::run_verified(p, input.clone()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_ne!(output.to_string(), input.to_string(), "{}: the pass changed nothing", path.display());
            insta::assert_snapshot!(format!("passes__{}__{name}", p.name), output.to_string());
            *count.entry(p.name.to_string()).or_default() += 1;
        }
    }
    for p in passes::PASSES {
        assert!(count.get(p.name).copied().unwrap_or(0) >= 2, "pass `{}` needs at least two fixtures", p.name);
    }
}

/// An example at one of its `tiny*` recipes (or its defaults, without one).
struct Case {
    label: String,
    forward: Graph,
    w: modelc_compiler::Workload,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for file in model_files("examples") {
        let source = std::fs::read_to_string(root().join(&file)).expect("example");
        let mut recipes: Vec<Option<String>> = source
            .lines()
            .filter_map(|l| l.strip_prefix("recipe tiny"))
            .map(|rest| Some(format!("tiny{}", rest.trim_end_matches(" {").trim())))
            .collect();
        if recipes.is_empty() {
            recipes.push(None);
        }
        for recipe in recipes {
            out.push(case(&file, recipe.as_deref(), &[]));
        }
    }
    assert!(out.len() >= 13, "found only {} example recipes", out.len());
    // Dropout on (no tiny recipe has it): its masks must survive the pipeline.
    out.push(case("examples/gpt2.model", Some("tiny"), &[("drop", "0.1")]));
    out
}

fn case(file: &str, recipe: Option<&str>, sets: &[(&str, &str)]) -> Case {
    let path = root().join(file);
    let source = std::fs::read_to_string(&path).expect("example");
    let mut program =
        load(modelc_grammar::SourceFile::new(file, source), &path).unwrap_or_else(|e| panic!("{file}: {:?}", e.error));
    let sets = sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let target = Target { recipe: recipe.map(str::to_string), sets, ..Target::default() };
    let instance = instantiate(&mut program, &target).unwrap_or_else(|e| panic!("{file}: {}", e.diag.message));
    let forward = elaborate(&program, &instance).unwrap_or_else(|e| panic!("{file}: {}", e.diag.message));
    let w = workload(&program, &target, None, None).unwrap_or_else(|e| panic!("{file}: {}", e.diag.message));
    let mut label = format!("{file} {}", recipe.unwrap_or("(defaults)"));
    for (k, v) in &target.sets {
        label.push_str(&format!(" {k}={v}"));
    }
    Case { label, forward, w }
}

fn lowered(case: &Case, to: Lowering) -> Graph {
    lower_unoptimized(case.forward.clone(), &case.w, to).unwrap_or_else(|e| panic!("{}: {e}", case.label))
}

fn optimised(case: &Case, g: &Graph) -> Graph {
    passes::pipeline(g.clone()).unwrap_or_else(|e| panic!("{}: {e}", case.label))
}

/// print → parse → print is the identity, and the parsed graph verifies.
fn round_trip(label: &str, g: &Graph) {
    let text = g.to_string();
    let parsed = parse(&text).unwrap_or_else(|e| panic!("{label}: {e}\n{text}"));
    verify(&parsed).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(parsed.to_string(), text, "{label}: the text form does not parse back to itself");
}

#[test]
fn every_example_graph_parses_back() {
    let mut decode_steps = 0;
    for case in cases() {
        round_trip(&format!("{} forward", case.label), &case.forward);
        let outputs = lowered(&case, Lowering::Outputs);
        round_trip(&format!("{} outputs", case.label), &outputs);
        round_trip(&format!("{} outputs, optimised", case.label), &optimised(&case, &outputs));
        let training = lowered(&case, Lowering::Training);
        round_trip(&format!("{} training", case.label), &training);
        round_trip(&format!("{} training, optimised", case.label), &optimised(&case, &training));
        // Encoders have no decode step.
        if let Ok((step, _)) = kv_cache::decode_step(&optimised(&case, &outputs)) {
            round_trip(&format!("{} decode step", case.label), &step);
            decode_steps += 1;
        }
    }
    assert!(decode_steps >= 6, "only {decode_steps} decode steps");
}

/// Bit-for-bit equality of two runs' values.
fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    a.shape == b.shape && a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Every value a caller reads from a run: outputs, gradients, aux losses and metrics.
fn results(g: &Graph, values: &[Tensor]) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> =
        g.outputs.iter().enumerate().map(|(i, v)| (format!("output {i}"), values[v.0 as usize].clone())).collect();
    for (kind, list) in [("grad", &g.grads), ("aux_loss", &g.aux_losses), ("metric", &g.metrics)] {
        out.extend(list.iter().map(|(n, v)| (format!("{kind} {n}"), values[v.0 as usize].clone())));
    }
    out
}

/// The optimised graph's results equal the unoptimised graph's, bit for bit.
fn check_unchanged(label: &str, plain: &Graph, opt: &Graph, training: bool) {
    let inputs = inputs(plain, 5);
    let params = params(plain, 0.5, 9);
    for precision in [Precision::F64, Precision::Native] {
        let options = interp::Options { precision, training, seed: 3, check_finite: false };
        let run = |g: &Graph| interp::run(g, &inputs, &params, &options).unwrap_or_else(|e| panic!("{label}: {e}"));
        let (a, b) = (results(plain, &run(plain)), results(opt, &run(opt)));
        assert_eq!(a.len(), b.len(), "{label}");
        for ((name, x), (name2, y)) in a.iter().zip(&b) {
            assert_eq!(name, name2, "{label}");
            assert!(same_bits(x, y), "{label} ({precision:?}): {name} changed\n{:?}\n{:?}", x.data, y.data);
        }
    }
}

#[test]
fn the_pipeline_changes_no_result() {
    for case in cases() {
        // minilm is 22M parameters: its forward is enough here.
        let kinds: &[Lowering] =
            if case.label.contains("minilm") { &[Lowering::Outputs] } else { &[Lowering::Outputs, Lowering::Training] };
        for &to in kinds {
            let plain = lowered(&case, to);
            let opt = optimised(&case, &plain);
            assert!(opt.nodes.len() < plain.nodes.len(), "{}: the pipeline removed nothing", case.label);
            check_unchanged(&format!("{} {to:?}", case.label), &plain, &opt, to == Lowering::Training);
        }
    }
}

#[test]
fn the_pipeline_is_a_fixed_point_of_cse_and_dce() {
    for case in cases() {
        for to in [Lowering::Outputs, Lowering::Training] {
            let opt = optimised(&case, &lowered(&case, to));
            for name in ["cse", "dce"] {
                let p = passes::pass(name).expect("a pass");
                // Nodes only: a pass that moves nodes drops the fusion groups (made last).
                let mut again = passes::run_verified(p, opt.clone()).expect("runs");
                let mut opt = opt.clone();
                (again.groups, opt.groups) = (Vec::new(), Vec::new());
                assert_eq!(
                    again.to_string(),
                    opt.to_string(),
                    "{} {to:?}: `{name}` changed the optimised graph",
                    case.label
                );
            }
        }
    }
}

/// The redundancy the pipeline exists for, on the examples that have it.
#[test]
fn the_pipeline_removes_known_redundancy() {
    let all = cases();
    let find = |label: &str| all.iter().find(|c| c.label == label).unwrap_or_else(|| panic!("no {label}"));
    let count = |g: &Graph, name: &str| g.nodes.iter().filter(|n| n.op.name() == name).count();
    // `Activation` builds a GELU that SwiGLU does not read.
    let llama = find("examples/llama.model tiny");
    let plain = lowered(llama, Lowering::Outputs);
    assert!(count(&plain, "gelu") > 0);
    assert_eq!(count(&optimised(llama, &plain), "gelu"), 0);
    // The RoPE tables (one `cos` per attention call and per q and k) are built once.
    assert!(count(&plain, "cos") >= 4);
    assert_eq!(count(&optimised(llama, &plain), "cos"), 1);
    // Three `moe_load` statistics per MoE layer become one.
    for label in ["examples/mixtral.model tiny", "examples/deepseek_moe.model tiny"] {
        let case = find(label);
        let plain = lowered(case, Lowering::Training);
        let opt = optimised(case, &plain);
        let layers = count(&plain, "moe_route");
        assert_eq!(count(&plain, "moe_load"), 3 * layers, "{label}");
        assert_eq!(count(&opt, "moe_load"), layers, "{label}");
    }
    // Dropout is never merged, even where the interpreter would give the same mask.
    let gpt2 = find("examples/gpt2.model tiny drop=0.1");
    let plain = lowered(gpt2, Lowering::Training);
    assert!(count(&plain, "dropout") > 0);
    assert_eq!(count(&optimised(gpt2, &plain), "dropout"), count(&plain, "dropout"));
    // Recomputed copies stay (the memory saving of `recompute`).
    let recompute = find("examples/gpt2.model tiny_recompute");
    let opt = optimised(recompute, &lowered(recompute, Lowering::Training));
    assert!(opt.nodes.iter().any(|n| n.scope.ends_with(".recompute") && n.op.name() == "matmul"));
}

/// The activation peak `inspect` predicts (and the interpreter measures) for a training
/// step at the recipe's batch and sequence.
fn peak(g: &Graph, w: &modelc_compiler::Workload) -> u64 {
    let (batch, seq) = (w.batch, w.seq);
    let bind = move |s: &str| Some(if s == "B" { batch } else { seq });
    let sizes: Vec<u64> = g.nodes.iter().map(|n| g.eval_dim(&n.ty.bytes(), &bind).unwrap_or(0).max(0) as u64).collect();
    modelc_compiler::memory::peak_bytes(g, &sizes, &modelc_compiler::memory::kept(g))
}

/// No rewrite keeps a value alive longer than the value it replaces, except that CSE
/// merges batch-independent values (constants, position tables, masks), which then live
/// to their last reader: bytes next to the activations, so at most 0.1% of the peak.
#[test]
fn the_pipeline_does_not_raise_the_activation_peak() {
    for case in cases() {
        let plain = lowered(&case, Lowering::Training);
        let (before, after) = (peak(&plain, &case.w), peak(&optimised(&case, &plain), &case.w));
        eprintln!("{}: peak {before} -> {after}", case.label);
        assert!(
            after <= before + before / 1000,
            "{}: the activation peak grew from {before} to {after} bytes",
            case.label
        );
    }
}
