//! The `modelc` binary as a user meets it: exit codes, where messages go, `fmt` on disk,
//! JSON diagnostics, subcommands that are not built yet, and adversarial inputs.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn modelc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelc")).args(args).current_dir(root()).output().expect("running modelc")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_panic(out: &Output, what: &str) {
    let err = stderr(out);
    assert!(!err.contains("panicked") && !err.contains("overflow"), "{what} crashed:\n{err}");
    assert!(out.status.code().is_some(), "{what} was killed by a signal");
}

#[test]
fn check_and_fmt_check_pass_on_every_example_and_stdlib_file() {
    // `check` resolves and instantiates, so it runs on real programs; the syntax
    // fixtures of `tests/parse/ok` (which import files that do not exist) only format.
    let mut programs = model_files("examples");
    programs.extend(model_files("stdlib"));
    let args: Vec<&str> = programs.iter().map(String::as_str).collect();
    let out = modelc(&[&["check"], args.as_slice()].concat());
    assert_eq!(out.status.code(), Some(0), "check failed:\n{}", stderr(&out));
    let files = good_files();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = modelc(&[&["fmt", "--check"], args.as_slice()].concat());
    assert_eq!(out.status.code(), Some(0), "fmt --check failed:\n{}", stderr(&out));
}

#[test]
fn every_bad_input_exits_1_with_location_and_caret() {
    for path in model_files("tests/parse/err") {
        let out = modelc(&["check", &path]);
        assert_no_panic(&out, &path);
        assert_eq!(out.status.code(), Some(1), "{path}");
        let err = stderr(&out);
        assert!(err.contains(&format!("{path}:")), "{path}: no file:line:col in\n{err}");
        assert!(err.contains('^'), "{path}: no caret in\n{err}");
    }
}

