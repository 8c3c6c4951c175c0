//! Elaboration: the parameter totals of published configurations, computed here by
//! formula (independently of the compiler) and compared with `modelc inspect --json`;
//! ill-typed programs (`tests/elab/err/`) rejected with located diagnostics (snapshots).

mod common;

use common::*;
use std::process::Command;

fn inspect_total(file: &str, sets: &[(&str, u64)]) -> u64 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelc"));
    cmd.current_dir(root()).args(["inspect", file, "--json"]);
    for (k, v) in sets {
        cmd.args(["--set", &format!("{k}={v}")]);
    }
    let out = cmd.output().expect("running modelc");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON");
    json["params"]["total"].as_u64().expect("params.total is an integer")
}

/// Llama family (RMSNorm, SwiGLU, GQA, untied head, no biases).
fn llama_formula(vocab: u64, d: u64, layers: u64, heads: u64, kv_heads: u64, ffn: u64) -> u64 {
    let hd = d / heads;
    let attn = d * heads * hd + 2 * d * kv_heads * hd + heads * hd * d;
    let mlp = 3 * d * ffn;
    vocab * d + layers * (attn + mlp + 2 * d) + d + d * vocab
}

/// Mixtral: Llama with `experts` SwiGLU experts and a bias-free router per layer.
fn mixtral_formula(vocab: u64, d: u64, layers: u64, heads: u64, kv_heads: u64, ffn: u64, experts: u64) -> u64 {
    let hd = d / heads;
    let attn = d * heads * hd + 2 * d * kv_heads * hd + heads * hd * d;
    let moe = d * experts + experts * 3 * d * ffn;
    vocab * d + layers * (attn + moe + 2 * d) + d + d * vocab
}

/// GPT-2: learned positions, biased attention and MLP, LayerNorms with bias, tied head.
fn gpt2_formula(vocab: u64, positions: u64, d: u64, layers: u64, ffn: u64) -> u64 {
    let attn = 4 * (d * d + d);
    let mlp = d * ffn + ffn + ffn * d + d;
    vocab * d + positions * d + layers * (attn + mlp + 4 * d) + 2 * d
}

/// BERT with pooler: word, position and token-type embeddings with a LayerNorm, post-LN
/// layers, a pooler `Linear(d, d)`; the MLM head is tied with no extra parameters.
fn bert_formula(vocab: u64, positions: u64, types: u64, d: u64, layers: u64, ffn: u64) -> u64 {
    let attn = 4 * (d * d + d);
    let mlp = d * ffn + ffn + ffn * d + d;
    (vocab + positions + types) * d + 2 * d + layers * (attn + mlp + 4 * d) + d * d + d
}

#[test]
fn published_totals_come_out_exactly() {
    let cases = [
        ("examples/gpt2.model", gpt2_formula(50257, 1024, 768, 12, 3072), 124_439_808u64),
        ("examples/llama.model", llama_formula(32000, 4096, 32, 32, 32, 11008), 6_738_415_616),
        ("examples/mistral.model", llama_formula(32000, 4096, 32, 32, 8, 14336), 7_241_732_096),
        ("examples/mixtral.model", mixtral_formula(32000, 4096, 32, 32, 8, 14336, 8), 46_702_792_704),
        ("examples/bert.model", bert_formula(30522, 512, 2, 768, 12, 3072), 109_482_240),
        // all-MiniLM-L6-v2: BERT's shape without the pooler.
        ("examples/minilm.model", bert_formula(30522, 512, 2, 384, 6, 1536) - (384 * 384 + 384), 22_565_376),
    ];
    for (file, formula, published) in cases {
        assert_eq!(formula, published, "the test's own formula for {file} is wrong");
        assert_eq!(inspect_total(file, &[]), published, "{file}");
    }
}

