//! The reference interpreter against independent oracles: hand-computed values and naive
//! re-implementations written here, the f64 oracle against rounded-to-dtype runs on every
//! example, and the loss of an untrained model against ln(vocab).

mod common;

use common::*;
use modelc_compiler::graph::Graph;
use modelc_compiler::interp::tensor::Tensor;
use modelc_compiler::interp::{run, Options, Precision};
use std::collections::HashMap;

fn run_all(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
    precision: Precision,
) -> Vec<Tensor> {
    let options = Options { precision, ..Options::default() };
    let values = run(graph, inputs, params, &options).unwrap_or_else(|e| panic!("{e}"));
    graph.outputs.iter().map(|o| values[o.0 as usize].clone()).collect()
}

#[test]
fn rms_norm_matches_the_formula() {
    let graph = compile(
        "t.model",
        "use std.nn.RMSNorm\n\nmodel M() {\n  norm = RMSNorm(4, eps: 1e-6)\n\n  forward(x: [B, 4]) -> [B, 4] {\n    return norm(x)\n  }\n}\n",
        None,
    );
    let x = Tensor::new(vec![1, 4], vec![1.0, 2.0, 3.0, 4.0]);
    let w = Tensor::new(vec![4], vec![1.0, 0.5, 2.0, -1.0]);
    let out =
        run_all(&graph, &HashMap::from([("x".into(), x)]), &HashMap::from([("norm.weight".into(), w)]), Precision::F64);
    let rms = ((1.0 + 4.0 + 9.0 + 16.0) / 4.0 + 1e-6_f64).sqrt();
    let want = [1.0 / rms, 2.0 * 0.5 / rms, 3.0 * 2.0 / rms, -4.0 / rms];
    for (a, b) in out[0].data.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

/// A naive attention written from the definition, for comparison.
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    h: usize,
    hkv: usize,
    t: usize,
    hd: usize,
    window: Option<usize>,
) -> Vec<f64> {
    let mut out = vec![0.0; h * t * hd];
    for hi in 0..h {
        let kh = hi * hkv / h;
        for i in 0..t {
            let allowed: Vec<usize> = (0..=i).filter(|&j| window.is_none_or(|w| i - j < w)).collect();
            let scores: Vec<f64> = allowed
                .iter()
                .map(|&j| {
                    (0..hd).map(|c| q[(hi * t + i) * hd + c] * k[(kh * t + j) * hd + c]).sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
            for (&j, s) in allowed.iter().zip(&scores) {
                for c in 0..hd {
                    out[(hi * t + i) * hd + c] += (s - m).exp() / z * v[(kh * t + j) * hd + c];
                }
            }
        }
    }
    out
}

#[test]
fn causal_grouped_query_attention_with_a_window_matches_a_naive_one() {
    let graph = compile(
        "t.model",
        "model M() {\n  forward(q: [1, 4, 5, 3], k: [1, 2, 5, 3], v: [1, 2, 5, 3]) -> [1, 4, 5, 3] {\n    return attention(q, k, v, causal: true, window: 3)\n  }\n}\n",
        None,
    );
    let mut rng = Lcg(7);
    let mut tensor = |shape: Vec<usize>| {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|_| rng.next()).collect())
    };
    let (q, k, v) = (tensor(vec![1, 4, 5, 3]), tensor(vec![1, 2, 5, 3]), tensor(vec![1, 2, 5, 3]));
    let want = naive_attention(&q.data, &k.data, &v.data, 4, 2, 5, 3, Some(3));
    let ins = HashMap::from([("q".into(), q), ("k".into(), k), ("v".into(), v)]);
    let out = run_all(&graph, &ins, &HashMap::new(), Precision::F64);
    for (a, b) in out[0].data.iter().zip(&want) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn moe_routing_follows_gshard_priority_and_drops_past_capacity() {
    // 4 tokens, 2 experts, top-1, capacity factor 0.5: C = ceil(0.5 * 1 * 4 / 2) = 1 slot.
    let graph = compile(
        "t.model",
        "model M() {\n  forward(logits: [4, 2], x: [4, 3]) -> [4, 3] {\n    route = moe_route(logits, k: 1, capacity: 0.5)\n    return moe_combine(route, moe_dispatch(route, x))\n  }\n}\n",
        None,
    );
    // Tokens 0 and 2 prefer expert 0, tokens 1 and 3 expert 1: only the first of each
    // pair gets the one slot; the others come back as zero (the residual carries them).
    let logits = Tensor::new(vec![4, 2], vec![2.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 3.0]);
    let x = Tensor::new(vec![4, 3], (0..12).map(|i| i as f64 + 1.0).collect());
    let out = run_all(
        &graph,
        &HashMap::from([("logits".into(), logits), ("x".into(), x.clone())]),
        &HashMap::new(),
        Precision::F64,
    );
    // Top-1 renormalised weight is 1, so kept tokens come back unchanged.
    assert_eq!(&out[0].data[0..3], &x.data[0..3]);
    assert_eq!(&out[0].data[3..6], &x.data[3..6]);
    assert_eq!(&out[0].data[6..12], &[0.0; 6]);
}

#[test]
fn an_untrained_llama_predicts_uniformly() {
    let path = "examples/llama.model";
    let source = std::fs::read_to_string(root().join(path)).expect("example");
    let graph = compile(path, &source, Some("tiny"));
    let ins = inputs(&graph, 1);
    let logits = &run_all(&graph, &ins, &params(&graph, 0.02, 2), Precision::F64)[0];
    assert_eq!(logits.shape, vec![2, 6, 256]);
    // Cross-entropy of near-zero logits is close to ln(256).
    let mut loss = 0.0;
    for row in logits.data.chunks(256) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        loss += lse - row[3];
    }
    let loss = loss / 12.0;
    assert!((loss - 256f64.ln()).abs() < 0.05, "loss {loss}");
}