#[test]
fn json_diagnostics_are_one_object_per_line_with_a_location() {
    let out = modelc(&["--message-format", "json", "check", "tests/parse/err/call_missing_comma.model"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(first).expect("valid JSON");
    assert_eq!(v["severity"], "error");
    assert_eq!(v["location"]["file"], "tests/parse/err/call_missing_comma.model");
    assert_eq!(v["location"]["line"], 3);
    assert_eq!(v["location"]["column"], 16);
    assert!(v["message"].as_str().unwrap_or_default().contains("to close the `(` opened at 3:13"));
}

#[test]
fn fmt_rewrites_in_place_and_then_check_passes() {
    let dir = std::env::temp_dir().join(format!("modelc-fmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("messy.model");
    std::fs::write(&path, "block  A( d:int ){\nw:[d]=ones // keep me\n\n\n\nforward(x:[B,d])->[B,d]{return x*w}}\n")
        .expect("write");
    let p = path.to_string_lossy().into_owned();
    let out = modelc(&["fmt", "--check", &p]);
    assert_eq!(out.status.code(), Some(1), "unformatted file passed --check");
    let out = modelc(&["fmt", &p]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&path).expect("read back");
    assert_eq!(
        text,
        "block A(d: int) {\n  w: [d] = ones // keep me\n\n  forward(x: [B, d]) -> [B, d] {\n    return x * w\n  }\n}\n"
    );
    assert_eq!(modelc(&["fmt", "--check", &p]).status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn emit_ast_prints_a_located_tree() {
    let out = modelc(&["emit", "tests/parse/ok/syntax_tour.model", "--stage", "ast"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("file  @"), "{text}");
    assert!(text.contains("  block Tour  @"), "{text}");
}

/// `emit --after PASS` on every example, forward and training graphs, for every pass: the
/// Graph IR right after it, which parses back and verifies; after the last pass it is what
/// plain `emit` prints. `--print-after-all` prints the same texts, each under a header.
#[test]
fn emit_after_every_pass_prints_ir_that_parses_back() {
    use modelc_compiler::graph::{parse::parse, verify::verify};
    use modelc_compiler::passes::PASSES;
    for file in model_files("examples") {
        let source = std::fs::read_to_string(root().join(&file)).expect("example");
        let recipe: &[&str] = if source.contains("\nrecipe tiny") { &["--recipe", "tiny"] } else { &[] };
        for stage in ["ir", "grad"] {
            let emit = |extra: &[&str]| {
                let out = modelc(&[&["emit", file.as_str(), "--stage", stage], recipe, extra].concat());
                assert_eq!(out.status.code(), Some(0), "{file} {stage} {extra:?}: {}", stderr(&out));
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let mut after = Vec::new();
            for p in PASSES {
                let text = emit(&["--after", p.name]);
                let g = parse(&text).unwrap_or_else(|e| panic!("{file} {stage} --after {}: {e}", p.name));
                verify(&g).unwrap_or_else(|e| panic!("{file} {stage} --after {}: {e}", p.name));
                assert_eq!(g.to_string(), text);
                after.push(text);
            }
            assert_eq!(after.last(), Some(&emit(&[])), "{file} {stage}: the last pass's IR is not the final IR");
            let all = emit(&["--print-after-all"]);
            let sections: Vec<&str> = all.split("; after ").skip(1).collect();
            assert_eq!(sections.len(), PASSES.len(), "{file} {stage}");
            for ((section, p), text) in sections.iter().zip(PASSES).zip(&after) {
                let (header, body) = section.split_once('\n').expect("a header line");
                assert!(header.starts_with(&format!("{}: ", p.name)), "{file} {stage}: header `{header}`");
                assert_eq!(body, text, "{file} {stage}: --print-after-all differs from --after {}", p.name);
            }
        }
    }
}

#[test]
fn emit_after_an_unknown_pass_is_an_error_with_a_suggestion() {
    let file = "examples/gpt2.model";
    let cases: [(&[&str], &str); 3] = [
        (&["--stage", "ir", "--after", "csee"], "`--after csee`: there is no pass `csee`; did you mean `cse`?"),
        (&["--stage", "grad", "--after", "lowering"], "the passes are simplify, cse, dce, fusion"),
        (&["--stage", "ast", "--after", "cse"], "use them with `--stage ir` or `--stage grad`"),
    ];
    for (args, message) in cases {
        let out = modelc(&[&["emit", file], args].concat());
        assert_no_panic(&out, &format!("{args:?}"));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}: printed IR anyway");
    }
}

#[test]
fn unbuilt_subcommands_say_so_and_exit_2() {
    let file = "tests/parse/ok/syntax_tour.model";
    for args in [vec!["emit", file, "--stage", "fused"], vec!["emit", file, "--stage", "cuda"]] {
        let out = modelc(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("not implemented yet"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn missing_file_is_a_plain_error() {
    let out = modelc(&["check", "no/such/file.model"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read `no/such/file.model`"), "{}", stderr(&out));
}

/// Writes a generated input to a temp file and checks it with the binary.
fn check_generated(name: &str, text: &str) -> Output {
    let dir = std::env::temp_dir().join(format!("modelc-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    let out = modelc(&["check", &path.to_string_lossy()]);
    assert_no_panic(&out, name);
    out
}

#[test]
fn nesting_20000_brackets_deep_is_a_located_error_not_a_stack_overflow() {
    for (open, close) in [("(", ")"), ("[", "]")] {
        let text = format!("const X = {}1{}\n", open.repeat(20_000), close.repeat(20_000));
        let out = check_generated("deep.model", &text);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("nested more than 256 levels"), "{err}");
        assert!(err.contains("deep.model:1:"), "{err}");
    }
    // Unbalanced and deep at once: still one located error.
    let out = check_generated("deep_open.model", &format!("block A {{ forward() {{ return {}", "(".repeat(20_000)));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_200_kb_expression_is_accepted_and_formats() {
    // Numbers, so that `check` evaluates the constants too: the semantic stages walk the
    // same 50,000-deep trees.
    let sum = format!("const X = {}\n", vec!["1"; 50_000].join(" + "));
    let pow = format!("const X = {}\n", vec!["1"; 50_000].join(" ** "));
    let neg = format!("const X = {}1\n", "-".repeat(200_000));
    let list = format!("const X = [{}]\n", vec!["1.5"; 40_000].join(", "));
    for (name, text) in [("sum.model", sum), ("pow.model", pow), ("neg.model", neg), ("list.model", list)] {
        assert!(text.len() >= 200_000, "{name} is only {} bytes", text.len());
        let out = check_generated(name, &text);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let dir = std::env::temp_dir().join(format!("modelc-big-{}", std::process::id()));
        let path = dir.join(name);
        let p = path.to_string_lossy().into_owned();
        assert_eq!(modelc(&["fmt", &p]).status.code(), Some(0), "{name}: fmt");
        assert_eq!(modelc(&["fmt", "--check", &p]).status.code(), Some(0), "{name}: fmt is not idempotent");
    }
}

#[test]
fn binary_garbage_is_rejected_without_panicking() {
    let mut bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    bytes.extend_from_slice(b"block A {");
    let dir = std::env::temp_dir().join(format!("modelc-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("garbage.model");
    std::fs::write(&path, &bytes).expect("write");
    let out = modelc(&["check", &path.to_string_lossy()]);
    assert_no_panic(&out, "garbage");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not valid UTF-8"));
    assert!(Path::new(&path).exists());
}

#[test]
fn run_gives_the_loss_of_an_untrained_model_reproducibly() {
    let out = modelc(&["run", "examples/llama.model", "--recipe", "tiny"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let loss: f64 = text.split_whitespace().nth(1).and_then(|l| l.parse().ok()).expect("`loss X` first");
    // Small initial weights predict every byte about equally: ln(256).
    assert!((loss - 256f64.ln()).abs() < 0.1, "{text}");
    assert_eq!(String::from_utf8_lossy(&modelc(&["run", "examples/llama.model", "--recipe", "tiny"]).stdout), text);
    let other = modelc(&["run", "examples/llama.model", "--recipe", "tiny", "--seed", "7"]);
    assert_ne!(String::from_utf8_lossy(&other.stdout), text, "the seed changes parameters and data");
    // What the reference interpreter cannot or does not do yet, it says.
    let big = modelc(&["run", "examples/llama.model"]);
    assert_eq!(big.status.code(), Some(2));
    assert!(stderr(&big).contains("too many for the reference interpreter"), "{}", stderr(&big));
    // MLM: a loss over the masked positions only, also near ln(vocab) at initialisation.
    let mlm = modelc(&["run", "examples/bert.model", "--recipe", "tiny"]);
    assert_eq!(mlm.status.code(), Some(0), "{}", stderr(&mlm));
    let text = String::from_utf8_lossy(&mlm.stdout).into_owned();
    let loss: f64 = text.split_whitespace().nth(1).and_then(|l| l.parse().ok()).expect("`loss X` first");
    assert!((loss - 257f64.ln()).abs() < 0.2, "{text}");
    // Span corruption: the encoder-decoder's loss over the cut-out spans.
    let t5 = modelc(&["run", "examples/t5.model", "--recipe", "tiny"]);
    assert_eq!(t5.status.code(), Some(0), "{}", stderr(&t5));
}

#[test]
fn train_writes_metrics_and_the_loss_falls_reproducibly() {
    let dir = std::env::temp_dir().join(format!("modelc-train-{}", std::process::id()));
    let losses = |dir: &std::path::Path| -> Vec<f64> {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
                for key in ["step", "loss", "lr", "grad_norm", "tokens_per_s"] {
                    assert!(v.get(key).is_some(), "{key} missing in {l}");
                }
                v["loss"].as_f64().expect("loss")
            })
            .collect()
    };
    let d = dir.to_string_lossy().into_owned();
    let out = modelc(&["train", "examples/llama.model", "--steps", "12", "--out", &d]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let first = losses(&dir);
    assert_eq!(first.len(), 12);
    let early = first[..3].iter().sum::<f64>() / 3.0;
    let late = first[9..].iter().sum::<f64>() / 3.0;
    assert!(late < early - 0.3, "the loss did not fall: {first:?}");
    // The same seed reproduces every loss exactly (a new run over the old one).
    let out = modelc(&["train", "examples/llama.model", "--steps", "12", "--out", &d, "--overwrite"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(losses(&dir), first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_continues_bit_identically() {
    let base = std::env::temp_dir().join(format!("modelc-resume-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    let (a_s, b_s) = (a.to_string_lossy().into_owned(), b.to_string_lossy().into_owned());
    let train = |args: &[&str]| {
        let out = modelc(&[&["train", "examples/llama.model"], args].concat());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    };
    let losses = |dir: &std::path::Path| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics");
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["loss"].to_string()).collect()
    };
    // Uninterrupted, and interrupted after step 3 then resumed, with the same total.
    train(&["--steps", "6", "--out", &a_s]);
    train(&["--steps", "6", "--out", &b_s, "--checkpoint-every", "3"]);
    let full = losses(&b);
    std::fs::remove_file(b.join("step-6.json")).expect("drop the last checkpoint");
    train(&["--steps", "6", "--resume", &b_s]);
    assert_eq!(losses(&b), losses(&a), "resumed losses differ");
    assert_eq!(losses(&b), full);
    // Checkpoints are safetensors with the IR's parameter names and a JSON sidecar.
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("step-6.json")).expect("sidecar")).expect("JSON");
    assert_eq!(sidecar["step"], 6);
    let bytes = std::fs::read(b.join("step-6.safetensors")).expect("checkpoint");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + header_len]);
    assert!(header.contains("\"blocks.1.attn.wq.weight\"") && header.contains("F32"), "{header}");
    // `run --checkpoint` evaluates trained parameters: better than an untrained model.
    let out = modelc(&["run", "examples/llama.model", "--recipe", "tiny", "--checkpoint", &b_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let loss: f64 = text.split_whitespace().nth(1).and_then(|l| l.parse().ok()).expect("`loss X` first");
    assert!(loss < 256f64.ln() - 0.05, "{text}");
    // `--data` trains on a user's file; a missing one is an error.
    let data = base.join("text.txt");
    std::fs::write(&data, "abcabcabc ".repeat(200)).expect("write");
    let d_s = data.to_string_lossy().into_owned();
    let c_s = base.join("c").to_string_lossy().into_owned();
    train(&["--steps", "2", "--data", &d_s, "--out", &c_s]);
    let missing = modelc(&["train", "examples/llama.model", "--steps", "2", "--data", "no/such.txt", "--out", &c_s]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("cannot read `no/such.txt`"), "{}", stderr(&missing));
    let _ = std::fs::remove_dir_all(&base);
}

/// Every example's `tiny` recipe trains (every example but minilm has one), and its loss falls within ten steps (mean of the
/// last two below the mean of the first two). Runs are deterministic, so this is stable.
#[test]
fn every_example_recipe_trains_and_its_loss_falls() {
    let base = std::env::temp_dir().join(format!("modelc-all-{}", std::process::id()));
    for file in model_files("examples") {
        // Models without a recipe (minilm: an embedding model run with imported weights).
        let source = std::fs::read_to_string(root().join(&file)).expect("example");
        if !source.contains("\nrecipe ") {
            continue;
        }
        // Fine-tuning recipes start `from` a trained base: tests/adapters.rs trains one.
        if source.contains(" from \"runs/") {
            continue;
        }
        let dir = base.join(file.replace('/', "_"));
        let d = dir.to_string_lossy().into_owned();
        let out = modelc(&["train", &file, "--steps", "10", "--out", &d]);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", stderr(&out));
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics");
        let l: Vec<f64> = text
            .lines()
            .map(|x| serde_json::from_str::<serde_json::Value>(x).expect("JSON")["loss"].as_f64().expect("loss"))
            .collect();
        assert_eq!(l.len(), 10, "{file}");
        // MoE layers report each expert's share of the assignments (a vector metric), its
        // max over mean, and the fraction of assignments dropped for capacity.
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or("{}")).expect("JSON");
        for (key, load) in first.as_object().into_iter().flatten().filter(|(k, _)| k.ends_with(".expert_load")) {
            let load: Vec<f64> = load.as_array().expect("a vector").iter().filter_map(|x| x.as_f64()).collect();
            let layer = key.trim_end_matches("expert_load");
            let overflow = first[format!("{layer}overflow")].as_f64().expect("overflow");
            assert!((0.0..0.5).contains(&overflow), "{file} {key}: overflow {overflow}");
            // Kept and dropped assignments add up to all of them.
            let kept: f64 = load.iter().sum();
            assert!(load.len() >= 4 && (kept + overflow - 1.0).abs() < 1e-5, "{file} {key}: {load:?} {overflow}");
            let ratio = load.iter().copied().fold(0.0, f64::max) / (kept / load.len() as f64);
            let imbalance = first[format!("{layer}expert_imbalance")].as_f64().expect("expert_imbalance");
            assert!((imbalance - ratio).abs() < 1e-5, "{file} {key}: {imbalance} vs {ratio}");
        }
        let (early, late) = ((l[0] + l[1]) / 2.0, (l[8] + l[9]) / 2.0);
        assert!(late < early - 0.04, "{file}: the loss did not fall: {l:?}");
    }
    let _ = std::fs::remove_dir_all(&base);
}
