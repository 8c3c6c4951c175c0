//! LoRA adapters folded into their base weights through a backend: the compiler's merge
//! program (`weight += lora_a @ lora_b · scale`) run once over the checkpoint's tensors,
//! which then lose their `lora_a`/`lora_b`.

use modelc_compiler::backend::{Backend, Program};
use modelc_compiler::graph::dim::Dim;
use modelc_compiler::graph::types::{DType, TensorType};
use modelc_runtime::checkpoint::Tensors;
use modelc_runtime::executable::{CallOptions, HostTensor};

/// Folds every adapter of `tensors` in place; returns how many.
pub fn merge(backend: &dyn Backend, tensors: &mut Tensors, scale: f64) -> Result<usize, String> {
    let shapes = tensors.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect();
    let (graph, prefixes) = modelc_compiler::adapters::merge_graph(&shapes, scale)?;
    if prefixes.is_empty() {
        return Ok(0);
    }
    let buffers: Vec<(String, TensorType)> = shapes
        .iter()
        .map(|(k, s)| (k.clone(), TensorType::new(DType::F32, s.iter().map(|&d| Dim::constant(d as i64)).collect())))
        .collect();
    let mut exe = backend.compile(buffers, vec![Program { name: "merge".into(), graph, returns: Vec::new() }])?;
    for (name, (shape, data)) in tensors.iter() {
        exe.write(name, HostTensor::new(shape.clone(), data.clone()))?;
    }
    exe.call("merge", Vec::new(), CallOptions::default())?;
    for p in &prefixes {
        let weight = format!("{p}.weight");
        let t = exe.read(&weight)?;
        tensors.insert(weight, (t.shape, t.data));
        tensors.remove(&format!("{p}.lora_a"));
        tensors.remove(&format!("{p}.lora_b"));
    }
    Ok(prefixes.len())
}