/// Every example's `tiny` graph runs, and rounding every value to f32 stays within
/// 1e-4 (relative to the output's scale) of the f64 oracle.
#[test]
fn f32_runs_agree_with_the_f64_oracle_on_every_example() {
    for path in model_files("examples") {
        let source = std::fs::read_to_string(root().join(&path)).expect("example");
        if !source.contains("\nrecipe tiny") {
            // minilm: its f32 run is checked against sentence-transformers (tests/minilm.rs).
            continue;
        }
        let graph = compile(&path, &source, Some("tiny"));
        let (ins, ps) = (inputs(&graph, 3), params(&graph, 0.05, 4));
        let oracle = run_all(&graph, &ins, &ps, Precision::F64);
        let native = run_all(&graph, &ins, &ps, Precision::Native);
        for (a, b) in oracle.iter().zip(&native) {
            assert!(a.data.iter().all(|x| x.is_finite()), "{path}: non-finite output");
            let scale = a.data.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-6);
            let err = a.data.iter().zip(&b.data).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(err / scale < 1e-4, "{path}: f32 differs from f64 by {err} (scale {scale})");
        }
    }
}

/// The worked example: 5 tokens, 3 experts, top-1, router probabilities given;
/// Σ f_i P_i = 0.432, so E · Σ f_i P_i = 1.296.
#[test]
fn moe_balance_matches_the_worked_example() {
    let graph = compile(
        "t.model",
        "model M() {\n  forward(logits: [5, 3]) -> [] {\n    return moe_balance(moe_route(logits, k: 1, capacity: none))\n  }\n}\n",
        None,
    );
    let probs = [[0.7, 0.2, 0.1], [0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]];
    // Logits whose softmax is exactly these probabilities.
    let logits = Tensor::new(vec![5, 3], probs.iter().flatten().map(|p: &f64| p.ln()).collect());
    let out = run_all(&graph, &HashMap::from([("logits".into(), logits)]), &HashMap::new(), Precision::F64);
    assert!((out[0].data[0] - 1.296).abs() < 1e-12, "{}", out[0].data[0]);
}

