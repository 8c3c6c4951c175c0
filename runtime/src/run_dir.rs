//! A training run's directory as a journal: `run.json` says which run it is (a
//! fingerprint of the model, recipe, seed, data and length), `metrics.jsonl` gets each
//! step's row as the step completes, and each `step-N` checkpoint is written only after
//! the rows up to it are on disk, with the byte length of `metrics.jsonl` at that step in
//! its sidecar. Resuming picks the newest checkpoint that is intact and belongs to this
//! run, truncates `metrics.jsonl` to its length and appends from there: after any kill,
//! the rows are each step exactly once, every line valid JSON.

use crate::checkpoint::{self, write_atomically, Tensors};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const RUN_FILE: &str = "run.json";
pub const METRICS: &str = "metrics.jsonl";

/// What a run is: compared field by field when it is resumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The `.model` file as it was named (shown, not compared).
    pub file: String,
    /// sha256 of the model's syntax trees (its file without recipes, and every module it
    /// imports); comments and layout do not count.
    pub model: String,
    pub recipe_name: String,
    /// sha256 of the recipe's syntax tree and the `--set` overrides.
    pub recipe: String,
    pub seed: u64,
    /// The training text: `builtin` or the `--data` path as given (shown, not compared).
    pub data_name: String,
    /// sha256 of the training text's bytes.
    pub data: String,
    /// The run's length: the learning-rate schedule depends on it.
    pub steps: u64,
}

