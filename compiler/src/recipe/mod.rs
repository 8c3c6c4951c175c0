//! A recipe's entries (AST) → a typed `Recipe`: the model's start, adapter, what trains,
//! the objective with its options, data, optimizer, schedule, precision and loss scaling,
//! recompute, accumulation, clipping, steps, eval, checkpoints and seed. Every later stage
//! reads the typed value; every bad entry is a located diagnostic (`modelc check` reports
//! it with a caret and a did-you-mean).

mod call;
mod entries;

use crate::adapters::{self, Adapter};
use crate::elab::eval::{Consts, Scope};
use crate::elab::value::Value;
use crate::error::{suggest, Error, FileId};
use crate::graph::types::DType;
use crate::modules::Program;
use crate::upcycle::{self, Upcycle};
use modelc_grammar::ast::{BinaryOp, ExprKind, ItemKind, Span};
use modelc_grammar::Diagnostic;
use modelc_runtime::batches::Batches;
use modelc_runtime::loss_scale::LossScale;
use modelc_runtime::optim::Kind;
use modelc_runtime::schedule::Phase;

/// The keys a recipe may set (docs/language.md §9).
pub const RECIPE_KEYS: &[&str] = &[
    "model",
    "init",
    "adapter",
    "trainable",
    "merge",
    "objective",
    "data",
    "optimizer",
    "schedule",
    "precision",
    "recompute",
    "accumulate",
    "clip",
    "steps",
    "eval",
    "checkpoint",
    "seed",
];

/// The training objective: the loss the compiler appends, and what the data pipeline makes
/// of the corpus for it (with the objective's options: masking rate, noise spans).
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    pub loss: crate::objective::Objective,
    pub batches: Batches,
}

impl Objective {
    pub const CAUSAL_LM: Objective =
        Objective { loss: crate::objective::Objective::CausalLm, batches: Batches::CausalLm };

    /// The objective's word (`causal_lm`, ...).
    pub fn name(&self) -> &'static str {
        match self.loss {
            crate::objective::Objective::CausalLm => "causal_lm",
            crate::objective::Objective::Mlm => "mlm",
            crate::objective::Objective::SpanCorruption => "span_corruption",
        }
    }
}

/// `data = text(SOURCE, tokenizer:, seq:, batch:)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Data {
    /// `builtin`, or a path.
    pub source: Option<String>,
    /// The tokenizer's word or call, as written (`bytes`, `sentencepiece("t.model")`).
    pub tokenizer: String,
    pub seq: i64,
    pub batch: i64,
    /// Where `seq:` and `batch:` are written (root file), for errors about their values
    /// that only the data or the memory can show.
    pub seq_at: Span,
    pub batch_at: Span,
}

/// The optimizer and its hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    pub kind: Kind,
    /// The peak learning rate (the schedule shapes it).
    pub lr: f64,
    pub weight_decay: f64,
    /// Parameters with one of these words as a part of their name get no weight decay.
    pub no_decay: Vec<String>,
}

impl Optimizer {
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Sgd { .. } => "sgd",
            Kind::Adam { .. } => "adam",
            Kind::AdamW { .. } => "adamw",
            Kind::Adafactor { .. } => "adafactor",
        }
    }
}

/// How mixed precision scales the loss.
#[derive(Clone, Debug, PartialEq)]
pub enum LossScaling {
    Dynamic { init: f64, growth_interval: u64 },
    Fixed(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Precision {
    F32,
    /// Contractions in `compute` (bf16 or f16), f32 master weights, loss scaling; more
    /// than `max_skipped` steps skipped in a row stop the run.
    Mixed {
        compute: DType,
        loss_scale: LossScaling,
        max_skipped: u64,
    },
}

impl Precision {
    /// The compute dtype of `mixed(..)`; `None` for f32.
    pub fn compute(&self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Mixed { compute, .. } => Some(*compute),
        }
    }

    /// The loss scale a run starts with.
    pub fn loss_scale(&self) -> Option<LossScale> {
        match self {
            Precision::F32 => None,
            Precision::Mixed { loss_scale: LossScaling::Dynamic { init, growth_interval }, .. } => {
                Some(LossScale::dynamic(*init, *growth_interval))
            }
            Precision::Mixed { loss_scale: LossScaling::Fixed(s), .. } => Some(LossScale::fixed(*s)),
        }
    }

    pub fn name(&self) -> &'static str {
        self.compute().map_or("f32", |d| d.name())
    }

