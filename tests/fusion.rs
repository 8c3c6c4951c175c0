//! Fusion's property: random graphs of elementwise ops, reductions and softmaxes over
//! broadcast shapes give the same f64 values fused and unfused on the Kernel IR executor,
//! and the same as the Graph IR interpreter.

use modelc_compiler::backend::kernel::{compile, Rounding};
use modelc_compiler::graph::parse::parse;
use modelc_compiler::interp::{self, tensor::Tensor};
use modelc_compiler::kernel::lower::lower;
use modelc_compiler::passes::fusion;
use modelc_runtime::executable::{CallOptions, Executable, HostTensor};
use proptest::prelude::*;
use std::collections::HashMap;

/// Shapes that broadcast to `[2, 3, 4]`, as the inputs and every value have.
const SHAPES: [&str; 6] = ["[2, 3, 4]", "[3, 4]", "[4]", "[2, 3, 1]", "[2, 1, 4]", "[1, 3, 4]"];

fn dims(shape: &str) -> Vec<usize> {
    shape.trim_matches(['[', ']']).split(", ").map(|d| d.parse().expect("dim")).collect()
}

fn broadcast(a: &[usize], b: &[usize]) -> Vec<usize> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            da.max(db)
        })
        .collect()
}

fn text(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// One random op: (kind, operand choices, axis).
type Choice = (u8, usize, usize, usize);

/// The Graph IR text of a random program over the six inputs.
fn program(choices: &[Choice]) -> String {
    let mut lines = Vec::new();
    let mut shapes: Vec<Vec<usize>> = Vec::new();
    for (i, s) in SHAPES.iter().enumerate() {
        lines.push(format!("%{i}: f64{s} = input \"x{i}\""));
        shapes.push(dims(s));
    }
    for &(kind, a, b, axis) in choices {
        let (a, b) = (a % shapes.len(), b % shapes.len());
        let id = shapes.len();
        let (sa, sb) = (shapes[a].clone(), shapes[b].clone());
        let (line, shape) = match kind % 7 {
            0 => {
                let op = ["tanh", "sigmoid", "neg", "abs", "sin", "exp"][axis % 6];
                // exp of a bounded value only: tanh first.
                if op == "exp" {
                    (format!("%{id}: f64{} = tanh %{a}", text(&sa)), sa)
                } else {
                    (format!("%{id}: f64{} = {op} %{a}", text(&sa)), sa)
                }
            }
            1..=3 => {
                let op = ["add", "mul", "sub", "max", "min"][(axis + kind as usize) % 5];
                let out = broadcast(&sa, &sb);
                (format!("%{id}: f64{} = {op} %{a}, %{b}", text(&out)), out)
            }
            4 => {
                // A reduction keeping its axis, so it broadcasts back.
                let ax = axis % sa.len();
                let kind = ["sum", "mean", "max", "min", "var", "logsumexp"][(axis / 3) % 6];
                let mut out = sa.clone();
                out[ax] = 1;
                (format!("%{id}: f64{} = {kind} %{a} axes=[{ax}] keepdim=true", text(&out)), out)
            }
            5 => {
                let ax = axis % sa.len();
                let op = if axis % 2 == 0 { "softmax" } else { "log_softmax" };
                (format!("%{id}: f64{} = {op} %{a} axis={ax}", text(&sa)), sa)
            }
            _ => {
                let out = broadcast(&[2, 3, 4], &sa);
                (format!("%{id}: f64{} = broadcast %{a} [2, 3, 4]", text(&out)), out)
            }
        };
        lines.push(line);
        shapes.push(shape);
    }
    let n = shapes.len();
    // The last three values, and one from the middle, are the outputs.
    let outs: Vec<String> = [n - 1, n.saturating_sub(2), n.saturating_sub(3), SHAPES.len() + (n - SHAPES.len()) / 2]
        .iter()
        .map(|i| format!("%{}", (*i).max(SHAPES.len())))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    lines.push(format!("return {}", outs.join(", ")));
    lines.join("\n") + "\n"
}

fn inputs(seed: u64) -> Vec<(String, HostTensor)> {
    let mut state = seed.wrapping_add(1);
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
    };
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let shape = dims(s);
            let n = shape.iter().product();
            (format!("x{i}"), HostTensor::new(shape, (0..n).map(|_| next()).collect()))
        })
        .collect()
}

fn run_kernel(graph: &modelc_compiler::graph::Graph, inputs: &[(String, HostTensor)]) -> Vec<Vec<f64>> {
    let returns: Vec<(String, modelc_compiler::graph::ValueId)> =
        graph.outputs.iter().enumerate().map(|(i, v)| (format!("o{i}"), *v)).collect();
    let program = lower(graph, &returns).unwrap_or_else(|e| panic!("lowering: {e}\n{graph}"));
    let mut exe = compile(Vec::new(), vec![("p".into(), program)], Rounding::F64).expect("compiles");
    let ins = inputs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    exe.call("p", ins, CallOptions::default()).expect("runs").into_iter().map(|(_, t)| t.data).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fused_and_unfused_agree_with_the_interpreter(
        choices in prop::collection::vec((0u8..7, 0usize..64, 0usize..64, 0usize..64), 2..14),
        seed in 0u64..1000,
    ) {
        let text = program(&choices);
        let graph = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        modelc_compiler::graph::verify::verify(&graph).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let fused = fusion::run(graph.clone()).expect("fusion");
        let xs = inputs(seed);
        let a = run_kernel(&fused, &xs);
        let b = run_kernel(&graph, &xs);
        let named: HashMap<String, Tensor> =
            xs.iter().map(|(k, v)| (k.clone(), Tensor::new(v.shape.clone(), v.data.clone()))).collect();
        let values = interp::run(&graph, &named, &HashMap::new(), &interp::Options::default()).expect("interp");
        for (k, o) in graph.outputs.iter().enumerate() {
            let want = &values[o.0 as usize].data;
            for ((x, y), z) in a[k].iter().zip(&b[k]).zip(want) {
                let close = |p: f64, q: f64| p == q || (p - q).abs() <= 1e-12 * p.abs().max(q.abs()).max(1.0) || (p.is_nan() && q.is_nan());
                prop_assert!(close(*x, *y), "fused {x} vs unfused {y}\n{text}\n{fused}");
                prop_assert!(close(*y, *z), "unfused {y} vs interpreter {z}\n{text}");
            }
        }
    }
}

/// The generated programs do fuse: over many of them, a good share of the values live
/// inside groups (they read values several consumers share, so not all can).
#[test]
fn the_generated_programs_fuse() {
    let (mut grouped, mut total) = (0, 0);
    for n in 0..64usize {
        let choices: Vec<Choice> = (0..10).map(|i| ((n + i * 3) as u8 % 7, n * 7 + i, n + i * 5, n * 3 + i)).collect();
        let graph = fusion::run(parse(&program(&choices)).expect("parses")).expect("fusion");
        total += graph.nodes.iter().filter(|n| !n.op.is_leaf()).count();
        grouped += graph.groups.iter().map(|g| g.nodes().count()).sum::<usize>();
    }
    assert!(grouped * 3 > total, "only {grouped} of {total} nodes fused");
}