impl Fingerprint {
    /// sha256 of the fingerprint: each sidecar carries it, so a checkpoint copied from
    /// another run's directory is never taken for one of this run.
    pub fn digest(&self) -> String {
        sha256(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }

    /// Every way `self` (this command) differs from `run` (the directory's), in words.
    pub fn differences(&self, run: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.recipe_name != run.recipe_name {
            out.push(format!(
                "the run trains recipe `{}`, this command names `{}` (add `--recipe {}`)",
                run.recipe_name, self.recipe_name, run.recipe_name
            ));
        } else if self.recipe != run.recipe {
            out.push(format!(
                "recipe `{}` (its entries, or the `--set` values) is not the one the run started with",
                self.recipe_name
            ));
        }
        if self.model != run.model {
            out.push(format!(
                "the model in `{}` is not the one the run started from (its blocks changed; comments and layout do not count)",
                self.file
            ));
        }
        if self.seed != run.seed {
            out.push(format!(
                "the run's seed is {}, this command's {} (drop `--seed`, or `--seed {}`)",
                run.seed, self.seed, run.seed
            ));
        }
        if self.data != run.data {
            out.push(format!(
                "the training text differs: the run read {} (sha256 {}), this command {} (sha256 {})",
                run.data_name,
                short(&run.data),
                self.data_name,
                short(&self.data)
            ));
        }
        if self.steps != run.steps {
            out.push(format!(
                "the run is {} steps long, this command asks for {} (the schedule depends on the total; drop `--steps`, or `--steps {}`)",
                run.steps, self.steps, run.steps
            ));
        }
        out
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `run.json`.
#[derive(Serialize, Deserialize)]
struct RunFile {
    fingerprint: Fingerprint,
    modelc: String,
}

/// The mixed-precision loss scale a checkpoint saved.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedScale {
    pub scale: f64,
    pub clean: u64,
}

/// `step-N.json`: which step the checkpoint is, of which run, and what resuming needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    pub step: u64,
    pub seed: u64,
    /// The run's fingerprint digest.
    #[serde(default)]
    pub run: String,
    pub params: String,
    pub optimizer: String,
    /// Optimizer steps taken (skipped steps do not count).
    pub optimizer_step: u64,
    /// Data order and dropout are functions of (seed, step): nothing else to restore.
    pub next_batch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<SavedScale>,
    /// The length of `metrics.jsonl` once this step's row was written.
    #[serde(default)]
    pub metrics_bytes: u64,
}

/// A checkpoint read back, checked.
pub struct Resumed {
    pub step: u64,
    pub params: Tensors,
    pub optimizer_step: u64,
    pub state: Tensors,
    pub loss_scale: Option<(f64, u64)>,
    pub metrics_bytes: u64,
}

/// An open run directory: rows are appended, checkpoints written after them.
pub struct RunDir {
    dir: PathBuf,
    metrics: std::fs::File,
    /// Bytes of `metrics.jsonl` written so far.
    written: u64,
    digest: String,
    seed: u64,
    /// The newest checkpoint of this run on disk (written, or resumed from).
    pub last_checkpoint: Option<u64>,
}

/// Files of a run that `--overwrite` removes (nothing else in the directory is touched).
fn is_run_file(name: &str) -> bool {
    name == RUN_FILE
        || name == METRICS
        || name == "final.safetensors"
        || name.strip_prefix("step-").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The fingerprint in `dir/run.json`, if it has one that reads.
pub fn recorded(dir: &Path) -> Option<Fingerprint> {
    let text = std::fs::read_to_string(dir.join(RUN_FILE)).ok()?;
    serde_json::from_str::<RunFile>(&text).ok().map(|r| r.fingerprint)
}

/// The steps `step-N.json` in `dir`, newest first.
fn checkpoint_steps(dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.strip_suffix(".json")?.parse().ok())
        .collect();
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps
}

impl RunDir {
    /// Starts a new run in `dir`. A directory that holds a run already (this one or
    /// another) is refused unless `overwrite`, which removes that run's files first.
    pub fn create(dir: &Path, fingerprint: &Fingerprint, overwrite: bool) -> Result<RunDir, String> {
        let held: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| is_run_file(n))
            .collect();
        if !held.is_empty() && !overwrite {
            let what = match recorded(dir) {
                Some(run) if run == *fingerprint => "this run already".to_string(),
                Some(run) => format!(
                    "another run (recipe `{}` of `{}`, seed {}, {} steps)",
                    run.recipe_name, run.file, run.seed, run.steps
                ),
                None => "another run's files".to_string(),
            };
            let latest = match checkpoint_steps(dir).first() {
                Some(s) => format!(", its latest checkpoint at step {s}"),
                None => ", no checkpoint yet".to_string(),
            };
            return Err(format!(
                "`{}` holds {what}{latest}\n  help: `--resume {}` continues it, `--overwrite` starts over in it, or choose another `--out`",
                dir.display(),
                dir.display()
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        for name in held {
            let path = dir.join(&name);
            std::fs::remove_file(&path).map_err(|e| format!("--overwrite: cannot remove `{}`: {e}", path.display()))?;
        }
        let run = RunFile { fingerprint: fingerprint.clone(), modelc: env!("CARGO_PKG_VERSION").to_string() };
        let text = serde_json::to_string_pretty(&run).map_err(|e| e.to_string())? + "\n";
        write_atomically(&dir.join(RUN_FILE), text.as_bytes())
            .map_err(|e| format!("cannot write `{}`: {e}", dir.join(RUN_FILE).display()))?;
        let metrics = std::fs::File::create(dir.join(METRICS))
            .map_err(|e| format!("cannot write `{}`: {e}", dir.join(METRICS).display()))?;
        Ok(RunDir {
            dir: dir.to_path_buf(),
            metrics,
            written: 0,
            digest: fingerprint.digest(),
            seed: fingerprint.seed,
            last_checkpoint: None,
        })
    }

    /// Reopens the run in `dir` for `fingerprint`: refused, with every difference, if the
    /// directory holds another run. Resumes from the newest intact checkpoint of this run
    /// (each unusable newer one is named in the returned notes) and cuts `metrics.jsonl`
    /// back to that checkpoint's length.
    pub fn resume(dir: &Path, fingerprint: &Fingerprint) -> Result<(RunDir, Resumed, Vec<String>), String> {
        let shown = dir.display();
        if !dir.is_dir() {
            return Err(format!("`--resume {shown}`: there is no such directory"));
        }
        let Some(run) = recorded(dir) else {
            let why = if dir.join(RUN_FILE).exists() { "its `run.json` does not read" } else { "it has no `run.json`" };
            return Err(format!(
                "`--resume {shown}`: {why}, so nothing says which run its files belong to\n  help: `--out {shown} --overwrite` starts the run over there"
            ));
        };
        let differences = fingerprint.differences(&run);
        if !differences.is_empty() {
            return Err(format!(
                "`--resume {shown}`: that directory holds another run:\n  - {}\n  help: resume with the same file, recipe, seed, data and steps; to continue from its weights with changes, start a new run with `from = \"{shown}/step-N.safetensors\"`",
                differences.join("\n  - ")
            ));
        }
        let metrics_len = std::fs::metadata(dir.join(METRICS)).map(|m| m.len()).unwrap_or(0);
        let digest = fingerprint.digest();
        let (resumed, notes) = newest_intact(dir, Some((&digest, fingerprint.seed, metrics_len)))?;
        let path = dir.join(METRICS);
        let metrics = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|f| {
                f.set_len(resumed.metrics_bytes)?;
                f.sync_all()?;
                Ok(f)
            })
            .map_err(|e| format!("cannot cut `{}` back to step {}: {e}", path.display(), resumed.step))?;
        let mut out = RunDir {
            dir: dir.to_path_buf(),
            metrics,
            written: resumed.metrics_bytes,
            digest,
            seed: fingerprint.seed,
            last_checkpoint: Some(resumed.step),
        };
        use std::io::Seek;
        out.metrics.seek(std::io::SeekFrom::End(0)).map_err(|e| format!("`{}`: {e}", path.display()))?;
        Ok((out, resumed, notes))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Appends one row (one JSON object, one line) and hands it to the OS at once: a kill
    /// after this keeps it, and a resume cuts what follows the last checkpoint.
    pub fn append(&mut self, step: u64, row: &serde_json::Value) -> Result<(), String> {
        let mut line = row.to_string();
        line.push('\n');
        crate::fault::torn_row(&mut self.metrics, line.as_bytes(), step);
        self.metrics.write_all(line.as_bytes()).map_err(|e| format!("writing `{METRICS}`: {e}"))?;
        self.written += line.len() as u64;
        Ok(())
    }

    /// Writes `step-N.safetensors` (parameters), `step-N.optimizer.safetensors` and the
    /// `step-N.json` sidecar, each atomically, after the rows up to this step are synced;
    /// the sidecar last, so it only ever names files that exist.
    pub fn checkpoint(&mut self, mut sidecar: Sidecar, params: &Tensors, state: &Tensors) -> Result<(), String> {
        let step = sidecar.step;
        self.metrics.sync_data().map_err(|e| format!("syncing `{METRICS}`: {e}"))?;
        sidecar.metrics_bytes = self.written;
        sidecar.run.clone_from(&self.digest);
        sidecar.seed = self.seed;
        sidecar.params = format!("step-{step}.safetensors");
        sidecar.optimizer = format!("step-{step}.optimizer.safetensors");
        checkpoint::save(&self.dir.join(&sidecar.params), params)?;
        crate::fault::point("checkpoint-params", step);
        checkpoint::save(&self.dir.join(&sidecar.optimizer), state)?;
        crate::fault::point("checkpoint-optimizer", step);
        let text = serde_json::to_string_pretty(&sidecar).map_err(|e| e.to_string())? + "\n";
        write_atomically(&self.dir.join(format!("step-{step}.json")), text.as_bytes())
            .map_err(|e| format!("writing the checkpoint sidecar: {e}"))?;
        crate::fault::point("checkpoint-done", step);
        self.last_checkpoint = Some(step);
        Ok(())
    }
}

/// The newest intact checkpoint in a run directory, for reading its weights (`run
/// --checkpoint DIR`, `from`, `merge`): no fingerprint to match.
pub fn latest_checkpoint(dir: &Path) -> Result<Resumed, String> {
    let (resumed, notes) = newest_intact(dir, None)?;
    for note in notes {
        eprintln!("note: {note}");
    }
    Ok(resumed)
}

/// The newest checkpoint that reads and checks, and a note for each newer one that does
/// not. With `run` = (fingerprint digest, seed, length of `metrics.jsonl`), a checkpoint
/// must also belong to that run and name a length the metrics file still has.
fn newest_intact(dir: &Path, run: Option<(&str, u64, u64)>) -> Result<(Resumed, Vec<String>), String> {
    let steps = checkpoint_steps(dir);
    if steps.is_empty() {
        if !dir.is_dir() {
            return Err(format!("`{}` is not a directory", dir.display()));
        }
        return Err(format!(
            "no checkpoint (step-N.json) in `{}`: the run stopped before its first one\n  help: start it again with `--overwrite`; `--checkpoint-every N` makes checkpoints more often",
            dir.display()
        ));
    }
    let mut notes = Vec::new();
    for step in steps {
        match read_checkpoint(dir, step, run) {
            Ok(resumed) => {
                if !notes.is_empty() {
                    notes.push(format!("resuming from step {step}, the newest intact checkpoint"));
                }
                return Ok((resumed, notes));
            }
            Err(why) => notes.push(format!("checkpoint step-{step} is unusable: {why}")),
        }
    }
    Err(format!(
        "no usable checkpoint in `{}`:\n  - {}\n  help: start the run again with `--overwrite`",
        dir.display(),
        notes.join("\n  - ")
    ))
}

fn read_checkpoint(dir: &Path, step: u64, run: Option<(&str, u64, u64)>) -> Result<Resumed, String> {
    let name = format!("step-{step}.json");
    let text = std::fs::read_to_string(dir.join(&name)).map_err(|e| format!("reading `{name}`: {e}"))?;
    let sidecar: Sidecar =
        serde_json::from_str(&text).map_err(|e| format!("`{name}` is not a checkpoint sidecar ({e})"))?;
    if sidecar.step != step {
        return Err(format!("`{name}` says it is step {} (renamed?)", sidecar.step));
    }
    if sidecar.optimizer_step > sidecar.step {
        return Err(format!("`{name}` counts {} optimizer steps in {} steps", sidecar.optimizer_step, sidecar.step));
    }
    if let Some((digest, seed, metrics_len)) = run {
        if sidecar.run != digest || sidecar.seed != seed {
            return Err(format!("`{name}` belongs to another run (seed {}; copied from elsewhere?)", sidecar.seed));
        }
        if sidecar.metrics_bytes > metrics_len {
            return Err(format!(
                "it records {} bytes of `{METRICS}`, which holds {} (rows were removed)",
                checkpoint::thousands(sidecar.metrics_bytes),
                checkpoint::thousands(metrics_len)
            ));
        }
    }
    let load = |file: &str, what: &str| -> Result<Tensors, String> {
        if file.contains('/') || file.contains('\\') || file.is_empty() {
            return Err(format!("`{name}` names {what} file `{file}`, not one of this directory"));
        }
        let tensors = checkpoint::load(&dir.join(file))?;
        if let Some((tensor, bad, total)) = checkpoint::first_non_finite(&tensors) {
            return Err(format!("`{file}` holds non-finite values: `{tensor}` has {bad} of {total}"));
        }
        Ok(tensors)
    };
    let params = load(&sidecar.params, "a parameter")?;
    let state = load(&sidecar.optimizer, "an optimizer")?;
    Ok(Resumed {
        step,
        params,
        optimizer_step: sidecar.optimizer_step,
        state,
        loss_scale: sidecar.loss_scale.map(|s| (s.scale, s.clean)),
        metrics_bytes: sidecar.metrics_bytes,
    })
}
