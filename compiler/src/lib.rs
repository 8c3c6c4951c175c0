//! Resolution, elaboration, shape checking and the Graph IR: AST → checked program.
//!
//! Stages, in order: `modules` (load and resolve files, imports and the embedded
//! `stdlib`) → `elab` (compile-time evaluation; blocks → instance tree) → `inspect`
//! (parameter counts). The Graph IR (`forward` → one `enum Op`) comes next.
//! Architecture invariant: `compiler` depends on `grammar` for the AST and diagnostics
//! only; nothing in `grammar` knows about this crate.

pub mod adapters;
pub mod autodiff;
pub mod elab;
pub mod error;
pub mod glob;
pub mod graph;
pub mod inspect;
pub mod interp;
pub mod memory;
pub mod modules;
pub mod objective;
pub mod passes;
pub mod stdlib;
pub mod upcycle;

pub use error::{Error, FileId};
pub use modules::{load, Program};

use elab::eval::{Consts, Scope};
use elab::instance::{ArgValue, Instance, Instantiator};
use elab::value::Value;
use error::suggest;
use modelc_grammar::ast::{BlockKind, ExprKind, ItemKind, Span};
use modelc_grammar::{Diagnostic, SourceFile};
use modules::ItemRef;

/// Which model to build from the root file, and how.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// `--model NAME`: a model of the file (default: its only one).
    pub model: Option<String>,
    /// `--recipe NAME`: the recipe whose `model = ...` gives the model and its arguments.
    pub recipe: Option<String>,
    /// `--set name=value` overrides of the model's arguments, as source text.
    pub sets: Vec<(String, String)>,
}

/// Builds the instance tree of the target model.
pub fn instantiate(program: &mut Program, target: &Target) -> Result<Instance, Error> {
    let root = FileId(0);
    let (block, mut args, site) = match &target.recipe {
        Some(name) => recipe_model(program, name)?,
        None => (choose_model(program, target.model.as_deref())?, Vec::new(), (root, Span::new(0, 0))),
    };
    if !target.sets.is_empty() {
        let overrides = parse_sets(program, block, &target.sets)?;
        args.retain(|a| !overrides.iter().any(|o| o.name.as_ref().map(|n| &n.0) == a.name.as_ref().map(|n| &n.0)));
        args.extend(overrides);
    }
    let consts = Consts::default();
    let instance = Instantiator::new(program, &consts).instantiate(block, &args, site)?;
    // A recipe's `adapter` (LoRA, P-tuning) rewrites the tree before anything sees it.
    let adapter = target.recipe.as_deref().and_then(|r| recipe_entry(program, r, "adapter"));
    match adapter {
        Some(entry) => {
            let mut scope = Scope::new(program, &consts, 0);
            scope.recipe = true;
            let value = scope.eval(&entry.value)?;
            drop(scope);
            let adapter = adapters::parse(&value, root, entry.value.span)?;
            adapters::apply(program, instance, &adapter, (root, entry.value.span))
        }
        None => Ok(instance),
    }
}

/// The entry `key` of the root file's recipe `recipe`.
fn recipe_entry(program: &Program, recipe: &str, key: &str) -> Option<modelc_grammar::ast::Entry> {
    program.modules[0].ast.items.iter().find_map(|it| match &it.kind {
        ItemKind::Recipe(r) if r.name.name == recipe => r.entries.iter().find(|e| e.key.name == key).cloned(),
        _ => None,
    })
}

