//! `--weights`: importing a PyTorch-layout safetensors file by name. No download: the files
//! are written here from a small MiniLM's parameters (`--set`), in both layouts, and `run` on the
//! PyTorch-layout file must give exactly what `run` on modelc's own checkpoint gives.

mod common;

use common::{compile, root};
use modelc_compiler::interp::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn modelc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelc")).args(args).current_dir(root()).output().expect("running modelc")
}

/// How a dtype rounds an f64.
type Rounding = fn(f64) -> f64;

fn tiny_params(round: Rounding) -> HashMap<String, Tensor> {
    let source = std::fs::read_to_string(root().join("examples/minilm.model")).expect("minilm.model");
    // The recipe-free model at a CPU size, as `run_on_text` sets it.
    let source = source
        .replace("vocab: int = 30522", "vocab: int = 257")
        .replace("d: int = 384", "d: int = 32")
        .replace("layers: int = 6", "layers: int = 2")
        .replace("heads: int = 12", "heads: int = 4")
        .replace("ffn: int = 1536", "ffn: int = 64")
        .replace("positions: int = 512", "positions: int = 64");
    let graph = compile("examples/minilm.model", &source, None);
    let mut params = common::params(&graph, 0.5, 11);
    for t in params.values_mut() {
        t.data.iter_mut().for_each(|x| *x = round(*x));
    }
    params
}

/// PyTorch stores every `Linear` weight `[out, in]`; here: each 2-D weight outside the
/// embeddings (written independently of the model's `stored` declarations).
fn torch_layout(name: &str, t: &Tensor) -> Tensor {
    if t.shape.len() == 2 && !name.starts_with("embeddings.") {
        let (r, c) = (t.shape[0], t.shape[1]);
        Tensor::new(vec![c, r], (0..r * c).map(|i| t.data[(i % r) * c + i / r]).collect())
    } else {
        t.clone()
    }
}

/// Writes a safetensors file; `encode` gives each value's bytes in `dtype`.
fn write(path: &Path, tensors: &[(String, Vec<usize>, Dtype, Vec<u8>)]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, s, d, b)| (n.as_str(), TensorView::new(*d, s.clone(), b).expect("a valid tensor")))
        .collect();
    std::fs::write(path, safetensors::serialize(views, &None).expect("serialize")).expect("write");
}

fn bytes(t: &Tensor, dtype: Dtype) -> Vec<u8> {
    t.data
        .iter()
        .flat_map(|&x| match dtype {
            Dtype::F16 => half::f16::from_f64(x).to_le_bytes().to_vec(),
            Dtype::BF16 => half::bf16::from_f64(x).to_le_bytes().to_vec(),
            _ => (x as f32).to_le_bytes().to_vec(),
        })
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modelc-weights-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn run_on_text(flag: &str, path: &Path) -> String {
    let p = path.to_str().expect("utf-8 path");
    let out = modelc(&[
        "run",
        "examples/minilm.model",
        "--set",
        "vocab=257",
        "--set",
        "d=32",
        "--set",
        "layers=2",
        "--set",
        "heads=4",
        "--set",
        "ffn=64",
        "--set",
        "positions=64",
        flag,
        p,
        "--text",
        "weights in two layouts",
        "--text",
        "x",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{flag}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn pytorch_layout_in_every_dtype_equals_the_native_checkpoint() {
    let dir = temp_dir("layouts");
    let cases: [(Dtype, Rounding); 3] = [
        (Dtype::F32, |x| x as f32 as f64),
        (Dtype::F16, |x| half::f16::from_f64(x).to_f64()),
        (Dtype::BF16, |x| half::bf16::from_f64(x).to_f64()),
    ];
    for (dtype, round) in cases {
        let params = tiny_params(round);
        // modelc's own checkpoint: declared layout, f32.
        let native = dir.join("native.safetensors");
        let tensors = params.iter().map(|(k, t)| (k.clone(), (t.shape.clone(), t.data.clone()))).collect();
        modelc_runtime::checkpoint::save(&native, &tensors).expect("save");
        // The PyTorch-layout file, in `dtype`, with an integer buffer and a pooler the
        // model declares `unused`.
        let mut torch: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = params
            .iter()
            .map(|(k, t)| {
                let t = torch_layout(k, t);
                (k.clone(), t.shape.clone(), dtype, bytes(&t, dtype))
            })
            .collect();
        torch.push(("embeddings.position_ids".into(), vec![1, 4], Dtype::I64, vec![0; 32]));
        let pooler = Tensor::new(vec![2, 2], vec![1.0; 4]);
        torch.push(("pooler.dense.weight".into(), vec![2, 2], dtype, bytes(&pooler, dtype)));
        let imported = dir.join("model.safetensors");
        write(&imported, &torch);
        // A directory holding `model.safetensors` works as well as the file.
        assert_eq!(run_on_text("--weights", &dir), run_on_text("--checkpoint", &native), "{dtype:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mismatches_are_listed_with_both_shapes() {
    let dir = temp_dir("errors");
    let params = tiny_params(|x| x);
    let mut torch: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "encoder.layer.1.output.dense.bias")
        .map(|(k, t)| {
            let t = torch_layout(k, t);
            let t = if k == "encoder.layer.0.attention.self.query.weight" {
                Tensor::new(vec![32, 16], t.data[..512].to_vec())
            } else {
                t
            };
            // An f64 tensor under a parameter's name: the wrong dtype, not "missing".
            if k == "encoder.layer.0.output.dense.bias" {
                let f64s: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                return (k.clone(), t.shape.clone(), Dtype::F64, f64s);
            }
            (k.clone(), t.shape.clone(), Dtype::F32, bytes(&t, Dtype::F32))
        })
        .collect();
    torch.push(("extra.scale".into(), vec![3], Dtype::F32, vec![0; 12]));
    let file = dir.join("bad.safetensors");
    write(&file, &torch);
    let mut args = vec!["run", "examples/minilm.model"];
    for set in ["vocab=257", "d=32", "layers=2", "heads=4", "ffn=64", "positions=64"] {
        args.extend(["--set", set]);
    }
    args.extend(["--weights", file.to_str().expect("utf-8"), "--text", "x"]);
    let out = modelc(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "missing from the checkpoint (1)",
        "encoder.layer.1.output.dense.bias [32]",
        "wrong shape or dtype (2)",
        "encoder.layer.0.output.dense.bias: the checkpoint's is f64, a parameter loads from f32, f16 or bf16",
        "encoder.layer.0.attention.self.query.weight: the checkpoint's is [32, 16], the model's [32, 32] (stored as [32, 32])",
        "in the checkpoint but not in the model (1)",
        "extra.scale [3]",
        "unused",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
