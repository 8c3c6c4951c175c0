//! Checkpoints: named f32 tensors in safetensors files, and a JSON sidecar saying which
//! step they are and what resuming needs. Every file is written atomically (temporary
//! file, fsync, rename, fsync of the directory), so a crash never leaves a half-written
//! checkpoint.

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
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced (a power cut otherwise
    // may bring back the old name).
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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

/// Reads f32, f16 and bf16 tensors as f64. A tensor of another dtype is an error naming
/// it, its dtype and the file.
pub fn load(path: &Path) -> Result<Tensors, String> {
    let (tensors, others) = read(path)?;
    match others.first() {
        Some((name, dtype)) => {
            Err(format!("`{name}` in `{}` is {dtype}; a parameter loads from f32, f16 or bf16", path.display()))
        }
        None => Ok(tensors),
    }
}

/// The float tensors of a safetensors file as f64 (f32, f16, bf16), and the names and
/// dtypes of the others (integer buffers such as BERT's `position_ids`). A file that is
/// not safetensors, or is cut short, is described in words.
pub fn read(path: &Path) -> Result<(Tensors, Vec<(String, String)>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading `{}`: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|_| format!("`{}` {}", path.display(), damage(&bytes)))?;
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
                others.push((name, format!("{other:?}").to_lowercase()));
                continue;
            }
        };
        out.insert(name, (view.shape().to_vec(), data));
    }
    others.sort();
    Ok((out, others))
}

/// Why bytes that the safetensors reader refused are not a checkpoint, in words: not a
/// safetensors file at all, or one cut short (how many bytes of how many), or a header
/// that does not describe its data.
pub fn damage(bytes: &[u8]) -> String {
    let len = bytes.len();
    if len < 8 {
        return format!("is not a safetensors file ({len} bytes; the format starts with an 8-byte header length)");
    }
    let n = u64::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]);
    // A header is a JSON object: `{` (safetensors pads with spaces, never before it).
    let looks_like_header = bytes.get(8) == Some(&b'{');
    if !looks_like_header || n < 2 {
        return "is not a safetensors file (no JSON header after the length)".to_string();
    }
    let header_end = 8u64.saturating_add(n);
    if header_end > len as u64 {
        return format!(
            "is truncated: {} of at least {} bytes (it ends inside the header)",
            thousands(len as u64),
            thousands(header_end)
        );
    }
    let header: serde_json::Value = match serde_json::from_slice(&bytes[8..header_end as usize]) {
        Ok(h) => h,
        Err(e) => return format!("is not a safetensors file (its header is not JSON: {e})"),
    };
    let data_end =
        header.as_object().into_iter().flatten().filter_map(|(_, t)| t["data_offsets"][1].as_u64()).max().unwrap_or(0);
    let want = header_end.saturating_add(data_end);
    if want > len as u64 {
        return format!("is truncated: {} of {} bytes", thousands(len as u64), thousands(want));
    }
    "is damaged: its header does not describe its data (offsets, shapes or dtypes disagree)".to_string()
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The first tensor (in name order) holding a NaN or an infinity: its name, and how many
/// of its values are not finite.
pub fn first_non_finite(tensors: &Tensors) -> Option<(&str, usize, usize)> {
    tensors.iter().find_map(|(name, (_, data))| {
        let bad = data.iter().filter(|x| !x.is_finite()).count();
        (bad > 0).then_some((name.as_str(), bad, data.len()))
    })
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

    #[test]
    fn damage_is_described_in_words() {
        let t = Tensors::from([("w".to_string(), (vec![4, 4], vec![1.0; 16]))]);
        let dir = std::env::temp_dir().join(format!("modelc-damage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("t.safetensors");
        save(&path, &t).expect("save");
        let bytes = std::fs::read(&path).expect("read");
        let cut = &bytes[..bytes.len() - 10];
        assert_eq!(damage(cut), format!("is truncated: {} of {} bytes", cut.len(), bytes.len()));
        assert!(damage(&bytes[..20]).contains("ends inside the header"), "{}", damage(&bytes[..20]));
        assert!(damage(b"hello").starts_with("is not a safetensors file"));
        assert!(damage(b"hello world, this is text").starts_with("is not a safetensors file"));
        std::fs::write(&path, cut).expect("write");
        let err = load(&path).expect_err("truncated");
        assert!(err.contains("truncated") && err.contains("t.safetensors"), "{err}");
        assert_eq!(thousands(1234567), "1,234,567");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
