//! What a user who kills runs, reuses directories, feeds short files and silly values
//! meets: each case of the reliability issue, through the binary. Every one ends in exit
//! 1 with a clear message (or a clean stop, or the right behaviour), never a panic.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FILE: &str = "tests/train/reliability.model";

fn modelc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelc")).args(args).current_dir(root()).output().expect("running modelc")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 1, no panic, and every `needle` in the message.
fn refused(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    assert_eq!(out.status.code(), Some(1), "expected exit 1:\n{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in:\n{err}");
    }
    err
}

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modelc-rel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn train(recipe: &str, extra: &[&str]) -> Output {
    modelc(&[&["train", FILE, "--recipe", recipe], extra].concat())
}

/// The rows of `metrics.jsonl`: every line a JSON object.
fn rows(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))).collect()
}

fn steps_of(dir: &Path) -> Vec<u64> {
    rows(dir).iter().map(|r| r["step"].as_u64().expect("step")).collect()
}

#[test]
fn a_directory_holding_a_run_is_refused_unless_overwritten() {
    let base = scratch("reuse");
    let dir = s(&base.join("run"));
    ok(&train("small", &["--steps", "6", "--out", &dir]));
    // Another seed into the same directory: refused, naming the run there.
    refused(&train("small", &["--steps", "6", "--out", &dir, "--seed", "5"]), &["holds another run", "--overwrite"]);
    refused(&train("small", &["--steps", "6", "--out", &dir]), &["holds this run already", "--resume"]);
    // --overwrite starts over: the old checkpoints are gone.
    ok(&train("small", &["--steps", "2", "--out", &dir, "--seed", "5", "--overwrite"]));
    let names: Vec<String> = std::fs::read_dir(base.join("run"))
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("step-3") || n.starts_with("step-6")), "{names:?}");
    assert_eq!(steps_of(&base.join("run")), vec![1, 2]);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn resume_checks_that_the_directory_is_this_run() {
    let base = scratch("resume");
    let dir = base.join("run");
    let d = s(&dir);
    ok(&train("small", &["--steps", "6", "--out", &d]));
    refused(&train("small", &["--resume", &d, "--seed", "5"]), &["the run's seed is 11, this command's 5"]);
    refused(&train("small", &["--resume", &d, "--steps", "9"]), &["6 steps long, this command asks for 9"]);
    refused(&train("wide", &["--resume", &d]), &["the run trains recipe `small`, this command names `wide`"]);
    refused(
        &modelc(&["train", "examples/llama.model", "--recipe", "tiny", "--resume", &d]),
        &["the run trains recipe `small`", "is not the one the run started from"],
    );
    let data = base.join("text.txt");
    std::fs::write(&data, "some other text to train on. ".repeat(20)).expect("write");
    refused(&train("small", &["--resume", &d, "--data", &s(&data)]), &["the training text differs"]);
    // The run's own seed and length are the defaults: a bare --resume of a finished run
    // only rewrites its final weights.
    ok(&train("small", &["--resume", &d]));
    // A renamed sidecar is not taken for the step its name says.
    std::fs::rename(dir.join("step-6.json"), dir.join("step-99.json")).expect("rename");
    let out = train("small", &["--resume", &d]);
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains("`step-99.json` says it is step 6") && err.contains("resuming from step 3"), "{err}");
    // A directory with a run's files but no run.json, and one killed before its first
    // checkpoint.
    std::fs::remove_file(dir.join("run.json")).expect("rm");
    refused(&train("small", &["--resume", &d]), &["has no `run.json`", "--overwrite"]);
    let early = base.join("early");
    ok(&train("small", &["--steps", "2", "--out", &s(&early)]));
    for e in std::fs::read_dir(&early).expect("dir").filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with("step-") {
            std::fs::remove_file(e.path()).expect("rm");
        }
    }
    refused(&train("small", &["--resume", &s(&early)]), &["no checkpoint", "stopped before its first one"]);
    refused(&train("small", &["--resume", &s(&base.join("nothing"))]), &["there is no such directory"]);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn damaged_checkpoints_are_described_and_skipped_for_the_newest_intact_one() {
    let base = scratch("damage");
    let (dir, reference) = (base.join("run"), base.join("reference"));
    ok(&train("small", &["--steps", "12", "--out", &s(&reference)]));
    ok(&train("small", &["--steps", "12", "--out", &s(&dir)]));
    // step-12: parameters cut short; step-9: optimizer state that is not safetensors;
    // step-6: a NaN in a weight. step-3 is intact.
    let p12 = dir.join("step-12.safetensors");
    let len = std::fs::metadata(&p12).expect("file").len();
    let cut = len / 2;
    std::fs::OpenOptions::new().write(true).open(&p12).and_then(|f| f.set_len(cut)).expect("truncate");
    std::fs::write(dir.join("step-9.optimizer.safetensors"), "hello").expect("write");
    let p6 = dir.join("step-6.safetensors");
    let mut bytes = std::fs::read(&p6).expect("read");
    let header = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    bytes[8 + header..12 + header].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&p6, bytes).expect("write");
    let out = train("small", &["--resume", &s(&dir)]);
    ok(&out);
    let err = stderr(&out);
    for needle in [
        &format!("step-12.safetensors` is truncated: {} of", thousands(cut)) as &str,
        &format!("of {} bytes", thousands(len)),
        "step-9.optimizer.safetensors` is not a safetensors file",
        "step-6.safetensors` holds non-finite values",
        "resuming from step 3",
    ] {
        assert!(err.contains(needle), "`{needle}` not in:\n{err}");
    }
    // The resumed run equals the uninterrupted one, row for row and weight for weight.
    assert_eq!(steps_of(&dir), (1..=12).collect::<Vec<_>>());
    let strip = |mut r: serde_json::Value| {
        r.as_object_mut().map(|o| o.remove("tokens_per_s"));
        r
    };
    let (a, b): (Vec<_>, Vec<_>) =
        (rows(&dir).into_iter().map(strip).collect(), rows(&reference).into_iter().map(strip).collect());
    assert_eq!(a, b);
    let weights = |d: &Path| std::fs::read(d.join("final.safetensors")).expect("final");
    assert!(weights(&dir) == weights(&reference), "resumed final weights differ");
    // Weights of another shape or dtype are named with both.
    let wide = base.join("wide");
    ok(&train("wide", &["--out", &s(&wide)]));
    refused(
        &modelc(&["run", FILE, "--recipe", "small", "--checkpoint", &s(&wide.join("final.safetensors"))]),
        &["`blocks.0.attn.wk.weight` is [48, 24] in", "the model's is [32, 16]"],
    );
    let f64_file = base.join("f64.safetensors");
    let data = vec![0u8; 8 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![4], &data).expect("view");
    let bytes = safetensors::serialize([("embed.weight", view)], &None).expect("serialize");
    std::fs::write(&f64_file, bytes).expect("write");
    refused(
        &modelc(&["run", FILE, "--recipe", "small", "--checkpoint", &s(&f64_file)]),
        &["`embed.weight` in", "is f64; a parameter loads from f32, f16 or bf16"],
    );
    std::fs::write(&f64_file, "not a checkpoint at all").expect("write");
    refused(
        &modelc(&["run", FILE, "--recipe", "small", "--checkpoint", &s(&f64_file)]),
        &["is not a safetensors file"],
    );
    let _ = std::fs::remove_dir_all(&base);
}