    /// Skipped steps in a row that a loss-scaled run tolerates.
    pub fn max_skipped(&self) -> u64 {
        match self {
            Precision::F32 => entries::DEFAULT_MAX_SKIPPED,
            Precision::Mixed { max_skipped, .. } => *max_skipped,
        }
    }
}

/// A recipe, typed.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub name: String,
    /// `Model(...) from "PATH"`: the checkpoint the run starts from.
    pub base: Option<String>,
    pub upcycle: Option<Upcycle>,
    pub adapter: Option<Adapter>,
    /// Where the adapter is written, for the errors applying it reports.
    pub adapter_at: Option<Span>,
    /// Globs of the parameters that train (`trainable`, and the adapter's); `None`: all.
    pub trainable: Option<Vec<String>>,
    pub merge: bool,
    pub objective: Objective,
    pub data: Option<Data>,
    pub optimizer: Optimizer,
    pub schedule: Vec<Phase>,
    pub precision: Precision,
    pub recompute: Option<String>,
    /// Where `recompute` is written, for `instantiate`'s check that the model has it.
    pub recompute_at: Option<Span>,
    pub accumulate: u64,
    pub clip: Option<f64>,
    pub steps: Option<u64>,
    pub eval: Option<u64>,
    pub checkpoint: Option<u64>,
    pub seed: u64,
}

impl Recipe {
    /// What a recipe without entries means.
    pub fn default_named(name: &str) -> Recipe {
        Recipe {
            name: name.to_string(),
            base: None,
            upcycle: None,
            adapter: None,
            adapter_at: None,
            trainable: None,
            merge: false,
            objective: Objective::CAUSAL_LM,
            data: None,
            optimizer: entries::default_optimizer(),
            schedule: Vec::new(),
            precision: Precision::F32,
            recompute: None,
            recompute_at: None,
            accumulate: 1,
            clip: None,
            steps: None,
            eval: None,
            checkpoint: None,
            seed: 0,
        }
    }
}

/// The root file's recipe `name`, typed and validated: the first bad entry's error.
pub fn parse(program: &Program, name: &str) -> Result<Recipe, Error> {
    let mut errors = Vec::new();
    let recipe = parse_all(program, name, &mut errors);
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(recipe),
    }
}

/// Every bad entry of every recipe of the root file, in order (`modelc check` reports
/// them all, not only the first).
pub fn errors(program: &Program) -> Vec<Error> {
    let mut errors = Vec::new();
    for item in &program.modules[0].ast.items {
        if let ItemKind::Recipe(r) = &item.kind {
            parse_all(program, &r.name.name, &mut errors);
        }
    }
    errors
}

/// The recipe with every entry that parses; each bad entry's error goes to `errors`.
fn parse_all(program: &Program, name: &str, errors: &mut Vec<Error>) -> Recipe {
    let recipe = program.modules[0].ast.items.iter().find_map(|it| match &it.kind {
        ItemKind::Recipe(r) if r.name.name == name => Some(r),
        _ => None,
    });
    let mut out = Recipe::default_named(name);
    let Some(recipe) = recipe else { return out };
    let consts = Consts::default();
    let mut scope = Scope::new(program, &consts, 0);
    scope.recipe = true;
    let mut seen: Vec<(&str, Span)> = Vec::new();
    let mut lora_or_prompt: Vec<String> = Vec::new();
    let mut globs: Vec<String> = Vec::new();
    let before = errors.len();
    for entry in &recipe.entries {
        if let Err(e) = parse_entry(&scope, entry, &mut out, &mut seen, &mut lora_or_prompt, &mut globs, name) {
            errors.push(e);
        }
    }
    if !lora_or_prompt.is_empty() || !globs.is_empty() {
        let mut all = lora_or_prompt;
        all.extend(globs);
        out.trainable = Some(all);
    }
    if let (Some(base), Some(_), true) = (&out.base, &out.upcycle, errors.len() == before) {
        let span = recipe.entries.iter().find(|e| e.key.name == "init").map_or(recipe.name.span, |e| e.value.span);
        errors.push(call::error(
            span,
            format!("the recipe starts both `from \"{base}\"` and from `init = upcycle(...)`"),
            "second starting point",
            "`from` loads a checkpoint of the same model; `upcycle` builds an MoE from a dense one: keep one",
        ));
    }
    out
}