/// Everything `modelc check` verifies: every model of the root file that can be built
/// from its defaults, and every recipe's model, instantiate and elaborate into the Graph
/// IR with all shapes checked.
pub fn check(program: &mut Program) -> Result<(), Error> {
    let own: Vec<(ItemRef, bool)> = program.modules[0]
        .ast
        .items
        .iter()
        .enumerate()
        .filter_map(|(i, it)| match &it.kind {
            ItemKind::Block(b) if b.kind == BlockKind::Model => {
                Some((ItemRef { module: 0, index: i }, b.params.iter().all(|p| p.default.is_some())))
            }
            _ => None,
        })
        .collect();
    let consts = Consts::default();
    // Every constant of the file evaluates, used or not.
    let scope = Scope::new(program, &consts, 0);
    for item in &program.modules[0].ast.items {
        if let ItemKind::Const(c) = &item.kind {
            scope.eval(&modelc_grammar::ast::Expr { kind: ExprKind::Name(c.name.clone()), span: c.name.span })?;
        }
    }
    drop(scope);
    for (model, all_defaults) in own {
        if all_defaults {
            let instance = Instantiator::new(program, &consts).instantiate(model, &[], (FileId(0), Span::new(0, 0)))?;
            elab::forward::elaborate(program, &instance)?;
        }
    }
    let recipes: Vec<String> = program.modules[0]
        .ast
        .items
        .iter()
        .filter_map(|it| match &it.kind {
            ItemKind::Recipe(r) => Some(r.name.name.clone()),
            _ => None,
        })
        .collect();
    for r in recipes {
        let instance = instantiate(program, &Target { recipe: Some(r.clone()), ..Target::default() })?;
        elab::forward::elaborate(program, &instance)?;
        // Every entry evaluates (unknown enum variants, bad arithmetic and the like) and the
        // entries the compiler reads (`init`, `adapter`, `trainable`) are well formed.
        let target = Target { recipe: Some(r), ..Target::default() };
        workload(program, &target, None, None)?;
    }
    Ok(())
}

fn models_in(program: &Program, module: usize, own: bool) -> Vec<(String, ItemRef)> {
    let mut found: Vec<(String, ItemRef)> = program.modules[module]
        .names
        .iter()
        .filter(|(_, r)| (r.module == module) == own)
        .filter(|(_, r)| matches!(&program.item(**r).kind, ItemKind::Block(b) if b.kind == BlockKind::Model))
        .map(|(n, r)| (n.clone(), *r))
        .collect();
    found.sort_by_key(|(_, r)| (r.module, r.index));
    found
}

fn choose_model(program: &Program, name: Option<&str>) -> Result<ItemRef, Error> {
    let root = FileId(0);
    let end = program.source(root).text.len();
    if let Some(name) = name {
        return match program.modules[0].names.get(name) {
            Some(&r) if matches!(program.item(r).kind, ItemKind::Block(_)) => Ok(r),
            _ => {
                let models: Vec<String> =
                    models_in(program, 0, true).into_iter().chain(models_in(program, 0, false)).map(|m| m.0).collect();
                let mut d = Diagnostic::error(format!("no model `{name}` in this file"), Span::new(end, end))
                    .with_label("--model");
                d = d.with_help(match suggest(name, models.iter().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("its models: {}", models.join(", ")),
                });
                Err(Error::new(root, d))
            }
        };
    }
    let own = models_in(program, 0, true);
    let candidates = if own.is_empty() { models_in(program, 0, false) } else { own };
    match candidates.as_slice() {
        [(_, r)] => Ok(*r),
        [] => Err(Error::new(
            root,
            Diagnostic::error("this file declares no model", Span::new(end, end))
                .with_label("expected a `model` item")
                .with_help("a `model Name(...) { ... }` is what `inspect`, `run` and `train` build"),
        )),
        many => Err(Error::new(
            root,
            Diagnostic::error("this file declares several models", Span::new(end, end))
                .with_label("which one?")
                .with_help(format!(
                    "choose with --model: {}",
                    many.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(", ")
                )),
        )),
    }
}

/// A model to instantiate: the block, its arguments, and the call site for messages.
type ModelCall = (ItemRef, Vec<ArgValue>, (FileId, Span));

