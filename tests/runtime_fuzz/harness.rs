//! Bytes → a mutated copy of one example's `tiny` recipe → `check`, then `run` (one
//! forward, the loss) and a 2-step `train` through the library, asserting that nothing
//! panics and every exit code is 0, 1 or 2. Shared by the libFuzzer target
//! `fuzz/fuzz_targets/run_tiny.rs` and the bounded property test `tests/runtime_fuzz.rs`.
//!
//! The bytes are read as a stream of choices (zeros once they run out, so the empty input
//! is the unmodified example): which example, then up to `MAX_EDITS` edits, each one of
//! - a number of the `tiny` recipe (its model arguments and entries), or of the whole
//!   file, replaced by one of `NUMBERS`;
//! - the number after a named argument or entry (`seq:`, `heads:`, `accumulate =`,
//!   `warmup(`...) replaced by one of `NUMBERS`;
//! - one identifier of the file replaced by another identifier of the same file;
//! - one recipe entry set to a well-typed alternative from `ENTRIES` (mixed precision,
//!   `recompute = blocks`, `accumulate = 2`, other optimizers and schedules...), or
//!   removed when it already has that value (a toggle).
//!
//! Work is bounded before anything runs: a case whose model (at its defaults, or the
//! recipe's) has more than `Bounds::max_copies` block copies is skipped before `check`
//! (which elaborates each `repeat` copy); after `check`, one whose model has more than
//! `Bounds::max_params` parameters, or whose training step (forward FLOPs from the Graph
//! IR's op costs at the recipe's batch and sequence, times 3 for the backward, times
//! `accumulate`) is above `Bounds::max_step_flops`, or which moves more than
//! `Bounds::max_step_bytes`, is skipped, not failed: the reference interpreter would take
//! minutes on it, which says nothing about correctness. Memory is bounded by passing
//! `--memory-limit 512MiB` to both commands.

// Each includer uses a part (the fuzz target, say, has no use for `Reached`'s codes).
#![allow(dead_code)]

use modelc::commands::{self, RunArgs};
use modelc::report::{MessageFormat, Reporter};
use modelc::train::command::{train, TrainArgs};
use modelc_compiler::Target;
use modelc_grammar::SourceFile;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The examples with a self-contained `tiny` recipe (LoRA and P-tuning need a trained base).
pub const EXAMPLES: &[(&str, &str)] = &[
    ("llama", include_str!("../../examples/llama.model")),
    ("gpt2", include_str!("../../examples/gpt2.model")),
    ("mistral", include_str!("../../examples/mistral.model")),
    ("gemma2", include_str!("../../examples/gemma2.model")),
    ("mixtral", include_str!("../../examples/mixtral.model")),
    ("deepseek_moe", include_str!("../../examples/deepseek_moe.model")),
    ("bert", include_str!("../../examples/bert.model")),
    ("t5", include_str!("../../examples/t5.model")),
];

/// What numbers become: edges (0, 1, -1), small sizes, sizes that divide or do not divide
/// the examples' widths, huge and tiny magnitudes, and (as compile-time expressions, the
/// grammar has no literal for them) infinity and NaN.
pub const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "4",
    "7",
    "8",
    "16",
    "64",
    "-1",
    "1_000_000",
    "1e-9",
    "1e9",
    "0.5",
    "1.0",
    "1e308 * 10.0",
    "0.0 / 0.0",
    "-(1e308 * 10.0)",
];

/// What a number `was` becomes: a value near it (doubled first, then halved, one more or
/// less, a tenth...), which more often keeps the recipe valid, or (half the time) one of
/// `NUMBERS`. A zero byte (what the input reads as once it has ended) doubles.
fn replacement(c: &mut Choices, was: &str) -> String {
    let b = c.byte();
    if b >= 128 {
        return NUMBERS[(b - 128) as usize % NUMBERS.len()].to_string();
    }
    let clean = was.replace('_', "");
    if let Ok(n) = clean.parse::<i64>() {
        let near = [n.saturating_mul(2), n / 2, n.saturating_add(1), n.saturating_sub(1), n.saturating_mul(4), 1];
        return near[b as usize % near.len()].to_string();
    }
    let x = clean.parse::<f64>().unwrap_or(1.0);
    let near = [x * 2.0, x / 2.0, x * 10.0, x / 10.0, 1.0 - x, 0.0];
    format!("{:?}", near[b as usize % near.len()])
}

