//! `--weights`: parameters from another framework's safetensors checkpoint (Hugging Face,
//! PyTorch), matched by name to a compiled model. A weight that declares a `stored` layout
//! (`std.nn.Linear`: `[d_out, d_in]`) is read in that layout and permuted into the model's.
//! Every mismatch is reported at once: missing parameters, tensors the model does not
//! declare (unless its `unused` globs cover them) and wrong shapes, with both shapes.

use modelc_compiler::elab::instance::Instance;
use modelc_compiler::interp::tensor::{transpose, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// How many names each kind of mismatch lists before summarising.
const LISTED: usize = 12;

/// Loads every parameter of `instance` from `path`, a safetensors file or a directory
/// holding `model.safetensors`.
pub fn import(instance: &Instance, path: &Path) -> Result<HashMap<String, Tensor>, String> {
    let file = resolve(path)?;
    let (mut tensors, buffers) = modelc_runtime::checkpoint::read(&file)?;
    let dtype_of: HashMap<String, String> = buffers.into_iter().collect();
    let unused = instance.unused_globs("");
    let mut params = HashMap::new();
    let (mut missing, mut wrong) = (Vec::new(), Vec::new());
    instance.for_each_weight("", &[], &mut |name, shape, weight| {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        // A `stack`'s copy axes lead both layouts; the stored permutation is of the rest.
        let lead = shape.len() - weight.shape.len();
        let perm: Vec<usize> = match &weight.stored {
            Some(p) => (0..lead).chain(p.iter().map(|&a| a + lead)).collect(),
            None => (0..shape.len()).collect(),
        };
        let stored: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        match tensors.remove(name) {
            // An integer or f64 tensor under a parameter's name is there, of the wrong dtype.
            None if dtype_of.contains_key(name) => wrong.push(format!(
                "{name}: the checkpoint's is {}, a parameter loads from f32, f16 or bf16",
                dtype_of[name]
            )),
            None => missing.push(format!("{name} {}", dims(&stored))),
            Some((have, _)) if have != stored => wrong.push(format!(
                "{name}: the checkpoint's is {}, the model's {}",
                dims(&have),
                if perm.iter().enumerate().all(|(i, &a)| i == a) {
                    dims(&stored)
                } else {
                    format!("{} (stored as {})", dims(&shape), dims(&stored))
                }
            )),
            Some((have, data)) => {
                let t = Tensor::new(have, data);
                let t = if perm.iter().enumerate().all(|(i, &a)| i == a) { t } else { transpose(&t, &inverse(&perm)) };
                params.insert(name.to_string(), t);
            }
        }
    });
    let unexpected: BTreeSet<String> = tensors
        .iter()
        .filter(|(name, _)| !unused.iter().any(|g| modelc_compiler::glob::matches(g, name)))
        .map(|(name, (shape, _))| format!("{name} {}", dims(shape)))
        .collect();
    if missing.is_empty() && wrong.is_empty() && unexpected.is_empty() {
        return Ok(params);
    }
    let mut msg = format!("`{}` does not fit `{}`:", file.display(), instance.block_name);
    let mut section = |what: &str, names: &[String]| {
        if names.is_empty() {
            return;
        }
        msg.push_str(&format!("\n  {what} ({}):", names.len()));
        for n in names.iter().take(LISTED) {
            msg.push_str(&format!("\n    {n}"));
        }
        if names.len() > LISTED {
            msg.push_str(&format!("\n    ... and {} more", names.len() - LISTED));
        }
    };
    section("missing from the checkpoint", &missing);
    section("wrong shape or dtype", &wrong);
    section("in the checkpoint but not in the model", &unexpected.into_iter().collect::<Vec<_>>());
    msg.push_str(
        "\n  hint: the model's parameter names (`modelc inspect`) must equal the checkpoint's; \
         declare tensors it leaves out with `unused \"glob\"` in the model",
    );
    Err(msg)
}

fn resolve(path: &Path) -> Result<PathBuf, String> {
    if path.is_dir() {
        let file = path.join("model.safetensors");
        return if file.exists() {
            Ok(file)
        } else {
            Err(format!("`{}` holds no `model.safetensors`", path.display()))
        };
    }
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        Err(format!("no weights at `{}`", path.display()))
    }
}

fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

fn dims(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_round_trip() {
        // File `[3, 2]` holds a declared `[2, 3]` transposed: element (i, j) at (j, i).
        let file = Tensor::new(vec![3, 2], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let t = transpose(&file, &inverse(&[1, 0]));
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }
}
