//! Property tests of the formatter and the parser's robustness.
//! - Generated programs, with every expression written fully parenthesised and comments
//!   in random places: `parse(fmt(x))` has the tree of `parse(x)`, fmt is idempotent and
//!   keeps every comment. Since the formatter prints the fewest parentheses precedence
//!   allows, this checks the precedence rules of both directions.
//! - Mutated copies of the examples (random edits with the language's own tokens): parsing
//!   never panics, every error is located inside the text, and whatever still parses
//!   round-trips.
//! - Semantically mutated examples (words and numbers swapped): the semantic stages
//!   report located errors or succeed; and mutated `forward`s that pass `check` also
//!   lower and run on tiny shapes without a panic.

mod common;

use common::*;
use modelc_compiler::graph::op::Op;
use modelc_compiler::interp::tensor::Tensor;
use modelc_grammar::{parse, SourceFile};
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::HashMap;

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..1000).prop_map(|n| n.to_string()),
        select(vec!["3e-4", "0.02", "1e-5", "50_257", "1.5E+3", "2.0"]).prop_map(String::from),
        select(vec!["x", "d", "heads", "B", "embed", "w_1", "_t", "repeat", "buffer"]).prop_map(String::from),
        select(vec![r#""a""#, r#""b c""#, r#""q\"x\\y\n""#, r#""*.attn.wq""#, r#""b t (h d) -> b h t d""#])
            .prop_map(String::from),
        select(vec!["true", "false", "none"]).prop_map(String::from),
    ]
}

const BINARY: &[&str] = &["**", "*", "/", "%", "@", "+", "-", "==", "!=", "<", "<=", ">", ">=", "and", "or"];

fn expr() -> impl Strategy<Value = String> {
    leaf().prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            (inner.clone(), select(BINARY), inner.clone()).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (select(vec!["-", "not "]), inner.clone()).prop_map(|(op, a)| format!("({op}{a})")),
            (
                inner.clone(),
                prop::collection::vec(
                    (prop::option::of(select(vec!["axis", "k", "from", "model"])), inner.clone()),
                    0..4
                )
            )
                .prop_map(|(f, args)| {
                    let args: Vec<String> =
                        args.into_iter().map(|(k, v)| k.map_or(v.clone(), |k| format!("{k}: {v}"))).collect();
                    format!("({f})({})", args.join(", "))
                }),
            (inner.clone(), select(vec!["weight", "wq"])).prop_map(|(a, f)| format!("({a}).{f}")),
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| match v.len() {
                1 => format!("({},)", v[0]),
                _ => format!("({})", v.join(", ")),
            }),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("(if {c} {{ {a} }} else {{ {b} }})")),
        ]
    })
}

/// A comment or doc line that may be placed before a line-level construct.
fn maybe_comment(i: usize, mode: u8) -> String {
    match mode % 4 {
        0 => String::new(),
        1 => format!("// note {i}\n"),
        2 => format!("\n// note {i}\n"),
        _ => format!("/// doc {i}\n"),
    }
}

fn program() -> impl Strategy<Value = String> {
    (prop::collection::vec(expr(), 12), prop::collection::vec(any::<u8>(), 12), any::<bool>()).prop_map(
        |(e, modes, trailing)| {
            let c = |i: usize| maybe_comment(i, modes[i]);
            let plain = |i: usize| c(i).replace("/// doc", "// doc");
            let tail = if trailing { " // tail" } else { "" };
            format!(
                "{}const C0 = {}{tail}\n\n{}block B(\n{}  a: int,\n  b: int? = {},\n) {{\n{}  w: [d, {}] = {}\n{}  s = repeat({}) Sub({}, key: {})\n\n{}  forward(x: [B, ..., d]) -> [B, d] {{\n{}    y = {}{tail}\n{}    p, q = {}\n    return {}\n  }}\n}}\n\n{}recipe r {{\n{}  k = {} then {}\n  m = {} from {}\n}}\n",
                c(0), e[0], c(1), c(2), e[1], c(3), e[2], e[3], plain(4), e[4], e[5], e[6], c(5), plain(6), e[7],
                plain(7), e[8], e[9], c(8), c(9), e[10], e[11], e[0], e[1]
            )
        },
    )
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "->",
    "...",
    "?",
    ".",
    "+",
    "-",
    "*",
    "**",
    "/",
    "@",
    "<",
    "==",
    " ",
    "\n",
    "\"",
    "//",
    "///",
    "block",
    "model",
    "forward",
    "return",
    "repeat(2)",
    "if",
    "else",
    "then",
    "from",
    "x",
    "1",
    "1e-5",
    "\u{e9}",
    "\t",
];