/// The model of a recipe's `model = ...` entry and its arguments.
fn recipe_model(program: &Program, name: &str) -> Result<ModelCall, Error> {
    let root = FileId(0);
    let recipes: Vec<&modelc_grammar::ast::Recipe> = program.modules[0]
        .ast
        .items
        .iter()
        .filter_map(|it| match &it.kind {
            ItemKind::Recipe(r) => Some(r),
            _ => None,
        })
        .collect();
    let end = program.source(root).text.len();
    let Some(recipe) = recipes.iter().find(|r| r.name.name == name) else {
        let names: Vec<&str> = recipes.iter().map(|r| r.name.name.as_str()).collect();
        let mut d =
            Diagnostic::error(format!("no recipe `{name}` in this file"), Span::new(end, end)).with_label("--recipe");
        d = d.with_help(match suggest(name, names.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if names.is_empty() => "this file has no recipes".to_string(),
            None => format!("its recipes: {}", names.join(", ")),
        });
        return Err(Error::new(root, d));
    };
    let Some(entry) = recipe.entries.iter().find(|e| e.key.name == "model") else {
        return Err(Error::new(
            root,
            Diagnostic::error(format!("recipe `{name}` has no `model` entry"), recipe.name.span)
                .with_label("which model does it train?")
                .with_help("add `model = Name(...)`"),
        ));
    };
    let consts = Consts::default();
    let mut scope = Scope::new(program, &consts, 0);
    scope.recipe = true;
    // `Model(...) from "checkpoint"`: the checkpoint does not change what the model is.
    let mut value_expr = &entry.value;
    while let ExprKind::Binary { op: modelc_grammar::ast::BinaryOp::From, lhs, .. } = &value_expr.kind {
        value_expr = lhs;
    }
    let span = value_expr.span;
    let (block, args) = match scope.eval(value_expr)? {
        Value::Instance { block, args } => (block, args),
        Value::Block(block) => (block, Vec::new()),
        other => {
            return Err(Error::new(
                root,
                Diagnostic::error(format!("`model` must name a model, found {}", other.kind()), span)
                    .with_label("not a model")
                    .with_help("write `model = Name(arg: value, ...)`"),
            ))
        }
    };
    let arg_spans: Vec<Span> = match &value_expr.kind {
        ExprKind::Call { args, .. } => args.iter().map(|a| a.span).collect(),
        _ => Vec::new(),
    };
    let args = args
        .into_iter()
        .enumerate()
        .map(|(i, (name, value))| {
            let span = arg_spans.get(i).copied().unwrap_or(span);
            ArgValue { name: name.map(|n| (n, span)), value, span, file: root }
        })
        .collect();
    Ok((block, args, (root, span)))
}

/// `--set name=value` → arguments, each value parsed as an expression of the language
/// and evaluated in the root file's scope. Errors point into a virtual file `--set`.
fn parse_sets(program: &mut Program, block: ItemRef, sets: &[(String, String)]) -> Result<Vec<ArgValue>, Error> {
    let text: String = sets.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let text = format!("recipe set {{\n{text}}}\n");
    let file = program.add_file(SourceFile::new("--set", text));
    let parsed = modelc_grammar::parse(program.source(file)).map_err(|d| Error::new(file, d))?;
    let entries = match parsed.ast.items.first().map(|i| &i.kind) {
        Some(ItemKind::Recipe(r)) => r.entries.clone(),
        _ => Vec::new(),
    };
    let ItemKind::Block(def) = &program.item(block).kind else {
        return Ok(Vec::new());
    };
    let params: Vec<String> = def.params.iter().map(|p| p.name.name.clone()).collect();
    let consts = Consts::default();
    let scope = Scope::new(program, &consts, 0);
    let mut out = Vec::new();
    for e in entries {
        if !params.contains(&e.key.name) {
            let mut d = Diagnostic::error(format!("`{}` has no parameter `{}`", def.name.name, e.key.name), e.key.span)
                .with_label("--set");
            d = d.with_help(match suggest(&e.key.name, params.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("its parameters are {}", params.join(", ")),
            });
            return Err(Error::new(file, d));
        }
        let value = scope.eval(&e.value).map_err(|err| Error::new(file, *err.diag))?;
        out.push(ArgValue { name: Some((e.key.name.clone(), e.key.span)), value, span: e.value.span, file });
    }
    Ok(out)
}

