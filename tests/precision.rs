//! Mixed precision: the precision pass's casts, f16 underflow and what loss scaling does
//! about it, dynamic loss scaling under forced overflow, and f16 training tracking f32.

mod common;

use common::*;
use modelc_compiler::autodiff::{differentiate_scaled, LOSS_SCALE};
use modelc_compiler::graph::op::{Op, Reduce};
use modelc_compiler::graph::types::DType;
use modelc_compiler::graph::Graph;
use modelc_compiler::interp::tensor::Tensor;
use modelc_compiler::interp::{run, Options, Precision};
use modelc_compiler::passes::precision::mixed;
use std::collections::HashMap;
use std::process::Command;

fn arg_dtypes(g: &Graph, i: usize) -> Vec<DType> {
    g.nodes[i].args.iter().map(|a| g.ty(*a).dtype).collect()
}

#[test]
fn the_pass_runs_contractions_low_and_statistics_in_f32() {
    let source = std::fs::read_to_string(root().join("examples/llama.model")).expect("llama");
    let forward = compile("examples/llama.model", &source, Some("tiny"));
    let g = mixed(&forward, DType::F16).expect("mixed");
    let (mut matmuls, mut reductions) = (0, 0);
    for (i, n) in g.nodes.iter().enumerate() {
        match &n.op {
            Op::MatMul | Op::Attention { .. } => {
                matmuls += 1;
                assert!(arg_dtypes(&g, i).iter().all(|d| *d == DType::F16), "{} at %{i}", n.op.name());
                assert_eq!(n.ty.dtype, DType::F16);
            }
            Op::Reduce { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::CrossEntropy { .. } => {
                reductions += 1;
                assert!(arg_dtypes(&g, i).iter().all(|d| !d.is_float() || *d == DType::F32), "%{i}");
            }
            Op::Param { .. } => assert_eq!(n.ty.dtype, DType::F32, "master weights stay f32"),
            _ => {}
        }
    }
    assert!(matmuls > 10 && reductions > 4, "{matmuls} contractions, {reductions} reductions");
    assert_eq!(g.ty(g.outputs[0]).dtype, DType::F32);
    // A parameter used by several contractions is cast once.
    let casts_of_embed = g.nodes.iter().filter(|n| matches!(n.op, Op::Cast { .. }) && n.scope == "embed").count();
    assert!(casts_of_embed <= 1);
    // The reduction statistics of the norms are f32 even though the residual stream is.
    assert!(g.nodes.iter().any(|n| matches!(n.op, Op::Reduce { kind: Reduce::Mean, .. }) && n.ty.dtype == DType::F32));
}

/// The gradient of every parameter, unscaled, of `graph` run with `loss_scale`.
fn grads(graph: &Graph, precision: Precision, scale: f64) -> HashMap<String, Vec<f64>> {
    let mut ins = inputs(graph, 3);
    ins.insert(LOSS_SCALE.to_string(), Tensor::scalar(scale));
    let params = params(graph, 1.0, 4);
    let options = Options { precision, ..Options::default() };
    let values = run(graph, &ins, &params, &options).unwrap_or_else(|e| panic!("{e}"));
    graph
        .grads
        .iter()
        .map(|(n, id)| (n.clone(), values[id.0 as usize].data.iter().map(|g| g / scale).collect()))
        .collect()
}

#[test]
fn f16_gradients_underflow_without_loss_scaling_and_survive_with_it() {
    let path = "tests/precision/underflow.model";
    let source = std::fs::read_to_string(root().join(path)).expect("fixture");
    let forward = compile(path, &source, None);
    // The oracle: the same model without the precision pass, in f64.
    let exact = grads(&differentiate_scaled(forward.clone()).expect("grad"), Precision::F64, 1.0);
    let graph = differentiate_scaled(mixed(&forward, DType::F16).expect("mixed")).expect("grad");
    let unscaled = grads(&graph, Precision::Native, 1.0);
    let scaled = grads(&graph, Precision::Native, 65536.0);
    let w1 = &exact["w1"];
    assert!(w1.iter().all(|g| *g != 0.0 && g.abs() < 1e-6), "the f64 gradients are tiny but not zero: {:?}", &w1[..4]);
    let zeros = |g: &[f64]| g.iter().filter(|x| **x == 0.0).count();
    // Unscaled, every cotangent below 2^-24 became 0 in f16: the gradient is lost.
    assert_eq!(zeros(&unscaled["w1"]), w1.len(), "{:?}", &unscaled["w1"][..4]);
    // Scaled by 2^16, none is lost but those that even scaled are below f16's resolution,
    // and the gradient is accurate to f16's precision.
    let tiny = 4.0 * 2f64.powi(-24) / 65536.0;
    assert!(scaled["w1"].iter().zip(w1).all(|(s, e)| *s != 0.0 || e.abs() < tiny));
    assert!(zeros(&scaled["w1"]) < w1.len() / 20);
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let err: Vec<f64> = scaled["w1"].iter().zip(w1).map(|(a, b)| a - b).collect();
    assert!(norm(&err) < 1e-2 * norm(w1), "relative error {}", norm(&err) / norm(w1));
}

fn metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics");
    text.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
}