fn mutated_example() -> impl Strategy<Value = String> {
    let sources: Vec<String> =
        good_files().iter().filter_map(|p| std::fs::read_to_string(root().join(p)).ok()).collect();
    let edits = prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, select(TOKENS), 1usize..8), 1..6);
    (select(sources), edits).prop_map(|(mut text, edits)| {
        for (at, kind, token, len) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let mut end = (i + len).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            match kind {
                0 => text.insert_str(i, token),
                1 => text.replace_range(i..end, ""),
                _ => text.replace_range(i..end, token),
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn generated_programs_round_trip_through_the_formatter(src in program()) {
        let file = SourceFile::new("generated.model", src);
        check_format_round_trip(&file);
    }

    #[test]
    fn mutated_examples_never_panic_and_errors_are_located(src in mutated_example()) {
        let file = SourceFile::new("mutated.model", src);
        match parse(&file) {
            Ok(_) => { check_format_round_trip(&file); }
            Err(d) => {
                prop_assert!(d.span.start <= d.span.end && d.span.end <= file.text.len(), "{d:?}");
                let rendered = d.render(&file, false);
                prop_assert!(rendered.contains("mutated.model:") && rendered.contains('^'), "{rendered}");
            }
        }
    }
}

/// Inputs the fuzzer once broke (`fuzz/`): each must be rejected with a located error or
/// round-trip through the formatter.
#[test]
fn fuzz_regressions_are_rejected_or_round_trip() {
    for path in model_files("tests/parse/fuzz") {
        let bytes = std::fs::read(root().join(&path)).unwrap_or_default();
        let Ok(file) = modelc_grammar::decode(&path, bytes) else { continue };
        if let Ok(parsed) = parse(&file) {
            drop(parsed);
            check_format_round_trip(&file);
        }
    }
}

/// Mutations that keep the text parseable but break its meaning: names, numbers and
/// operators swapped for others of the language.
const SEMANTIC_EDITS: &[&str] = &[
    "d",
    "heads",
    "kv_heads",
    "0",
    "1",
    "-1",
    "3",
    "1e-5",
    "true",
    "none",
    "B",
    "T",
    "x",
    "+",
    "*",
    "@",
    "/",
    "Norm.pre",
    "Act.relu",
    "[B, T, d]",
    "[..., d]",
    "repeat(2)",
    "stack(2)",
    "axis: -1",
    "k: 3",
];

fn semantically_mutated_example() -> impl Strategy<Value = (String, String)> {
    let sources: Vec<(String, String)> = model_files("examples")
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(root().join(&p)).ok().map(|t| (p, t)))
        .collect();
    let edits = prop::collection::vec((any::<prop::sample::Index>(), select(SEMANTIC_EDITS)), 1..4);
    (select(sources), edits).prop_map(|((path, mut text), edits)| {
        for (at, token) in edits {
            // Replace one whole word or number, so that the text usually still parses.
            let words: Vec<(usize, usize)> = text
                .char_indices()
                .filter(|(i, c)| {
                    c.is_alphanumeric() && (*i == 0 || !text[..*i].ends_with(|p: char| p.is_alphanumeric() || p == '_'))
                })
                .map(|(i, _)| {
                    (i, text[i..].find(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(text.len(), |n| i + n))
                })
                .collect();
            if let Some(&(s, e)) = words.get(at.index(words.len().max(1))) {
                text.replace_range(s..e, token);
            }
        }
        (path, text)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the edit, the semantic stages report an error or succeed: no panic, and
    /// every error points inside its file.
    #[test]
    fn semantic_stages_never_panic_on_mutated_examples((path, text) in semantically_mutated_example()) {
        let root_path = root().join(&path);
        let result = std::panic::catch_unwind(|| {
            let file = SourceFile::new(path.clone(), text.clone());
            let mut program = match modelc_compiler::load(file, &root_path) {
                Ok(p) => p,
                Err(failed) => return Some((failed.error.file.0, failed.error.diag.span, None)),
            };
            match modelc_compiler::check(&mut program) {
                Ok(()) => None,
                Err(e) => {
                    let len = program.source(e.file).text.len();
                    Some((e.file.0, e.diag.span, Some(len)))
                }
            }
        });
        prop_assert!(result.is_ok(), "a semantic stage panicked on:\n{text}");
        if let Ok(Some((_, span, Some(len)))) = result {
            prop_assert!(span.start <= span.end && span.end <= len, "span {span:?} outside a file of {len} bytes");
        }
    }
}

/// Edits for words inside `forward` bodies: the integers and names that primitives take
/// as counts, axes, bounds and operands.
const FORWARD_EDITS: &[&str] =
    &["0", "1", "-1", "2", "3", "5", "-2", "64", "T", "B", "d", "x", "h", "true", "none", "0.5", "k: 5", "axis: -2"];

/// Counts, bounds and axes against symbolic dims, which `check` can only partly decide:
/// mutating their numbers makes values that fit some bindings and not the run's.
const SYMBOLIC_ATTRIBUTES: &str = "model Symbolic {
  forward(x: [B, T], ids: i32[B, T], logits: [N, E], y: [N, 2]) -> [] {
    values, indices = topk(x, k: 2)
    picked = mean(gather(x, indices, axis: 1)) + mean(scatter_add(x, indices, values, axis: 1))
    cut = mean(slice(x, axis: 1, start: 1, end: T)) + mean(pad(x, axis: 1, before: 1, after: 2))
    hot = mean(one_hot(ids, 4))
    route = moe_route(logits, k: 2, capacity: 2.0)
    mixed = mean(moe_combine(route, moe_dispatch(route, y)))
    q = rearrange(x, \"b t -> b 1 t 1\")
    a = mean(attention(q, q, q, causal: true, window: 2))
    return picked + cut + hot + mixed + a + mean(cumsum(x, axis: 1)) + moe_balance(route)
      + moe_zloss(logits)
  }
}
";

/// Files whose `forward`s are mutated and run: the examples with a `tiny` recipe (run at
/// it), the well-typed elaboration fixtures (small by default) and `SYMBOLIC_ATTRIBUTES`.
fn runnable_sources() -> Vec<(String, String, Option<&'static str>)> {
    let mut out = vec![("tests/symbolic_attributes.model".to_string(), SYMBOLIC_ATTRIBUTES.to_string(), None)];
    for path in model_files("examples").into_iter().chain(model_files("tests/elab/ok")) {
        let Ok(text) = std::fs::read_to_string(root().join(&path)) else { continue };
        let recipe = text.contains("\nrecipe tiny ").then_some("tiny");
        if path.starts_with("examples") && recipe.is_none() {
            continue;
        }
        out.push((path, text, recipe));
    }
    out
}

/// The byte ranges of `forward` bodies (canonical formatting: a body ends at the first
/// line that closes it at the member indentation).
fn forward_bodies(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("forward(") {
        let start = from + at;
        let end = text[start..].find("\n  }").map_or(text.len(), |e| start + e);
        out.push((start, end));
        from = end;
    }
    out
}

/// Integers for the edits that target numbers: counts, bounds and axes around the run's
/// sizes (every symbol but `B` is 3), and past them.
const NUMBER_EDITS: &[&str] = &["0", "1", "-1", "2", "3", "4", "5", "64"];

/// A source (the symbolic-attribute model half the time) with 1 to 3 edits, each
/// on any word of a `forward`, or on a number of one (half the time): numbers are where
/// counts and bounds are written.
fn mutated_forward() -> impl Strategy<Value = (String, String, Option<&'static str>)> {
    let mut sources = runnable_sources();
    let symbolic = sources.remove(0);
    let source = prop_oneof![1 => Just(symbolic), 1 => select(sources)];
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), Just(false), select(FORWARD_EDITS)),
        (any::<prop::sample::Index>(), Just(true), select(NUMBER_EDITS)),
    ];
    (source, prop::collection::vec(edit, 1..4)).prop_map(|((path, mut text, recipe), edits)| {
        for (at, number, token) in edits {
            let bodies = forward_bodies(&text);
            let words: Vec<(usize, usize)> = text
                .char_indices()
                .filter(|(i, c)| {
                    let digit = |c: char| c.is_ascii_digit();
                    // A word, or a negative number (not the `-` of `->` or of `a - b`).
                    let starts = if number {
                        digit(*c) || (*c == '-' && text[i + 1..].starts_with(digit))
                    } else {
                        c.is_alphanumeric() || (*c == '-' && text[i + 1..].starts_with(digit))
                    };
                    starts
                        && bodies.iter().any(|(s, e)| s < i && i < e)
                        && !text[..*i].ends_with(|p: char| p.is_alphanumeric() || p == '_' || p == '.')
                })
                .map(|(i, _)| {
                    let rest = &text[i + 1..];
                    let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
                    (i, i + 1 + len)
                })
                .collect();
            if let Some(&(s, e)) = words.get(at.index(words.len().max(1))) {
                text.replace_range(s..e, token);
            }
        }
        (path, text, recipe)
    })
}

/// Inputs for a graph with `B = 2` and every other symbol `3`, integers small ids; `None`
/// when a dim does not come out as a small size (then there is nothing to run).
fn tiny_inputs(graph: &modelc_compiler::graph::Graph) -> Option<HashMap<String, Tensor>> {
    let mut rng = Lcg(5);
    let mut out = HashMap::new();
    for n in &graph.nodes {
        if let Op::Input { name } = &n.op {
            let shape: Vec<usize> =
                n.ty.shape
                    .iter()
                    .map(|d| {
                        graph
                            .eval_dim(d, &|s: &str| Some(if s == "B" { 2 } else { 3 }))
                            .and_then(|v| usize::try_from(v).ok())
                    })
                    .collect::<Option<_>>()?;
            let len: usize = shape.iter().product();
            if len > 1 << 16 {
                return None;
            }
            let data = (0..len)
                .map(|_| if n.ty.dtype.is_float() { rng.next() } else { ((rng.next() + 1.0) * 2.0).floor() })
                .collect();
            out.insert(name.clone(), Tensor::new(shape, data));
        }
    }
    Some(out)
}

/// Small parameters for every `param` node; `None` for a model too large to run quickly.
fn tiny_params(graph: &modelc_compiler::graph::Graph) -> Option<HashMap<String, Tensor>> {
    let mut rng = Lcg(6);
    let mut out = HashMap::new();
    let mut total = 0usize;
    for n in &graph.nodes {
        if let Op::Param { name } = &n.op {
            let shape: Vec<usize> =
                n.ty.shape
                    .iter()
                    .map(|d| d.as_constant().and_then(|c| usize::try_from(c).ok()))
                    .collect::<Option<_>>()?;
            let len: usize = shape.iter().product();
            total += len;
            if total > 2_000_000 {
                return None;
            }
            out.insert(name.clone(), Tensor::new(shape, (0..len).map(|_| 0.05 * rng.next()).collect()));
        }
    }
    Some(out)
}

/// What `modelc check` and then `modelc run` do with a file, through the library: load,
/// check, build the model (at `recipe`), lower it to the objective's loss (or keep its
/// outputs when the objective does not apply), run it on tiny shapes, and lower it for
/// training too. Every stage may refuse; none may panic. Returns how far it got.
fn check_then_run(path: &str, text: &str, recipe: Option<&str>) -> &'static str {
    use modelc_compiler::{check, instantiate, interp, load, lower, workload, Lowering, Target};
    let file = SourceFile::new(path.to_string(), text.to_string());
    let Ok(mut program) = load(file, &root().join(path)) else { return "load" };
    if check(&mut program).is_err() {
        return "check";
    }
    let target = Target { recipe: recipe.map(str::to_string), ..Target::default() };
    let Ok(instance) = instantiate(&mut program, &target) else { return "instantiate" };
    let Ok(graph) = modelc_compiler::elab::forward::elaborate(&program, &instance) else { return "elaborate" };
    let Ok(w) = workload(&program, &target, Some(2), Some(3)) else { return "workload" };
    // The training graph when the objective applies (what `train` runs), else the loss,
    // else the model's outputs.
    let runnable = lower(graph.clone(), &w, Lowering::Training)
        .or_else(|_| lower(graph.clone(), &w, Lowering::Loss))
        .unwrap_or(graph);
    let (Some(mut inputs), Some(params)) = (tiny_inputs(&runnable), tiny_params(&runnable)) else { return "too large" };
    inputs.insert(modelc_compiler::autodiff::LOSS_SCALE.into(), Tensor::scalar(1.0));
    let options =
        interp::Options { precision: interp::Precision::Native, training: true, seed: 1, check_finite: false };
    match interp::run(&runnable, &inputs, &params, &options) {
        Ok(_) => "ran",
        Err(_) => "run error",
    }
}

