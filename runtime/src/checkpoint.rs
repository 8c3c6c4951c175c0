//! Checkpoints: named f32 tensors in safetensors files, and a JSON sidecar saying which
//! step they are and what resuming needs. Every file is written atomically (temporary
//! file, fsync, rename), so a crash never leaves a half-written checkpoint.

use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Named tensors, values stored as f64 but holding f32-representable numbers.
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

pub fn save(path: &Path, tensors: &Tensors) -> Result<(), String> {
    let bytes: BTreeMap<&String, (Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, data))| (k, (shape.clone(), data.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect())))
        .collect();
    let views: Vec<(&String, TensorView)> = bytes
        .iter()
        .map(|(k, (shape, b))| TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (*k, v)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{e:?}"))?;
    let out = safetensors::serialize(views, &None).map_err(|e| format!("{e:?}"))?;
    write_atomically(path, &out).map_err(|e| format!("writing `{}`: {e}", path.display()))
}

/// Reads f32, f16 and bf16 tensors as f64.
pub fn load(path: &Path) -> Result<Tensors, String> {
    let (tensors, others) = read(path)?;
    match others.first() {
        Some((name, dtype)) => Err(format!("`{name}` in `{}` is {dtype}; f32, f16 and bf16 load", path.display())),
        None => Ok(tensors),
    }
}

/// The float tensors of a safetensors file as f64 (f32, f16, bf16), and the names and
/// dtypes of the others (integer buffers such as BERT's `position_ids`).
pub fn read(path: &Path) -> Result<(Tensors, Vec<(String, String)>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading `{}`: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("`{}`: {e:?}", path.display()))?;
    let mut out = Tensors::new();
    let mut others = Vec::new();
    for (name, view) in st.tensors() {
        let data: Vec<f64> = match view.dtype() {
            Dtype::F32 => {
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
            }
            Dtype::F16 => view.data().chunks_exact(2).map(|c| half_f16(u16::from_le_bytes([c[0], c[1]]))).collect(),
            Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64)
                .collect(),
            other => {
                others.push((name, format!("{other:?}")));
                continue;
            }
        };
        out.insert(name, (view.shape().to_vec(), data));
    }
    others.sort();
    Ok((out, others))
}

/// IEEE half precision bits to f64.
fn half_f16(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = ((bits >> 10) & 0x1f) as i32;
    let frac = (bits & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_f32_values_exactly() {
        let dir = std::env::temp_dir().join(format!("modelc-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("t.safetensors");
        let t = Tensors::from([
            ("a.weight".to_string(), (vec![2, 3], vec![0.1f32 as f64, -2.5, 3.0, 1e-8f32 as f64, 0.0, 7.25])),
            ("b".to_string(), (vec![], vec![42.0])),
        ]);
        save(&path, &t).expect("save");
        assert_eq!(load(&path).expect("load"), t);
        assert!(!path.with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
