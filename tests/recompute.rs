//! Activation checkpointing (`recompute = blocks`): the gradients are bit-identical to the
//! run that keeps every activation (in f64), and the interpreter's measured peak of live
//! activation buffers drops at least 2x on GPT-2's tiny recipe. `inspect` predicts the
//! same peaks from the graph.

use modelc_compiler::graph::Graph;
use modelc_compiler::interp::{self, tensor::Tensor};
use modelc_compiler::{elab::forward::elaborate, instantiate, load, workload, Lowering, Target};
use std::collections::HashMap;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

type Training = (Graph, HashMap<String, Tensor>, HashMap<String, Tensor>);

/// The training graph of `recipe` (with `recompute` set, when given), its parameters and
/// one batch.
fn training(example: &str, recipe: &str, sets: &[(&str, &str)], recompute: Option<&str>) -> Training {
    let path = root().join("examples").join(example);
    let text = std::fs::read_to_string(&path).expect("example");
    let mut program = load(modelc_grammar::SourceFile::new(path.display().to_string(), text), &path)
        .unwrap_or_else(|e| panic!("{example}: {:?}", e.error));
    let target = Target {
        recipe: Some(recipe.into()),
        sets: sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Target::default()
    };
    let instance = instantiate(&mut program, &target).expect("instance");
    let graph = elaborate(&program, &instance).expect("graph");
    let mut w = workload(&program, &target, Some(4), Some(32)).expect("workload");
    if let Some(name) = recompute {
        w.recipe.recompute = Some(name.into());
    }
    let graph = modelc_compiler::lower(graph, &w, Lowering::Training).expect("training graph");
    let params =
        modelc::train::init_params(&instance, 3).into_iter().map(|(k, (s, d))| (k, Tensor::new(s, d))).collect();
    let corpus = modelc_runtime::data::Corpus::builtin();
    let (tokens, targets) = modelc_runtime::batches::Batches::CausalLm.batch(&corpus, 4, 32, 3, 0);
    let tensor = |t: modelc_runtime::executable::HostTensor| Tensor::new(t.shape, t.data);
    let mut inputs: HashMap<String, Tensor> =
        modelc::train::token_inputs(&graph).into_iter().zip(tokens.into_iter().map(tensor)).collect();
    inputs.insert("targets".into(), tensor(targets));
    (graph, params, inputs)
}

fn grads(graph: &Graph, params: &HashMap<String, Tensor>, inputs: &HashMap<String, Tensor>) -> Vec<(String, Vec<f64>)> {
    // f64 throughout, training mode (dropout active, replayed by key).
    let options = interp::Options { training: true, seed: 11, ..interp::Options::default() };
    let keep = modelc_compiler::memory::kept(graph);
    let (values, _) = interp::run_freeing(graph, inputs, params, &options, &keep).expect("run");
    graph.grads.iter().map(|(n, id)| (n.clone(), values[id.0 as usize].data.clone())).collect()
}

#[test]
fn recomputed_gradients_are_bit_identical() {
    // GPT-2 with dropout on (the recomputed masks must be the forward's), and Llama (RoPE,
    // GQA, SwiGLU).
    for (example, sets) in [("gpt2.model", &[("drop", "0.1")][..]), ("llama.model", &[][..])] {
        let (plain, params, inputs) = training(example, "tiny", sets, None);
        // gpt2's own `tiny_recompute` recipe; llama's `tiny` with `recompute` set.
        let recomputed = match example {
            "gpt2.model" => training(example, "tiny_recompute", sets, None).0,
            _ => training(example, "tiny", sets, Some("blocks")).0,
        };
        assert!(recomputed.nodes.iter().any(|n| n.scope.ends_with(".recompute")), "{example}: nothing recomputed");
        let (a, b) = (grads(&plain, &params, &inputs), grads(&recomputed, &params, &inputs));
        assert_eq!(a.len(), b.len());
        for ((name, x), (name2, y)) in a.iter().zip(&b) {
            assert_eq!(name, name2);
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "{example}: {name} differs");
            assert!(x.iter().any(|v| *v != 0.0), "{example}: {name} has a zero gradient");
        }
    }
}

#[test]
fn recompute_halves_the_measured_activation_peak() {
    let peak = |recipe: &str| {
        let (graph, params, inputs) = training("gpt2.model", recipe, &[], None);
        let options =
            interp::Options { precision: interp::Precision::Native, training: true, seed: 1, check_finite: false };
        let keep = modelc_compiler::memory::kept(&graph);
        let (_, measured) = interp::run_freeing(&graph, &inputs, &params, &options, &keep).expect("run");
        // The static replay over the graph's types predicts the same number.
        let bytes: Vec<u64> = graph
            .nodes
            .iter()
            .map(|n| {
                let bind = |s: &str| Some(if s == "B" { 4 } else { 32 });
                graph.eval_dim(&n.ty.bytes(), &bind).unwrap_or(0) as u64
            })
            .collect();
        assert_eq!(modelc_compiler::memory::peak_bytes(&graph, &bytes, &keep), measured, "{recipe}");
        measured
    };
    let (without, with) = (peak("tiny"), peak("tiny_recompute"));
    eprintln!("gpt2 tiny (batch 4 x 32): activation peak {without} bytes, {with} with recompute = blocks");
    assert!(without as f64 >= 2.0 * with as f64, "{without} vs {with}");
}

#[test]
fn inspect_reports_activation_memory_with_and_without_recompute() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(root())
        .args(["inspect", "examples/gpt2.model", "--recipe", "tiny_recompute", "--json"])
        .output()
        .expect("running modelc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let m = &v["memory"];
    let (with, without) =
        (m["activations_peak_bytes"].as_u64(), m["activations_peak_bytes_without_recompute"].as_u64());
    let (Some(with), Some(without)) = (with, without) else { panic!("{m}") };
    assert!(without >= 2 * with, "{with} vs {without}");
}