#[test]
fn other_published_configurations_through_set() {
    // Llama-2-13B.
    let sets = [("d", 5120), ("layers", 40), ("heads", 40), ("kv_heads", 40), ("ffn", 13824)];
    assert_eq!(llama_formula(32000, 5120, 40, 40, 40, 13824), 13_015_864_320);
    assert_eq!(inspect_total("examples/llama.model", &sets), 13_015_864_320);
    // TinyLlama-1.1B (GQA with 4 KV heads).
    let sets = [("d", 2048), ("layers", 22), ("heads", 32), ("kv_heads", 4), ("ffn", 5632)];
    assert_eq!(llama_formula(32000, 2048, 22, 32, 4, 5632), 1_100_048_384);
    assert_eq!(inspect_total("examples/llama.model", &sets), 1_100_048_384);
    // GPT-2 medium.
    let sets = [("d", 1024), ("layers", 24), ("heads", 16), ("ffn", 4096)];
    assert_eq!(gpt2_formula(50257, 1024, 1024, 24, 4096), 354_823_168);
    assert_eq!(inspect_total("examples/gpt2.model", &sets), 354_823_168);
    // BERT-large (uncased), with pooler.
    let sets = [("d", 1024), ("layers", 24), ("heads", 16), ("ffn", 4096)];
    assert_eq!(bert_formula(30522, 512, 2, 1024, 24, 4096), 335_141_888);
    assert_eq!(inspect_total("examples/bert.model", &sets), 335_141_888);
}

