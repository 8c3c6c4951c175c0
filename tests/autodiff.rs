//! Autodiff against f64 central finite differences: every example's tiny training graph
//! (model + objective + aux losses), and a fixture that routes every differentiable
//! primitive — attention with every mask, MoE routing through the router, cross-entropy
//! with ignored targets — into one loss.

mod common;

use common::*;
use modelc_compiler::autodiff::differentiate;
use modelc_compiler::graph::Graph;
use modelc_compiler::interp::tensor::Tensor;
use modelc_compiler::interp::{run, Options};
use modelc_compiler::objective::{apply, Objective};
use std::collections::HashMap;

fn loss(graph: &Graph, inputs: &HashMap<String, Tensor>, params: &HashMap<String, Tensor>) -> f64 {
    let values = run(graph, inputs, params, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    values[graph.outputs[0].0 as usize].data[0]
}

/// Compares autodiff's gradient with `(L(θ+ε) − L(θ−ε)) / 2ε` at `samples` entries.
fn check_gradients(path: &str, source: &str, recipe: Option<&str>, samples: usize) {
    let forward = compile(path, source, recipe);
    let training = apply(forward, Objective::CausalLm).expect("objective");
    let graph = differentiate(training).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut ins = inputs(&graph, 11);
    // One ignored target, so `ignore:` is on the path too.
    if let Some(t) = ins.get_mut("targets") {
        t.data[0] = -100.0;
    }
    let params = params(&graph, 0.3, 12);
    let values = run(&graph, &ins, &params, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Lcg(13);
    let names: Vec<&String> = graph.grads.iter().map(|(n, _)| n).collect();
    for _ in 0..samples {
        let name = names[((rng.next() + 1.0) / 2.0 * names.len() as f64) as usize % names.len()];
        let grad = &values[graph.grads.iter().find(|(n, _)| n == name).expect("grad").1 .0 as usize];
        let i = ((rng.next() + 1.0) / 2.0 * grad.numel() as f64) as usize % grad.numel();
        let eps = 1e-5;
        let mut plus = params.clone();
        plus.get_mut(name).expect("param").data[i] += eps;
        let mut minus = params.clone();
        minus.get_mut(name).expect("param").data[i] -= eps;
        let fd = (loss(&graph, &ins, &plus) - loss(&graph, &ins, &minus)) / (2.0 * eps);
        let ad = grad.data[i];
        assert!(
            (fd - ad).abs() <= 1e-6 + 1e-5 * fd.abs().max(ad.abs()),
            "{path}: d loss / d {name}[{i}]: autodiff {ad}, finite differences {fd}"
        );
    }
}

#[test]
fn every_differentiable_primitive_matches_finite_differences() {
    let path = "tests/elab/ok/gradients.model";
    let source = std::fs::read_to_string(root().join(path)).expect("fixture");
    check_gradients(path, &source, None, 60);
}

#[test]
fn every_example_matches_finite_differences() {
    for path in model_files("examples") {
        if path.contains("bert") || path.contains("t5") {
            // Their objectives (mlm, span corruption) come with the data pipeline.
            continue;
        }
        let source = std::fs::read_to_string(root().join(&path)).expect("example");
        if !source.contains("\nrecipe ") {
            // minilm: an embedding model without a training recipe.
            continue;
        }
        check_gradients(&path, &source, Some("tiny"), 12);
    }
}

/// Noisy gating in training: the backward pass sees the same noise as the forward (it is
/// keyed), so autodiff still matches finite differences, and the noise changes the route.
#[test]
fn noisy_gating_is_replayed_in_the_backward_pass() {
    let path = "tests/autodiff/noisy_moe.model";
    let source = std::fs::read_to_string(root().join(path)).expect("fixture");
    let graph = differentiate(compile(path, &source, None)).expect("grad");
    let ins = inputs(&graph, 21);
    let params = params(&graph, 0.5, 22);
    let training = Options { training: true, seed: 9, ..Options::default() };
    let eval = |p: &HashMap<String, Tensor>, o: &Options| run(&graph, &ins, p, o).unwrap_or_else(|e| panic!("{e}"));
    let values = eval(&params, &training);
    let at_inference = eval(&params, &Options::default());
    let out = graph.outputs[0].0 as usize;
    assert_ne!(values[out].data, at_inference[out].data, "noise is on in training");
    let mut rng = Lcg(5);
    for (name, id) in &graph.grads {
        let grad = &values[id.0 as usize];
        for _ in 0..4 {
            let i = ((rng.next() + 1.0) / 2.0 * grad.numel() as f64) as usize % grad.numel();
            let eps = 1e-5;
            let (mut plus, mut minus) = (params.clone(), params.clone());
            plus.get_mut(name).expect("param").data[i] += eps;
            minus.get_mut(name).expect("param").data[i] -= eps;
            let fd = (eval(&plus, &training)[out].data[0] - eval(&minus, &training)[out].data[0]) / (2.0 * eps);
            let ad = grad.data[i];
            assert!((fd - ad).abs() <= 1e-6 + 1e-5 * fd.abs().max(ad.abs()), "d/d {name}[{i}]: autodiff {ad}, fd {fd}");
        }
    }
}