/// What a step processes, for FLOPs and memory: from `--batch`/`--seq`, else the
/// recipe's `data = text(..., seq:, batch:)`, else one sequence of 1024 tokens.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Workload {
    pub batch: i64,
    pub seq: i64,
    /// Where the numbers came from.
    pub from: String,
    /// The recipe's optimizer (`adamw`, `sgd`, ...), `adamw` by default.
    pub optimizer: String,
    /// `sgd` keeps a momentum buffer only with `momentum:` above 0.
    pub momentum: bool,
    /// `f32`, or the compute dtype of `mixed(compute: ..)`.
    pub precision: String,
    /// The recipe's `seed` (0 without one).
    pub seed: u64,
    /// The recipe's `objective` word (`causal_lm`, `mlm`, ...), if it has one.
    pub objective: Option<String>,
    /// `Model(...) from "PATH"`: the checkpoint the recipe starts from (relative to the
    /// working directory, like `runs/`).
    pub base: Option<String>,
    /// `init = upcycle(PATH, noise:)`: an MoE model's parameters from a dense checkpoint.
    pub upcycle: Option<upcycle::Upcycle>,
    /// `recompute = NAME`: the sub-block whose activations the backward recomputes.
    pub recompute: Option<String>,
    /// The recipe's LoRA adapter, if any.
    #[serde(skip)]
    pub lora: Option<adapters::Lora>,
    /// Globs of the parameters that train (`trainable = [...]`, and a LoRA's `lora_a`,
    /// `lora_b`); `None` trains every parameter.
    pub trainable: Option<Vec<String>>,
    /// Every entry of the recipe, evaluated, for the runtime to read (`optimizer`,
    /// `schedule`, `clip`, `accumulate`, `steps`, ...).
    #[serde(skip)]
    pub entries: Vec<(String, Value)>,
}

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

