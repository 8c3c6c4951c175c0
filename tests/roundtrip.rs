//! Property tests of the formatter and the parser's robustness.
//! - Generated programs, with every expression written fully parenthesised and comments
//!   in random places: `parse(fmt(x))` has the tree of `parse(x)`, fmt is idempotent and
//!   keeps every comment. Since the formatter prints the fewest parentheses precedence
//!   allows, this checks the precedence rules of both directions.
//! - Mutated copies of the examples (random edits with the language's own tokens): parsing
//!   never panics, every error is located inside the text, and whatever still parses
//!   round-trips.

mod common;

use common::*;
use modelc_grammar::{parse, SourceFile};
use proptest::prelude::*;
use proptest::sample::select;

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
