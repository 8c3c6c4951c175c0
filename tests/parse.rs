//! Fixture tests of the front end. `tests/parse/ok/*.model`, `examples/` and `stdlib/`
//! must parse, be canonically formatted and round-trip; their trees and formatted text
//! are snapshots. `tests/parse/err/*.model` must be rejected; the rendered diagnostic
//! (location, caret, words) is the snapshot.

mod common;

use common::*;
use modelc_grammar::{dump, parse};

#[test]
fn well_formed_files_parse_format_canonically_and_round_trip() {
    let files = good_files();
    assert!(files.len() >= 3, "fixtures missing: {files:?}");
    for path in files {
        let file = load(&path).unwrap_or_else(|bad| panic!("{}", bad.0.render(&bad.1, false)));
        let parsed = parse_ok(&file);
        insta::assert_snapshot!(format!("ast__{}", snapshot_name(&path)), dump::dump(&parsed.ast, Some(&file)));
        let formatted = check_format_round_trip(&file);
        insta::assert_snapshot!(format!("fmt__{}", snapshot_name(&path)), formatted);
        assert!(formatted == file.text, "{path} is not canonically formatted; run `modelc fmt {path}`");
    }
}

#[test]
fn examples_cover_every_architecture_of_the_language() {
    for name in ["gpt2", "llama", "mistral", "gemma2", "mixtral", "deepseek_moe", "bert", "t5", "lora", "ptuning"] {
        let path = format!("examples/{name}.model");
        assert!(exists(&path), "{path} is missing");
        let file = load(&path).unwrap_or_else(|bad| panic!("{}", bad.0.render(&bad.1, false)));
        let tree = dump::dump(&parse_ok(&file).ast, None);
        assert!(tree.contains("\n  recipe tiny\n"), "{path} has no `tiny` recipe");
    }
}

#[test]
fn malformed_files_are_rejected_with_a_located_diagnostic() {
    let files = model_files("tests/parse/err");
    assert!(files.len() >= 10, "bad-input fixtures missing: {files:?}");
    for path in files {
        let (diag, file) = match load(&path) {
            Err(bad) => *bad,
            Ok(file) => match parse(&file) {
                Err(diag) => (diag, file),
                Ok(_) => panic!("{path} should be rejected"),
            },
        };
        let rendered = diag.render(&file, false);
        let (line, col) = file.line_col(diag.span.start);
        assert!(rendered.contains(&format!("{path}:{line}:{col}")), "{path}: no location in\n{rendered}");
        assert!(rendered.contains('^'), "{path}: no caret in\n{rendered}");
        assert!(
            !rendered.contains("Rule::") && !rendered.contains("_item"),
            "{path}: grammar internals leak into\n{rendered}"
        );
        insta::assert_snapshot!(format!("err__{}", snapshot_name(&path)), rendered);
    }
}

/// The grouping the parser gives each operator, spelled out.
#[test]
fn operators_group_by_precedence_and_associativity() {
    let cases = [
        ("-x ** 2", "(neg (** x 2))"),
        ("2 ** -1", "(** 2 (neg 1))"),
        ("2 ** 3 ** 2", "(** 2 (** 3 2))"),
        ("a - b - c", "(- (- a b) c)"),
        ("a / b * c", "(* (/ a b) c)"),
        ("a + b * c @ d", "(+ a (@ (* b c) d))"),
        ("-a * b", "(* (neg a) b)"),
        ("a * -b ** c", "(* a (neg (** b c)))"),
        ("a + b == c * d", "(== (+ a b) (* c d))"),
        ("not a == b and c or d", "(or (and (not (== a b)) c) d)"),
        ("f(x)(y).z", "(. (call (call f x) y) z)"),
        ("(a, b)", "(tuple a b)"),
        ("(a,)", "(tuple a)"),
        ("((a))", "a"),
        ("if c { a } else if d { b } else { e }", "(if c a (if d b e))"),
        ("-(1)", "(neg 1)"),
    ];
    for (src, want) in cases {
        let file = modelc_grammar::SourceFile::new("case.model", format!("const X = {src}\n"));
        let tree = dump::dump(&parse_ok(&file).ast, None);
        assert!(tree.contains(&format!("const X = {want}\n")), "{src} parsed as\n{tree}\nwant {want}");
    }
}

#[test]
fn recipe_values_chain_then_and_from_left_to_right() {
    let file = modelc_grammar::SourceFile::new(
        "r.model",
        "recipe r {\n  s = warmup(1) then cosine(to: 0.1) then constant\n  m = M() from \"x\"\n}\n",
    );
    let tree = dump::dump(&parse_ok(&file).ast, None);
    assert!(tree.contains("entry s = (then (then (call warmup 1) (call cosine to:0.1)) constant)"), "{tree}");
    assert!(tree.contains("entry m = (from (call M) \"x\")"), "{tree}");
}

#[test]
fn doc_comments_attach_to_the_next_item_field_variant_or_entry() {
    let file = modelc_grammar::SourceFile::new(
        "d.model",
        "/// Item.\nblock A(\n  /// Param.\n  d: int,\n) {\n  /// Field.\n  w: [d] = ones\n}\n\nenum E {\n  /// Variant.\n  a,\n}\n\nrecipe r {\n  /// Entry.\n  steps = 1\n}\n",
    );
    let tree = dump::dump(&parse_ok(&file).ast, None);
    for (doc, next) in [
        ("Item.", "block A"),
        ("Param.", "param d"),
        ("Field.", "weight w"),
        ("Variant.", "variant a"),
        ("Entry.", "entry steps"),
    ] {
        assert!(tree.contains(&format!("doc \"{doc}\"\n")), "{doc} missing in\n{tree}");
        let after = tree.split(&format!("doc \"{doc}\"\n")).nth(1).unwrap_or_default();
        assert!(after.trim_start().starts_with(next), "{doc} should attach to {next}:\n{tree}");
    }
}