pub fn workload(program: &Program, target: &Target, batch: Option<i64>, seq: Option<i64>) -> Result<Workload, Error> {
    let mut w = Workload {
        batch: 1,
        seq: 1024,
        from: "default (batch 1, seq 1024)".into(),
        optimizer: "adamw".into(),
        momentum: false,
        precision: "f32".into(),
        seed: 0,
        objective: None,
        base: None,
        recompute: None,
        upcycle: None,
        lora: None,
        trainable: None,
        entries: Vec::new(),
    };
    if let Some(name) = &target.recipe {
        let recipe = program.modules[0].ast.items.iter().find_map(|it| match &it.kind {
            ItemKind::Recipe(r) if &r.name.name == name => Some(r),
            _ => None,
        });
        let consts = Consts::default();
        let mut scope = Scope::new(program, &consts, 0);
        scope.recipe = true;
        let arg = |args: &[(Option<String>, Value)], key: &str| {
            args.iter().find(|(k, _)| k.as_deref() == Some(key)).map(|(_, v)| v.clone())
        };
        for entry in recipe.map(|r| r.entries.as_slice()).unwrap_or_default() {
            if !RECIPE_KEYS.contains(&entry.key.name.as_str()) {
                let mut d = Diagnostic::error(format!("unknown recipe entry `{}`", entry.key.name), entry.key.span)
                    .with_label("not a recipe key");
                d = match suggest(&entry.key.name, RECIPE_KEYS.iter().copied()) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("the keys are {}", RECIPE_KEYS.join(", "))),
                };
                return Err(Error::new(FileId(0), d));
            }
            let value = scope.eval(&entry.value)?;
            w.entries.push((entry.key.name.clone(), value.clone()));
            match (entry.key.name.as_str(), value) {
                ("data", Value::Call { args, .. }) => {
                    if let (Some(Value::Int(b)), Some(Value::Int(s))) = (arg(&args, "batch"), arg(&args, "seq")) {
                        (w.batch, w.seq, w.from) = (b, s, format!("recipe `{name}`"));
                    }
                }
                ("optimizer", Value::Call { name, args }) => {
                    w.momentum = matches!(arg(&args, "momentum"), Some(Value::Float(m)) if m > 0.0)
                        || matches!(arg(&args, "momentum"), Some(Value::Int(m)) if m > 0);
                    w.optimizer = name;
                }
                ("optimizer", Value::Symbol(name)) => w.optimizer = name,
                ("precision", Value::Call { name, args }) if name == "mixed" => {
                    w.precision = arg(&args, "compute").map_or("bf16".into(), |v| v.to_string());
                }
                ("precision", Value::Symbol(p)) => w.precision = p,
                ("seed", Value::Int(s)) => w.seed = s as u64,
                ("objective", Value::Symbol(o) | Value::Call { name: o, .. }) => w.objective = Some(o),
                ("model", Value::Call { name, args }) if name == "from" => {
                    if let Some((_, Value::Str(path))) = args.get(1) {
                        w.base = Some(path.clone());
                    }
                }
                ("recompute", Value::Symbol(name)) => w.recompute = Some(name),
                ("init", value) => w.upcycle = Some(upcycle::parse(&value, FileId(0), entry.value.span)?),
                ("adapter", value) => {
                    let adapter = adapters::parse(&value, FileId(0), entry.value.span)?;
                    let globs = w.trainable.get_or_insert_with(Vec::new);
                    globs.extend(adapter.trainable().iter().map(|g| g.to_string()));
                    if let adapters::Adapter::Lora(lora) = adapter {
                        w.lora = Some(lora);
                    }
                }
                ("trainable", Value::List(items)) => {
                    let globs = w.trainable.get_or_insert_with(Vec::new);
                    for item in items {
                        match item {
                            Value::Str(g) => globs.push(g),
                            other => {
                                return Err(Error::new(
                                    FileId(0),
                                    Diagnostic::error(
                                        format!("`trainable` lists parameter globs, found {}", other.kind()),
                                        entry.value.span,
                                    )
                                    .with_label("here")
                                    .with_help("write `trainable = [\"prompt.*\"]`"),
                                ))
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if let (Some(base), Some(_), Some(r)) = (&w.base, &w.upcycle, recipe) {
            let span = r.entries.iter().find(|e| e.key.name == "init").map_or(r.name.span, |e| e.value.span);
            return Err(Error::new(
                FileId(0),
                Diagnostic::error(
                    format!("the recipe starts both `from \"{base}\"` and from `init = upcycle(...)`"),
                    span,
                )
                .with_label("second starting point")
                .with_help(
                    "`from` loads a checkpoint of the same model; `upcycle` builds an MoE from a dense one: keep one",
                ),
            ));
        }
    }
    if let Some(b) = batch {
        w.batch = b;
        w.from = "--batch/--seq".into();
    }
    if let Some(s) = seq {
        w.seq = s;
        w.from = "--batch/--seq".into();
    }
    Ok(w)
}

/// What the interpreter (and later the backends) run, after elaboration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lowering {
    /// The model's outputs (with the recipe's precision).
    Outputs,
    /// The objective's scalar loss.
    Loss,
    /// The loss and every parameter's gradient.
    Training,
}

impl Workload {
    /// Whether the recipe trains parameter `name` (every one, unless it says otherwise).
    pub fn is_trainable(&self, name: &str) -> bool {
        self.trainable.as_ref().is_none_or(|globs| globs.iter().any(|g| glob::matches(g, name)))
    }

    /// The compute dtype of `precision = mixed(compute: ..)`; `None` for plain f32.
    pub fn mixed_compute(&self) -> Option<graph::types::DType> {
        match self.precision.as_str() {
            "bf16" => Some(graph::types::DType::BF16),
            "f16" => Some(graph::types::DType::F16),
            _ => None,
        }
    }
}

/// The stages after elaboration, in order: the objective's loss, the precision pass, the
/// backward pass (seeded by the `loss_scale` input under mixed precision), then the
/// optimisation pipeline (`passes::PASSES`), which changes no result.
pub fn lower(graph: graph::Graph, w: &Workload, to: Lowering) -> Result<graph::Graph, String> {
    passes::pipeline(lower_unoptimized(graph, w, to)?)
}

/// `lower` without the optimisation pipeline: what `emit --after PASS` starts from, and
/// the reference the passes are tested against.
pub fn lower_unoptimized(graph: graph::Graph, w: &Workload, to: Lowering) -> Result<graph::Graph, String> {
    let graph = if to == Lowering::Outputs {
        graph
    } else {
        let objective = w.objective.as_deref().unwrap_or("causal_lm");
        objective::apply(graph, objective::Objective::parse(objective)?)?
    };
    let mixed = w.mixed_compute();
    let graph = match mixed {
        Some(dtype) => passes::precision::mixed(&graph, dtype)?,
        None => graph,
    };
    match (to, mixed) {
        (Lowering::Training, mixed) => {
            let seed = mixed.map(|_| autodiff::LOSS_SCALE);
            autodiff::differentiate_params(graph, seed, &|name| w.is_trainable(name), w.recompute.as_deref())
        }
        _ => Ok(graph),
    }
}