fn train(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_modelc")).current_dir(root()).arg("train").args(args).output();
    let out = out.expect("running modelc");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn overflowing_steps_are_skipped_and_the_scale_halves() {
    let dir = std::env::temp_dir().join(format!("modelc-overflow-{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    train(&[
        "tests/train/overflow.model",
        "--recipe",
        "overflow",
        "--steps",
        "16",
        "--out",
        &d,
        "--checkpoint-every",
        "1",
    ]);
    let m = metrics(&dir);
    let first_applied = m.iter().position(|l| l["skipped"] == false).expect("the scale comes down to one that fits");
    assert!(first_applied >= 2, "1e9 overflows f16 at first");
    for (i, l) in m.iter().enumerate().take(first_applied) {
        assert_eq!(l["skipped"], true);
        assert_eq!(l["loss_scale"].as_f64(), Some(1e9 / 2f64.powi(i as i32)), "step {}", i + 1);
        assert!(l["loss"].as_f64().expect("loss").is_finite(), "the loss itself is f32 and finite");
    }
    // From then on, each step uses the scale the previous one left: halved after a skip,
    // held after an applied step (growth only after 1000 clean steps).
    for w in m[first_applied..].windows(2) {
        let (prev, next) = (w[0]["loss_scale"].as_f64().expect("scale"), w[1]["loss_scale"].as_f64().expect("scale"));
        assert_eq!(next, if w[0]["skipped"] == true { prev / 2.0 } else { prev });
    }
    // Training goes on: most later steps apply (a later overflow may still skip one).
    let applied = m[first_applied..].iter().filter(|l| l["skipped"] == false).count();
    assert!(2 * applied >= m.len() - first_applied, "{applied} of {} later steps applied", m.len() - first_applied);
    // A skipped step leaves the parameters and optimizer state exactly as they were.
    let read = |step: usize| std::fs::read(dir.join(format!("step-{step}.safetensors"))).expect("checkpoint");
    let read_opt = |step: usize| std::fs::read(dir.join(format!("step-{step}.optimizer.safetensors"))).expect("state");
    for step in 2..=first_applied {
        assert_eq!(read(step), read(1), "parameters changed in skipped step {step}");
        assert_eq!(read_opt(step), read_opt(1));
    }
    assert_ne!(read(first_applied + 1), read(first_applied));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn f16_training_tracks_f32() {
    let base = std::env::temp_dir().join(format!("modelc-f16-{}", std::process::id()));
    let (a, b) = (base.join("f32"), base.join("f16"));
    for (recipe, dir) in [("tiny", &a), ("tiny_f16", &b)] {
        train(&["examples/llama.model", "--recipe", recipe, "--steps", "30", "--out", &dir.to_string_lossy()]);
    }
    let last = |dir: &std::path::Path| {
        let m = metrics(dir);
        m[m.len() - 5..].iter().map(|l| l["loss"].as_f64().expect("loss")).sum::<f64>() / 5.0
    };
    let (f32_loss, f16_loss) = (last(&a), last(&b));
    assert!((f16_loss - f32_loss).abs() < 0.05 * f32_loss, "f32 {f32_loss}, f16 {f16_loss}");
    assert!(metrics(&b).iter().all(|l| l["loss_scale"].as_f64().is_some() && l["skipped"].is_boolean()));
    let _ = std::fs::remove_dir_all(&base);
}