/// Routing against a naive per-token loop written here: top-2 of 6 tokens over 3 experts
/// with one slot per expert (capacity 0.25), so later assignments are dropped.
#[test]
fn moe_routing_matches_a_naive_per_token_loop() {
    let graph = compile(
        "t.model",
        "model M() {\n  forward(logits: [6, 3], x: [6, 2]) -> [6, 2] {\n    route = moe_route(logits, k: 2, capacity: 0.25)\n    return moe_combine(route, moe_dispatch(route, x) * 2.0)\n  }\n}\n",
        None,
    );
    let mut rng = Lcg(21);
    let logits: Vec<f64> = (0..18).map(|_| 2.0 * rng.next()).collect();
    let x: Vec<f64> = (0..12).map(|_| rng.next()).collect();
    // C = ceil(0.25 · 2 · 6 / 3) = 1. First choices in token order, then second choices.
    let cap = 1;
    let mut used = [0usize; 3];
    let mut want = vec![0.0; 12];
    let prefs: Vec<Vec<(usize, f64)>> = (0..6)
        .map(|t| {
            let row = &logits[t * 3..t * 3 + 3];
            let z: f64 = row.iter().map(|l| l.exp()).sum();
            let mut p: Vec<(usize, f64)> = row.iter().map(|l| l.exp() / z).enumerate().collect();
            p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let top = &p[..2];
            let s = top[0].1 + top[1].1;
            top.iter().map(|&(e, w)| (e, w / s)).collect()
        })
        .collect();
    // Every token's first choice in token order, then every second choice.
    for rank in [0, 1] {
        for (t, choices) in prefs.iter().enumerate() {
            let (e, w) = choices[rank];
            if used[e] < cap {
                used[e] += 1;
                for j in 0..2 {
                    want[t * 2 + j] += w * 2.0 * x[t * 2 + j];
                }
            }
        }
    }
    let ins =
        HashMap::from([("logits".into(), Tensor::new(vec![6, 3], logits)), ("x".into(), Tensor::new(vec![6, 2], x))]);
    let out = run_all(&graph, &ins, &HashMap::new(), Precision::F64);
    for (a, b) in out[0].data.iter().zip(&want) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    assert!(want.iter().filter(|&&v| v == 0.0).count() >= 2, "some assignments should be dropped");
}

/// Counts and bounds measured against a symbolic dim pass `check` (they fit some
/// lengths) and are checked when the run binds the dim: an error, never a panic.
#[test]
fn counts_and_bounds_beyond_bound_dims_are_run_errors() {
    // (forward's parameters, its body, the inputs' shapes, what the error names)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, Vec<usize>)>, &'a str);
    let cases: [Case; 5] = [
        ("x: [B, T]", "v, i = topk(x, k: 5)\n    return mean(v)", vec![("x", vec![2, 3])], "topk"),
        ("x: [B, T]", "return mean(slice(x, axis: 1, start: 0, end: 4))", vec![("x", vec![2, 3])], "slice"),
        (
            "logits: [N, E], x: [N, 4]",
            "route = moe_route(logits, k: 3)\n    return mean(moe_combine(route, moe_dispatch(route, x)))",
            vec![("logits", vec![4, 2]), ("x", vec![4, 4])],
            "moe_route",
        ),
        (
            "x: [A, T], i: i32[C, 2]",
            "return mean(gather(x, i, axis: 1))",
            vec![("x", vec![2, 3]), ("i", vec![3, 2])],
            "gather",
        ),
        (
            "q: [1, H, 3, 4], k: [1, G, 3, 4]",
            "return mean(attention(q, k, k))",
            vec![("q", vec![1, 3, 3, 4]), ("k", vec![1, 2, 3, 4])],
            "attention",
        ),
    ];
    for (params, body, shapes, what) in cases {
        let source = format!("model M() {{\n  forward({params}) -> [] {{\n    {body}\n  }}\n}}\n");
        let graph = compile("t.model", &source, None);
        let inputs: HashMap<String, Tensor> = shapes
            .into_iter()
            .map(|(name, shape)| {
                let n = shape.iter().product();
                (name.to_string(), Tensor::new(shape, vec![0.0; n]))
            })
            .collect();
        let result = run(&graph, &inputs, &HashMap::new(), &Options::default());
        match result {
            Err(e) => assert!(e.0.contains(what), "{body}: {e}"),
            Ok(_) => panic!("{body} ran with a count or bound beyond its bound dim"),
        }
    }
}