#[test]
fn every_example_checks_and_inspects() {
    for file in model_files("examples") {
        let out = Command::new(env!("CARGO_BIN_EXE_modelc")).current_dir(root()).args(["check", &file]).output();
        let out = out.expect("running modelc");
        assert_eq!(out.status.code(), Some(0), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A recipe's model with its own arguments.
    let total = {
        let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
            .current_dir(root())
            .args(["inspect", "examples/llama.model", "--recipe", "tiny", "--json"])
            .output()
            .expect("running modelc");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        json["params"]["total"].as_u64().unwrap_or_default()
    };
    assert_eq!(total, llama_formula(256, 64, 2, 4, 2, 172));
}

#[test]
fn ill_typed_programs_are_rejected_with_located_diagnostics() {
    // Located in the fixture, or in the file it imports where the error is.
    let rejected = rejected("tests/elab/err", Some("tests/elab/err/imported/"));
    assert!(rejected.len() >= 15, "fixtures missing: {}", rejected.len());
    for (name, stderr) in rejected {
        insta::assert_snapshot!(format!("elab__{name}"), stderr);
    }
}

#[test]
fn set_errors_point_into_the_set_text() {
    let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(root())
        .args(["--color", "never", "inspect", "examples/llama.model", "--set", "head=8"])
        .output()
        .expect("running modelc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("--set:2:1") && stderr.contains("did you mean `heads`?"), "{stderr}");
}

/// `--recipe tiny` where the example has one (minilm has none: its defaults are the model).
fn tiny_recipe(file: &str) -> Vec<&'static str> {
    let source = std::fs::read_to_string(root().join(file)).expect("example");
    if source.contains("\nrecipe tiny") {
        vec!["--recipe", "tiny"]
    } else {
        Vec::new()
    }
}

/// The Graph IR of every example at its `tiny` recipe: reviewing a diff here is reviewing
/// what the compiler makes of the stdlib and the models.
#[test]
fn graph_ir_of_every_example() {
    for file in model_files("examples") {
        let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
            .current_dir(root())
            .args(["emit", &file, "--stage", "ir"])
            .args(tiny_recipe(&file))
            .output()
            .expect("running modelc");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{file}: {stderr}");
        let ir = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(ir.contains("= param \"") && ir.contains("\nreturn %"), "{file}: no parameters or result in\n{ir}");
        insta::assert_snapshot!(format!("ir__{}", snapshot_name(&file)), ir);
    }
}

/// Parameters the Graph IR reads are exactly those the instance tree declares, with the
/// same shapes (a `stack` adds its copy axis in both).
#[test]
fn graph_parameters_match_the_instance_tree() {
    for file in ["examples/llama.model", "examples/mixtral.model", "examples/gpt2.model"] {
        let ir = Command::new(env!("CARGO_BIN_EXE_modelc"))
            .current_dir(root())
            .args(["emit", file, "--stage", "ir", "--recipe", "tiny"])
            .output()
            .expect("running modelc");
        let ir = String::from_utf8_lossy(&ir.stdout);
        let json = Command::new(env!("CARGO_BIN_EXE_modelc"))
            .current_dir(root())
            .args(["inspect", file, "--recipe", "tiny", "--json"])
            .output()
            .expect("running modelc");
        let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
        // Sum of the IR's parameter sizes, from lines like `%1: f32[256, 64] = param "embed.weight"`.
        let mut total = 0u64;
        for line in ir.lines().filter(|l| l.contains("= param \"")) {
            let dims = line.split('[').nth(1).and_then(|s| s.split(']').next()).unwrap_or_default();
            total += dims.split(", ").map(|d| d.parse::<u64>().expect("parameter dims are constants")).product::<u64>();
        }
        assert_eq!(total, json["params"]["total"].as_u64().unwrap_or_default(), "{file}");
    }
}

/// Forward FLOPs come from the IR's op costs; they must agree with the textbook count
/// (2 per weight for the matmuls, 4·L·T·d per token for attention) up to what the
/// textbook leaves out (norms, activations, softmax): a few percent.
#[test]
fn forward_flops_agree_with_the_textbook_count() {
    let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(root())
        .args(["inspect", "examples/llama.model", "--json", "--seq", "4096", "--batch", "2"])
        .output()
        .expect("running modelc");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let per_token = json["flops"]["forward_per_token"].as_u64().expect("forward_per_token") as f64;
    let (vocab, d, layers, seq) = (32000.0, 4096.0, 32.0, 4096.0);
    let params = json["params"]["total"].as_u64().expect("total") as f64;
    let textbook = 2.0 * (params - vocab * d) + 4.0 * layers * seq * d;
    let ratio = per_token / textbook;
    assert!((1.0..1.03).contains(&ratio), "IR count {per_token} vs textbook {textbook} (ratio {ratio})");
    assert_eq!(json["workload"]["batch"], 2);
    // Backward is the backward graph's cost: about two forwards for a matmul-dominated model.
    let backward = json["flops"]["backward_per_step"].as_u64().expect("backward") as f64;
    let forward = json["flops"]["forward_per_step"].as_u64().expect("forward") as f64;
    assert!((1.9..2.2).contains(&(backward / forward)), "backward/forward = {}", backward / forward);
    // The recipe's workload when one is named.
    let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(root())
        .args(["inspect", "examples/llama.model", "--json", "--recipe", "tiny"])
        .output()
        .expect("running modelc");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!((json["workload"]["batch"].as_i64(), json["workload"]["seq"].as_i64()), (Some(8), Some(64)));
    // AdamW keeps two f32 moments per parameter.
    let total = json["params"]["total"].as_u64().unwrap_or_default();
    assert_eq!(json["memory"]["optimizer_bytes"].as_u64(), Some(8 * total));
}

/// Backward FLOPs come from the backward graph: a full fine-tune's backward is about two
/// forwards (input and weight gradients of every matmul); a LoRA's frozen base weights get
/// no weight gradient, so its backward is about one forward.
#[test]
fn backward_flops_count_only_trained_weights() {
    let ratio = |file: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
            .current_dir(root())
            .args(["inspect", file, "--recipe", "tiny", "--json"])
            .output()
            .expect("running modelc");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let backward = json["flops"]["backward_per_step"].as_u64().expect("backward") as f64;
        backward / json["flops"]["forward_per_step"].as_u64().expect("forward") as f64
    };
    let (full, lora) = (ratio("examples/llama.model"), ratio("examples/lora.model"));
    assert!((1.9..2.4).contains(&full), "llama: backward/forward = {full}");
    assert!((1.0..1.3).contains(&lora), "lora: backward/forward = {lora}");
}

/// Well-typed fixtures (`tests/elab/ok/`) check, and their Graph IR is a snapshot.
#[test]
fn well_typed_fixtures_elaborate() {
    let files = model_files("tests/elab/ok");
    assert!(!files.is_empty());
    for file in files {
        let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
            .current_dir(root())
            .args(["emit", &file, "--stage", "ir"])
            .output()
            .expect("running modelc");
        assert_eq!(out.status.code(), Some(0), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        insta::assert_snapshot!(format!("ir__{}", snapshot_name(&file)), String::from_utf8_lossy(&out.stdout));
    }
}

/// `modelc inspect` of every example at its `tiny` recipe, as the user reads it.
#[test]
fn inspect_report_of_every_example() {
    for file in model_files("examples") {
        let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
            .current_dir(root())
            .args(["inspect", &file])
            .args(tiny_recipe(&file))
            .output()
            .expect("running modelc");
        assert_eq!(out.status.code(), Some(0), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        insta::assert_snapshot!(format!("inspect__{}", snapshot_name(&file)), String::from_utf8_lossy(&out.stdout));
    }
}