/// Names whose value (`name: N`, `name = N` or `name(N`) the keyed edit replaces.
pub const KEYS: &[&str] = &[
    "seq",
    "batch",
    "accumulate",
    "steps",
    "d",
    "heads",
    "kv_heads",
    "layers",
    "experts",
    "top_k",
    "shared",
    "expert_ffn",
    "ffn",
    "vocab",
    "head_dim",
    "window",
    "positions",
    "capacity",
    "lr",
    "clip",
    "warmup",
    "mask",
    "mask_id",
    "noise",
    "mean_span",
    "sentinels",
    "first_sentinel",
    "drop",
    "eps",
    "weight_decay",
    "to",
    "balance",
    "zloss",
    "every",
    "seed",
];

/// Well-typed recipe entries: (key, value).
pub const ENTRIES: &[(&str, &str)] = &[
    ("precision", "mixed(compute: f16)"),
    ("precision", "mixed(compute: bf16)"),
    ("precision", "mixed(compute: f16, master: f32, loss_scale: 1024)"),
    ("precision", "mixed(compute: f16, loss_scale: dynamic(init: 1e9, growth_interval: 1), max_skipped: 0)"),
    ("precision", "f32"),
    ("recompute", "blocks"),
    ("accumulate", "2"),
    ("accumulate", "3"),
    ("clip", "1e-9"),
    ("clip", "1.0"),
    ("optimizer", "sgd(lr: 0.1, momentum: 0.9, nesterov: true)"),
    ("optimizer", "sgd(lr: 1e9)"),
    ("optimizer", "adam(lr: 1e-3, betas: (0.0, 0.0), eps: 1e-9)"),
    ("optimizer", "adafactor(lr: 1e-2)"),
    ("schedule", "constant"),
    ("schedule", "wsd(decay: 0.5, to: 0.0)"),
    ("schedule", "warmup(1) then inverse_sqrt"),
    ("schedule", "warmup(0) then linear(to: 0.0)"),
    ("checkpoint", "every(1)"),
    ("seed", "0"),
    ("objective", "causal_lm"),
    ("objective", "mlm(mask: 1.0, mask_id: 0)"),
    ("data", "text(builtin, tokenizer: bytes, seq: 8, batch: 2)"),
    ("data", "text(builtin, tokenizer: bytes, seq: 1, batch: 1)"),
    ("trainable", "[\"*.norm.*\"]"),
];

/// Structural keywords the identifier swap leaves alone (swapping them only makes parse
/// errors, which `parse_format` covers).
const KEYWORDS: &[&str] =
    &["use", "std", "model", "block", "recipe", "forward", "return", "if", "else", "then", "from", "and", "or", "not"];

pub const MAX_EDITS: usize = 6;