/// One entry into `out`.
fn parse_entry<'a>(
    scope: &Scope,
    entry: &'a modelc_grammar::ast::Entry,
    out: &mut Recipe,
    seen: &mut Vec<(&'a str, Span)>,
    lora_or_prompt: &mut Vec<String>,
    globs: &mut Vec<String>,
    name: &str,
) -> Result<(), Error> {
    let key = entry.key.name.as_str();
    if !RECIPE_KEYS.contains(&key) {
        let mut d =
            Diagnostic::error(format!("unknown recipe entry `{key}`"), entry.key.span).with_label("not a recipe key");
        d = match suggest(key, RECIPE_KEYS.iter().copied()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help(format!("the keys are {}", RECIPE_KEYS.join(", "))),
        };
        return Err(Error::new(FileId(0), d));
    }
    if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
        let d = Diagnostic::error(format!("`{key}` is set twice in recipe `{name}`"), entry.key.span)
            .with_label("second value")
            .with_secondary(*first, "first set here")
            .with_help("keep one");
        return Err(Error::new(FileId(0), d));
    }
    seen.push((key, entry.key.span));
    let value = &entry.value;
    match key {
        "model" => {
            // `Model(...) from "PATH"`: the model itself is built by `instantiate`.
            if let ExprKind::Binary { op: BinaryOp::From, rhs, .. } = &value.kind {
                match scope.eval(rhs)? {
                    Value::Str(path) => out.base = Some(path),
                    other => {
                        return Err(call::error(
                            rhs.span,
                            format!("`from` takes a checkpoint path in quotes, found {}", other.kind()),
                            "not a path",
                            "write `model = Llama(...) from \"runs/llama-tiny/final.safetensors\"`",
                        ))
                    }
                }
            }
        }
        "init" => out.upcycle = Some(upcycle::parse(&scope.eval(value)?, FileId(0), value.span)?),
        "adapter" => {
            let adapter = adapters::parse(&scope.eval(value)?, FileId(0), value.span)?;
            lora_or_prompt.extend(adapter.trainable().iter().map(|g| g.to_string()));
            out.adapter = Some(adapter);
            out.adapter_at = Some(value.span);
        }
        "trainable" => *globs = entries::trainable(scope, value)?,
        "merge" => out.merge = entries::boolean(scope, value, "merge")?,
        "objective" => out.objective = entries::objective(scope, value)?,
        "data" => out.data = Some(entries::data(scope, value)?),
        "optimizer" => out.optimizer = entries::optimizer(scope, value)?,
        "schedule" => out.schedule = entries::schedule(scope, value)?,
        "precision" => out.precision = entries::precision(scope, value)?,
        "recompute" => {
            out.recompute = Some(entries::word(scope, value, "recompute", "blocks")?);
            out.recompute_at = Some(value.span);
        }
        "accumulate" => out.accumulate = entries::count(scope, value, "accumulate", 1)?,
        "clip" => out.clip = Some(entries::positive(scope, value, "clip")?),
        "steps" => out.steps = Some(entries::count(scope, value, "steps", 1)?),
        "eval" => out.eval = Some(entries::every(scope, value, "eval")?),
        "checkpoint" => out.checkpoint = Some(entries::every(scope, value, "checkpoint")?),
        "seed" => out.seed = entries::count(scope, value, "seed", 0)?,
        _ => unreachable!("RECIPE_KEYS lists {key}"),
    }
    Ok(())
}
