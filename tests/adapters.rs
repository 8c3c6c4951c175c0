//! Fine-tuning a checkpoint: `examples/lora.model` and `examples/ptuning.model` start
//! `from` the checkpoint of `examples/llama.model`'s tiny recipe. LoRA starts equal to the
//! base, trains only its adapters (the base bit-identical, no optimizer state for it), and
//! merges into a plain checkpoint whose outputs equal the adapted model's.

use modelc_runtime::checkpoint::{load, Tensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary in `dir`, where the examples' relative `runs/...` paths resolve.
fn modelc(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(dir)
        .args(["--color", "never"])
        .args(args)
        .output()
        .expect("running modelc");
    assert!(out.status.success(), "modelc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn example(name: &str) -> String {
    root().join("examples").join(name).display().to_string()
}

/// The `--text` outputs of a run, flattened.
fn outputs(dir: &Path, args: &[&str]) -> Vec<f64> {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.extend(["--text", "The cat sat on the mat.", "--text", "LoRA!", "--json"]);
    let out = modelc(dir, &all);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    fn flat(v: &serde_json::Value, out: &mut Vec<f64>) {
        match v {
            serde_json::Value::Array(items) => items.iter().for_each(|i| flat(i, out)),
            other => out.push(other.as_f64().expect("a number")),
        }
    }
    let mut values = Vec::new();
    flat(&v["output"], &mut values);
    assert!(values.len() > 1000, "{} values", values.len());
    values
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Trains the base model briefly; returns the scratch directory holding `runs/llama-tiny`.
fn base(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modelc-adapters-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    modelc(&dir, &["train", &example("llama.model"), "--steps", "8"]);
    assert!(dir.join("runs/llama-tiny/final.safetensors").exists());
    dir
}

fn is_lora(name: &str) -> bool {
    name.ends_with(".lora_a") || name.ends_with(".lora_b")
}

#[test]
fn lora_starts_at_the_base_trains_only_adapters_and_merges() {
    let dir = base("lora");
    let llama = example("llama.model");
    let lora = example("lora.model");
    let base_ckpt = "runs/llama-tiny/final.safetensors";
    let base_out = outputs(&dir, &[&llama, "--recipe", "tiny", "--checkpoint", base_ckpt]);

    // Step 0: B = 0, so the adapted model's outputs are the base's exactly.
    let adapted0 = outputs(&dir, &[&lora, "--recipe", "tiny"]);
    assert_eq!(adapted0, base_out, "LoRA at step 0 must equal the base bit for bit");

    modelc(&dir, &["train", &lora, "--steps", "12", "--checkpoint-every", "12"]);
    let run = dir.join("runs/lora-tiny");
    let base_params: Tensors = load(&dir.join(base_ckpt)).expect("base");
    let trained: Tensors = load(&run.join("step-12.safetensors")).expect("adapted");
    // The base is frozen: every base tensor is bit-identical; the adapters moved.
    let mut frozen = 0;
    for (name, tensor) in &trained {
        if is_lora(name) {
            continue;
        }
        assert_eq!(Some(tensor), base_params.get(name), "{name} changed");
        frozen += 1;
    }
    assert_eq!(frozen, base_params.len());
    let b = &trained["blocks.0.attn.wq.lora_b"].1;
    assert!(b.iter().any(|x| *x != 0.0), "lora_b did not train");
    // No optimizer state for frozen parameters.
    let state = load(&run.join("step-12.optimizer.safetensors")).expect("optimizer state");
    assert!(!state.is_empty());
    for name in state.keys() {
        assert!(is_lora(name), "optimizer state for frozen `{name}`");
    }

    // `merge = true` wrote the merged weights; the model without the adapter loads them and
    // gives the adapted model's outputs.
    let adapted = outputs(&dir, &[&lora, "--recipe", "tiny", "--checkpoint", "runs/lora-tiny/step-12.safetensors"]);
    assert!(max_diff(&adapted, &base_out) > 1e-4, "training changed nothing");
    let merged = outputs(&dir, &[&llama, "--recipe", "tiny", "--checkpoint", "runs/lora-tiny/final.safetensors"]);
    let diff = max_diff(&merged, &adapted);
    eprintln!("merged vs adapted: max abs difference {diff:e}");
    assert!(diff < 1e-6, "merged vs adapted: {diff}");
    // `modelc merge` writes the same file.
    modelc(&dir, &["merge", &lora, "--checkpoint", "runs/lora-tiny", "--out", "merged.safetensors"]);
    let by_command = std::fs::read(dir.join("merged.safetensors")).expect("merged");
    assert_eq!(by_command, std::fs::read(run.join("final.safetensors")).expect("final"));
    let merged_names: Tensors = load(&dir.join("merged.safetensors")).expect("merged");
    assert!(merged_names.keys().all(|k| !is_lora(k)) && merged_names.len() == base_params.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_shows_trainable_and_frozen_parameters() {
    let out = modelc(&root(), &["inspect", &example("lora.model"), "--recipe", "tiny", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let p = &v["params"];
    // Per layer: wq's A [64, 8] and B [8, 64], wv's A [64, 8] and B [8, 32]; two layers.
    let lora = 2 * (64 * 8 + 8 * 64 + 64 * 8 + 8 * 32);
    assert_eq!(p["trainable"], lora);
    assert_eq!(p["frozen"].as_u64().unwrap_or(0) + lora, p["total"].as_u64().unwrap_or(0));
    // Frozen parameters have no gradients or optimizer state: 4 bytes each, 8 for AdamW.
    assert_eq!(v["memory"]["grads_bytes"], 4 * lora);
    assert_eq!(v["memory"]["optimizer_bytes"], 8 * lora);
    let text = modelc(&root(), &["inspect", &example("lora.model"), "--recipe", "tiny"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("wq        LoRA") && text.contains("frozen"), "{text}");
}

/// `adapter = ptuning(..)` (examples/ptuning.model) is the same model as the P-tuned Llama
/// written out by hand (tests/adapters/prompt_llama.model): same outputs and same training
/// run, bit for bit. Only the prompt trains.
#[test]
fn ptuning_adapter_equals_the_written_out_model_and_trains_only_the_prompt() {
    let dir = base("ptuning");
    let by_hand = root().join("tests/adapters/prompt_llama.model").display().to_string();
    let adapter = outputs(&dir, &[&example("ptuning.model"), "--recipe", "tiny"]);
    assert_eq!(adapter, outputs(&dir, &[&by_hand, "--recipe", "tiny"]), "adapter vs written-out model");
    let base_out = outputs(
        &dir,
        &[&example("llama.model"), "--recipe", "tiny", "--checkpoint", "runs/llama-tiny/final.safetensors"],
    );
    assert!(max_diff(&adapter, &base_out) > 1e-4, "the virtual tokens changed nothing");

    modelc(&dir, &["train", &example("ptuning.model"), "--steps", "6"]);
    modelc(&dir, &["train", &by_hand, "--steps", "6", "--out", "runs/by-hand"]);
    let base_params: Tensors = load(&dir.join("runs/llama-tiny/final.safetensors")).expect("base");
    let tuned: Tensors = load(&dir.join("runs/ptuning-tiny/final.safetensors")).expect("tuned");
    let by_hand_params: Tensors = load(&dir.join("runs/by-hand/final.safetensors")).expect("by hand");
    assert_eq!(tuned, by_hand_params, "adapter vs written-out model after 6 steps");
    let mut prompt = 0;
    for (name, tensor) in &tuned {
        match base_params.get(name) {
            Some(b) => assert_eq!(tensor, b, "{name} changed"),
            None => {
                assert!(name.starts_with("prompt."), "{name}");
                prompt += 1;
            }
        }
    }
    assert_eq!(prompt, 5, "prompt.weight and the MLP's two weights and biases");
    let state = load(&dir.join("runs/ptuning-tiny/step-6.optimizer.safetensors")).expect("state");
    assert!(state.keys().all(|k| k.split_once('.').is_some_and(|(_, n)| n.starts_with("prompt."))));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_base_checkpoint_is_explained() {
    let dir = std::env::temp_dir().join(format!("modelc-adapters-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(&dir)
        .args(["train", &example("lora.model"), "--steps", "1"])
        .output()
        .expect("running modelc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("runs/llama-tiny/final.safetensors") && stderr.contains("modelc train"), "{stderr}");
    assert!(!stderr.contains("panicked"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `init = upcycle(..)` in mixtral's `tiny_upcycled`: the MoE starts from the dense Llama.
/// Without noise it computes what the dense model computes (every expert the dense MLP,
/// dropless routing, renormalised top-k weights); with noise each expert is the dense MLP
/// plus noise of the asked size; everything but the routers is copied bit for bit.
#[test]
fn upcycling_starts_the_moe_at_the_dense_model() {
    let dir = base("upcycle");
    let dense_ckpt = "runs/llama-tiny/final.safetensors";
    let dense_out = outputs(&dir, &[&example("llama.model"), "--recipe", "tiny", "--checkpoint", dense_ckpt]);
    let source = std::fs::read_to_string(example("mixtral.model")).expect("mixtral");
    let form = "upcycle(\"runs/llama-tiny/final.safetensors\", noise: 0.01)";
    assert!(source.contains(form), "the example's recipe changed");
    let exact = dir.join("mixtral_exact.model");
    std::fs::write(&exact, source.replace(form, &form.replace("0.01", "0.0"))).expect("write");
    let moe = outputs(&dir, &[&exact.display().to_string(), "--recipe", "tiny_upcycled"]);
    let diff = max_diff(&moe, &dense_out);
    eprintln!("upcycled (no noise) vs dense: max abs difference {diff:e}");
    assert!(diff < 1e-6, "upcycled MoE vs dense: {diff}");
    let noisy = outputs(&dir, &[&example("mixtral.model"), "--recipe", "tiny_upcycled"]);
    assert!(max_diff(&noisy, &dense_out) > 1e-6, "the noise changed nothing");

    // `--steps 0` writes the initial parameters.
    let out = modelc(&dir, &["train", &example("mixtral.model"), "--recipe", "tiny_upcycled", "--steps", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("initialised fresh: blocks.0.mlp.router.weight, blocks.1.mlp.router.weight\n"), "{stderr}");
    let dense: Tensors = load(&dir.join(dense_ckpt)).expect("dense");
    let init: Tensors = load(&dir.join("runs/mixtral-tiny_upcycled/final.safetensors")).expect("upcycled");
    let mut tiled = 0;
    for (name, (shape, data)) in &init {
        if let Some(d) = dense.get(name) {
            assert_eq!(d, &(shape.clone(), data.clone()), "{name} not copied");
            continue;
        }
        if name.ends_with(".router.weight") {
            continue;
        }
        let from = name.replace(".experts.", ".");
        let (dshape, d) = dense.get(&from).unwrap_or_else(|| panic!("{name}: no dense `{from}`"));
        assert_eq!(&shape[1..], &dshape[..], "{name}");
        let std = (d.iter().map(|x| x * x).sum::<f64>() / d.len() as f64).sqrt();
        let experts: Vec<&[f64]> = data.chunks(d.len()).collect();
        assert_eq!(experts.len(), 4);
        for e in &experts {
            let dev = (e.iter().zip(d).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / d.len() as f64).sqrt();
            assert!((0.008..0.012).contains(&(dev / std)), "{name}: noise {} of the dense std", dev / std);
        }
        assert_ne!(experts[0], experts[1], "{name}: experts are identical");
        tiled += 1;
    }
    assert_eq!(tiled, 2 * 3, "wgate, wup, wdown in each of two layers");

    // A model whose experts are narrower than the dense MLP does not fit, and says why.
    let narrow = dir.join("mixtral_narrow.model");
    std::fs::write(&narrow, source.replace("ffn: 172,\n    experts: 4", "ffn: 128,\n    experts: 4")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_modelc"))
        .current_dir(&dir)
        .args(["train", &narrow.display().to_string(), "--recipe", "tiny_upcycled", "--steps", "1"])
        .output()
        .expect("running modelc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wrong shape: blocks.0.mlp.experts.wgate.weight") && stderr.contains("expert"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