fn thousands(n: u64) -> String {
    modelc_runtime::checkpoint::thousands(n)
}

#[test]
fn text_shorter_than_a_sequence_is_an_error_at_seq() {
    let base = scratch("short");
    for (name, text) in [("hello", "hello".to_string()), ("one", "x".repeat(16)), ("empty", String::new())] {
        let data = base.join(format!("{name}.txt"));
        std::fs::write(&data, &text).expect("write");
        let out = train("small", &["--data", &s(&data), "--out", &s(&base.join(name))]);
        let err = refused(&out, &[]);
        if text.len() >= 2 {
            assert!(err.contains("fewer than one sequence") && err.contains("reliability.model:"), "{err}");
            assert!(err.contains('^') && err.contains("needs at least 17"), "{err}");
        }
    }
    // One sequence exactly (seq + 1 tokens for a causal LM) is enough.
    let data = base.join("exact.txt");
    std::fs::write(&data, "y".repeat(17)).expect("write");
    ok(&train("small", &["--data", &s(&data), "--steps", "2", "--out", &s(&base.join("exact"))]));
    // seq longer than the built-in corpus, in `train` and `run`; BERT and T5 read seq tokens.
    refused(&train("long_seq", &["--out", &s(&base.join("long"))]), &["the built-in corpus holds", "seq: 1000000"]);
    refused(&modelc(&["run", FILE, "--recipe", "long_seq"]), &["fewer than one sequence"]);
    let mlm = base.join("mlm.txt");
    std::fs::write(&mlm, "z".repeat(63)).expect("write");
    for file in ["examples/bert.model", "examples/t5.model"] {
        let out = modelc(&["train", file, "--data", &s(&mlm), "--out", &s(&base.join("mlm"))]);
        refused(&out, &["holds 63 tokens", "needs at least 64"]);
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn out_of_range_values_are_errors_naming_the_flag_or_entry() {
    let base = scratch("values");
    let bad = base.join("bad.model");
    let template = std::fs::read_to_string(root().join("examples/llama.model")).expect("example");
    let original = "data       = text(builtin, tokenizer: bytes, seq: 64, batch: 8)";
    assert!(template.contains(original));
    for (edit, needle) in [
        ("seq: 0, batch: 8", "`seq` must be at least 1"),
        ("seq: 64, batch: -2", "`batch` must be at least 1"),
        ("seq: \"abc\", batch: 8", "`seq` takes an int"),
        ("seq: 64, batch: 2.5", "`batch` takes an int"),
    ] {
        let line = format!("data       = text(builtin, tokenizer: bytes, {edit})");
        std::fs::write(&bad, template.replacen(original, &line, 1)).expect("write");
        let out = modelc(&["train", &s(&bad), "--out", &s(&base.join("r"))]);
        let err = refused(&out, &[needle, "bad.model:"]);
        assert!(!err.contains("training Llama"), "a banner was printed:\n{err}");
    }
    for (entry, needle) in [
        ("steps      = 200", "steps      = -3"),
        ("optimizer  = adamw(lr: 3e-3,", "optimizer  = adamw(lr: -1.0,"),
        ("optimizer  = adamw(lr: 3e-3,", "optimizer  = adamw(lr: 1e999,"),
    ] {
        std::fs::write(&bad, template.replacen(entry, needle, 1)).expect("write");
        let err = refused(&modelc(&["train", &s(&bad), "--out", &s(&base.join("r"))]), &["bad.model:"]);
        assert!(err.contains('^'), "{err}");
    }
    refused(&train("small", &["--checkpoint-every", "0"]), &["`--checkpoint-every 0`"]);
    let generate = |flags: &[&str]| modelc(&[&["generate", "examples/llama.model", "--prompt", "hi"], flags].concat());
    for (flags, needle) in [
        (&["--temperature", "nan"][..], "`--temperature NaN`: must be a finite number"),
        (&["--temperature", "inf"][..], "`--temperature inf`"),
        (&["--repetition-penalty", "nan"][..], "`--repetition-penalty NaN`"),
        (&["--length-penalty", "inf", "--beams", "2"][..], "`--length-penalty inf`"),
        (&["--beams", "0"][..], "`--beams 0`"),
    ] {
        refused(&generate(flags), &[needle]);
    }
    let err = refused(&generate(&["--top-p", "2"]), &["`--top-p 2`: must be in [0, 1]"]);
    assert!(!err.contains("--temperature") && !err.contains("--repetition-penalty"), "{err}");
    // What is printed is valid UTF-8, whatever bytes an untrained model picks.
    let out = generate(&["--max-tokens", "32", "--seed", "3"]);
    ok(&out);
    assert!(String::from_utf8(out.stdout).is_ok(), "generate printed invalid UTF-8");
    // A `--set` value that does not parse: no trace of how modelc parses it.
    let err = refused(&modelc(&["run", "examples/llama.model", "--recipe", "tiny", "--set", "d=64 +"]), &["--set"]);
    assert!(!err.contains("recipe set") && !err.contains('}'), "{err}");
    refused(&modelc(&["inspect", "examples/llama.model", "--batch=-2"]), &["`--batch -2`"]);
    refused(&modelc(&["inspect", "examples/llama.model", "--seq", "0"]), &["`--seq 0`"]);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn divergence_stops_the_run_naming_the_step_and_the_last_checkpoint() {
    let base = scratch("diverge");
    let dir = base.join("f32");
    let err =
        refused(&train("diverge_f32", &["--out", &s(&dir)]), &["training diverged at step", "last good checkpoint"]);
    // The last good checkpoint exists and holds finite weights; no weights file claims to
    // be final.
    let step: u64 = err
        .split("training diverged at step ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .expect("a step number");
    assert!(step >= 2, "{err}");
    assert!(dir.join(format!("step-{}.safetensors", step - 1)).exists(), "{err}");
    assert!(!dir.join("final.safetensors").exists());
    let last = rows(&dir).pop().expect("a row");
    assert_eq!(last["diverged"], true);
    assert_eq!(last["step"], step);
    // --detect-anomaly names the first op that went non-finite.
    let err = refused(
        &train("diverge_f32", &["--out", &s(&base.join("f32b")), "--detect-anomaly"]),
        &["the first non-finite value: `", "from finite arguments"],
    );
    assert!(err.contains(&format!("diverged at step {step}")), "{err}");
    // Under loss scaling, a run of skipped steps longer than `max_skipped` stops it.
    for recipe in ["diverge_f16", "diverge_bf16"] {
        let dir = base.join(recipe);
        refused(&train(recipe, &["--out", &s(&dir)]), &["5 steps in a row were skipped", "`max_skipped` 4"]);
        let skipped = rows(&dir).iter().rev().take_while(|r| r["skipped"] == true).count();
        assert_eq!(skipped, 5, "{recipe}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn memory_is_checked_before_the_first_step() {
    let base = scratch("memory");
    let err = refused(
        &train("huge_batch", &["--out", &s(&base.join("huge"))]),
        &["not enough memory", "intermediate values", "accumulate", "recompute", "batch"],
    );
    assert!(!err.contains("memory allocation"), "{err}");
    refused(
        &train("small", &["--out", &s(&base.join("lim")), "--memory-limit", "64KiB"]),
        &["is available (--memory-limit)"],
    );
    refused(&modelc(&["run", FILE, "--recipe", "huge_batch"]), &["not enough memory"]);
    refused(
        &modelc(&["generate", FILE, "--recipe", "small", "--prompt", "hi", "--memory-limit", "1KiB"]),
        &["not enough memory", "--max-tokens"],
    );
    let out = train("small", &["--memory-limit", "lots"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&out).contains("--memory-limit"), "{}", stderr(&out));
    // A limit that fits trains, and the banner gives the plan.
    let out = train("small", &["--steps", "1", "--out", &s(&base.join("fits")), "--memory-limit", "1GiB"]);
    ok(&out);
    assert!(stderr(&out).contains("memory ") && stderr(&out).contains(" free"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn absurd_configurations_are_errors_before_any_work() {
    let base = scratch("absurd");
    let template = std::fs::read_to_string(root().join("examples/llama.model")).expect("example");
    let tiny = "Llama(vocab: 256, d: 64, layers: 2, heads: 4, kv_heads: 2, ffn: 172)";
    assert!(template.contains(tiny));
    // A repeat count no machine elaborates: a located error, not gigabytes.
    let deep = base.join("deep.model");
    std::fs::write(&deep, template.replacen(tiny, &tiny.replace("layers: 2", "layers: 100_000"), 1)).expect("write");
    refused(&modelc(&["check", &s(&deep)]), &["elaborates into more than", "deep.model:"]);
    // A vocabulary smaller than the text's ids: named before the first step.
    let small = base.join("small.model");
    std::fs::write(&small, template.replacen(tiny, &tiny.replace("vocab: 256", "vocab: 16"), 1)).expect("write");
    refused(
        &modelc(&["train", &s(&small), "--out", &s(&base.join("r"))]),
        &["`embed.weight` has 16 rows", "vocabulary must be at least"],
    );
    refused(&modelc(&["run", &s(&small), "--recipe", "tiny"]), &["`embed.weight` has 16 rows"]);
    let _ = std::fs::remove_dir_all(&base);
}