/// A stream of choices read from the input bytes; zeros after the end.
pub struct Choices<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Choices<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Choices { bytes, at: 0 }
    }

    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    /// A choice in `0..n` (0 for `n == 0`), from two bytes.
    fn below(&mut self, n: usize) -> usize {
        let v = u16::from_le_bytes([self.byte(), self.byte()]) as usize;
        if n == 0 {
            0
        } else {
            v % n
        }
    }

    fn exhausted(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

/// A mutated source and what was done to it (for failure messages).
#[derive(Clone, Debug)]
pub struct Case {
    pub example: &'static str,
    pub source: String,
    pub edits: Vec<String>,
}

/// The example's text up to the end of its `tiny` recipe (every example lists `tiny`
/// first, after its models): the other recipes are big configurations or need a base.
pub fn tiny_only(text: &str) -> String {
    let start = text.find("\nrecipe tiny {").expect("every example has a `tiny` recipe");
    let end = text[start..].find("\n}\n").map_or(text.len(), |e| start + e + 3);
    text[..end].to_string()
}

/// The byte range of the `tiny` recipe's body.
fn recipe_range(text: &str) -> (usize, usize) {
    let start = text.find("\nrecipe tiny {").map_or(0, |s| s + 1);
    let end = text[start..].find("\n}").map_or(text.len(), |e| start + e + 1);
    (start, end)
}

/// Number literals (`64`, `3e-3`, `1_000`, `0.95`) in `from..to`, as byte ranges.
fn numbers(text: &str, from: usize, to: usize) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = from;
    while i < to {
        let word_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'.');
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            // A comment's numbers mean nothing.
            i = text[i..to].find('\n').map_or(to, |n| i + n);
        } else if b[i].is_ascii_digit() && !word_before {
            let mut j = i + 1;
            while j < to {
                let c = b[j];
                let exp_sign = (c == b'+' || c == b'-') && matches!(b[j - 1], b'e' | b'E');
                let frac = c == b'.' && j + 1 < to && b[j + 1].is_ascii_digit();
                if c.is_ascii_alphanumeric() || c == b'_' || exp_sign || frac {
                    j += 1;
                } else {
                    break;
                }
            }
            out.push((i, j));
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// Identifiers (not keywords, not inside strings or comments) in the text, as byte ranges.
fn identifiers(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            i = text[i..].find('\n').map_or(b.len(), |n| i + n);
        } else if c == b'"' {
            i = text[i + 1..].find('"').map_or(b.len(), |n| i + n + 2);
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if !KEYWORDS.contains(&&text[i..j]) {
                out.push((i, j));
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// The recipe entry `key` of the `tiny` recipe: the byte range of its value (to the end
/// of its last line, before any trailing comment's newline), if present.
fn entry(text: &str, key: &str) -> Option<(usize, usize)> {
    let (start, end) = recipe_range(text);
    let body = &text[start..end];
    let mut offset = 0;
    let mut found: Option<usize> = None;
    for line in body.split_inclusive('\n') {
        let at = start + offset;
        offset += line.len();
        let starts_entry = line.starts_with("  ") && !line.starts_with("   ") && line.contains(" =");
        if let Some(value_start) = found {
            if starts_entry || line.starts_with('}') {
                return Some((value_start, at - 1));
            }
            continue;
        }
        if starts_entry && line[2..].split_whitespace().next() == Some(key) {
            let eq = line.find('=').unwrap_or(0);
            found = Some(at + eq + 1);
        }
    }
    found.map(|v| (v, end.saturating_sub(1).max(v)))
}

/// Applies the edits the bytes choose to one example's `tiny` recipe.
pub fn mutate(bytes: &[u8]) -> Case {
    let mut c = Choices::new(bytes);
    let (example, original) = EXAMPLES[c.byte() as usize % EXAMPLES.len()];
    let mut text = tiny_only(original);
    let mut edits = Vec::new();
    while !c.exhausted() && edits.len() < MAX_EDITS {
        let kind = c.byte() % 8;
        let edit = match kind {
            // A number of the recipe (twice as likely), or of the whole file.
            0..=2 => {
                let (from, to) = if kind == 2 { (0, text.len()) } else { recipe_range(&text) };
                let found = numbers(&text, from, to);
                match found.get(c.below(found.len())) {
                    Some(&(s, e)) => {
                        let line = text[..s].lines().count();
                        let was = text[s..e].to_string();
                        let value = replacement(&mut c, &was);
                        text.replace_range(s..e, &value);
                        format!("line {line}: number {was} -> {value}")
                    }
                    None => continue,
                }
            }
            // The number after a named argument or entry.
            3 | 4 => {
                let key = KEYS[c.byte() as usize % KEYS.len()];
                let (from, to) = recipe_range(&text);
                let at = [format!("{key}: "), format!("{key}("), format!(" {key} ")].iter().find_map(|pat| {
                    let hit = text[from..to].match_indices(pat.as_str()).find(|(i, _)| {
                        let before = text.as_bytes()[from + i - 1];
                        pat.starts_with(' ') || !(before.is_ascii_alphanumeric() || before == b'_')
                    })?;
                    let mut s = from + hit.0 + pat.len();
                    if pat.starts_with(' ') {
                        // `key   = N`: skip the alignment and the `=`.
                        let rest = &text[s..to];
                        s += rest.len() - rest.trim_start_matches([' ', '=']).len();
                    }
                    numbers(&text, s, to).first().copied().filter(|&(n, _)| n == s)
                });
                match at {
                    Some((s, e)) => {
                        let was = text[s..e].to_string();
                        let value = replacement(&mut c, &was);
                        text.replace_range(s..e, &value);
                        format!("{key}: {was} -> {value}")
                    }
                    None => format!("{key}: absent"),
                }
            }
            // One identifier for another of the same file.
            5 => {
                let ids = identifiers(&text);
                let mut names: Vec<&str> = ids.iter().map(|&(s, e)| &text[s..e]).collect();
                names.sort_unstable();
                names.dedup();
                let names: Vec<String> = names.into_iter().map(str::to_string).collect();
                let pick = c.below(ids.len());
                let with = c.below(names.len());
                match (ids.get(pick), names.get(with)) {
                    (Some(&(s, e)), Some(new)) => {
                        let line = text[..s].lines().count();
                        let was = text[s..e].to_string();
                        text.replace_range(s..e, new);
                        format!("line {line}: name {was} -> {new}")
                    }
                    _ => continue,
                }
            }
            // A whole recipe entry: set (replace or add), or removed when it already has
            // the chosen value.
            _ => {
                let (key, value) = ENTRIES[c.byte() as usize % ENTRIES.len()];
                match entry(&text, key) {
                    Some((s, e)) if text[s..e].trim() == value => {
                        let line_start = text[..s].rfind('\n').map_or(0, |n| n + 1);
                        text.replace_range(line_start..e + 1, "");
                        format!("removed `{key} = {value}`")
                    }
                    Some((s, e)) => {
                        text.replace_range(s..e, &format!(" {value}"));
                        format!("`{key} = {value}`")
                    }
                    None => {
                        let (_, end) = recipe_range(&text);
                        text.insert_str(end, &format!("  {key} = {value}\n"));
                        format!("added `{key} = {value}`")
                    }
                }
            }
        };
        edits.push(edit);
    }
    Case { example, source: text, edits }
}

/// How much work a case may ask of the reference interpreter before it is skipped.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Block copies (`repeat` and `stack` counted out) of the file's model at its defaults
    /// or of the recipe's: `check` elaborates every `repeat` copy into the Graph IR, about
    /// 13 KB and 35 us each in a release build, so `layers: 1_000_000` would take 13 GB.
    pub max_copies: u64,
    pub max_params: u64,
    /// One training step: 3 x the forward's FLOPs (forward and backward) x `accumulate`.
    pub max_step_flops: u64,
    /// One training step's bytes moved, counted the same way.
    pub max_step_bytes: u64,
}

impl Bounds {
    /// What the fuzzer allows: a few seconds per case in a release build with ASan.
    pub const FUZZ: Bounds =
        Bounds { max_copies: 20_000, max_params: 300_000, max_step_flops: 2_000_000_000, max_step_bytes: 8 << 30 };
}

/// `--memory-limit` for `run` and `train`.
pub const MEMORY_LIMIT: u64 = 512 << 20;

/// How far a case got; exit codes of the commands it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reached {
    /// `check` refused it (exit 1 or 2).
    Check(i32),
    /// Too much work for the interpreter (the reason).
    Skipped(String),
    /// `check` passed; `run` and `train` gave these codes.
    Train { run: i32, train: i32 },
}

impl Reached {
    /// How far, in words, for tallies: `check 1`, `skipped (too big)`, `train (run 0, train 1)`.
    pub fn label(&self) -> String {
        match self {
            Reached::Check(code) => format!("check {code}"),
            Reached::Skipped(_) => "skipped (too big)".to_string(),
            Reached::Train { run, train } => format!("train (run {run}, train {train})"),
        }
    }
}

/// A fresh scratch directory under the system's temporary directory.
fn scratch() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("modelc-run-tiny-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Block instances in the tree, each `repeat`/`stack` copy counted.
pub fn copies(instance: &modelc_compiler::elab::instance::Instance) -> u64 {
    use modelc_compiler::elab::instance::Member;
    let subs = instance.members.iter().map(|m| match m {
        Member::Sub(s) => s.multiplier().saturating_mul(copies(&s.instance)),
        _ => 0,
    });
    subs.fold(1, u64::saturating_add)
}

/// The most block copies `check` would elaborate: the file's model at its defaults, or the
/// recipe's model (instantiating is cheap: a `repeat` is built once and counted). `None`
/// when neither builds (then `check` stops before elaborating).
pub fn largest_tree(path: &Path, text: &str, recipe: &Target) -> Option<u64> {
    let file = SourceFile::new(path.display().to_string(), text.to_string());
    let mut program = modelc_compiler::load(file, path).ok()?;
    let targets = [Target::default(), recipe.clone()];
    targets.iter().filter_map(|t| modelc_compiler::instantiate(&mut program, t).ok()).map(|i| copies(&i)).max()
}

/// What one training step of a case asks of the interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    pub params: u64,
    /// 3 x the forward's FLOPs (from the Graph IR's op costs at the recipe's batch and
    /// sequence) x `accumulate`.
    pub step_flops: u64,
    /// The forward's bytes moved, counted the same way.
    pub step_bytes: u64,
}

/// The work of `target` in the file `path` holding `text`; `None` when the model does not
/// build (the commands then stop at the same error before running anything).
pub fn work(path: &Path, text: &str, target: &Target) -> Option<Work> {
    let file = SourceFile::new(path.display().to_string(), text.to_string());
    let mut program = modelc_compiler::load(file, path).ok()?;
    let instance = modelc_compiler::instantiate(&mut program, target).ok()?;
    let graph = modelc_compiler::elab::forward::elaborate(&program, &instance).ok()?;
    let w = modelc_compiler::workload(&program, target, None, None).ok()?;
    let (batch, seq) = (w.batch.max(1), w.seq.max(1));
    let bind = move |s: &str| Some(if s == "B" { batch } else { seq });
    let eval = |d: &modelc_compiler::graph::dim::Dim| {
        graph.eval_dim(d, &bind).map_or(u64::MAX, |v| u64::try_from(v).unwrap_or(0))
    };
    let (mut flops, mut bytes) = (0u64, 0u64);
    for n in &graph.nodes {
        let args: Vec<_> = n.args.iter().map(|a| graph.ty(*a)).collect();
        let cost = n.op.cost(&args, &n.ty);
        flops = flops.saturating_add(eval(&cost.flops));
        bytes = bytes.saturating_add(eval(&cost.bytes));
    }
    let per_step = 3u64.saturating_mul(w.recipe.accumulate.max(1));
    Some(Work {
        params: instance.param_count(),
        step_flops: flops.saturating_mul(per_step),
        step_bytes: bytes.saturating_mul(per_step),
    })
}

impl Bounds {
    /// Why `work` is too much, if it is.
    pub fn refuse(&self, work: &Work) -> Option<String> {
        if work.params > self.max_params {
            return Some(format!("{} parameters (at most {})", work.params, self.max_params));
        }
        if work.step_flops > self.max_step_flops {
            return Some(format!("{} FLOPs per step (at most {})", work.step_flops, self.max_step_flops));
        }
        if work.step_bytes > self.max_step_bytes {
            return Some(format!("{} bytes moved per step (at most {})", work.step_bytes, self.max_step_bytes));
        }
        None
    }
}

fn assert_code(what: &str, code: i32, case: &Case) {
    assert!(
        (0..=2).contains(&code),
        "`{what}` exited {code} on {} with edits {:?}:\n{}",
        case.example,
        case.edits,
        case.source
    );
}

/// `check`, then (if it passes and the work is within `bounds`) `run` and a 2-step
/// `train` into a fresh directory, on the big stack as the CLI runs its commands. Panics
/// (a failure) on an exit code other than 0, 1, 2; a panic inside a command propagates.
pub fn exercise(case: &Case, bounds: &Bounds) -> Reached {
    let dir = scratch();
    let reached = modelc_grammar::with_big_stack(|| exercise_in(case, bounds, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    reached
}

fn exercise_in(case: &Case, bounds: &Bounds, dir: &Path) -> Reached {
    let report = Reporter { format: MessageFormat::Human, color: false };
    let path = dir.join(format!("{}.model", case.example));
    std::fs::write(&path, &case.source).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let target = Target { recipe: Some("tiny".to_string()), ..Target::default() };
    if let Some(n) = largest_tree(&path, &case.source, &target).filter(|&n| n > bounds.max_copies) {
        return Reached::Skipped(format!("{n} block copies (at most {})", bounds.max_copies));
    }
    let checked = commands::check(&[&path], &report);
    assert_code("check", checked, case);
    if checked != 0 {
        return Reached::Check(checked);
    }
    if let Some(why) = work(&path, &case.source, &target).and_then(|w| bounds.refuse(&w)) {
        return Reached::Skipped(why);
    }
    let run_args = RunArgs {
        backend: "interp",
        seed: None,
        checkpoint: None,
        weights: None,
        tokenizer: None,
        texts: &[],
        json: false,
        memory_limit: Some(MEMORY_LIMIT),
    };
    let run = commands::run(&path, &target, &run_args, &report);
    assert_code("run", run, case);
    let out = dir.join("run");
    let train_args = TrainArgs {
        data: None,
        steps: Some(2),
        out: Some(&out),
        seed: None,
        checkpoint_every: None,
        resume: None,
        overwrite: false,
        detect_anomaly: false,
        memory_limit: Some(MEMORY_LIMIT),
        backend: "interp",
    };
    let trained = train(&path, &target, &train_args, &report);
    assert_code("train", trained, case);
    Reached::Train { run, train: trained }
}