#[test]
fn the_unmutated_runnable_sources_run() {
    for (path, text, recipe) in runnable_sources() {
        assert_eq!(check_then_run(&path, &text, recipe), "ran", "{path}");
    }
}

/// Mutated `forward`s that pass `check` also run on tiny shapes: an error is fine (a
/// count past a dim bound only at run time), a panic is not. Enough of them must get as
/// far as running for the property to say something.
#[test]
fn mutated_forwards_that_check_also_run_without_panic() {
    use proptest::test_runner::{Config, TestRunner};
    // `MODELC_MUTATION_CASES` runs a longer search locally.
    let cases = std::env::var("MODELC_MUTATION_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(320);
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let reached = std::cell::RefCell::new(std::collections::BTreeMap::<&str, u32>::new());
    let outcome = runner.run(&mutated_forward(), |(path, text, recipe)| {
        let result = std::panic::catch_unwind(|| check_then_run(&path, &text, recipe));
        prop_assert!(result.is_ok(), "a stage after `check` panicked on {path}:\n{text}");
        *reached.borrow_mut().entry(result.unwrap_or_default()).or_default() += 1;
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let reached = reached.into_inner();
    let ran = reached.get("ran").copied().unwrap_or(0) + reached.get("run error").copied().unwrap_or(0);
    eprintln!("mutated forwards reached: {reached:?}");
    assert!(ran >= cases / 8, "too few mutated programs reached the run: {reached:?}");
}
