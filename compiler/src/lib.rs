//! Resolution, elaboration, shape checking and the Graph IR: AST → checked program.
//!
//! Stages, in order: `modules` (load and resolve files, imports and the embedded
//! `stdlib`) → `elab` (compile-time evaluation; blocks → instance tree) → `inspect`
//! (parameter counts). The Graph IR (`forward` → one `enum Op`) comes next.
//! Architecture invariant: `compiler` depends on `grammar` for the AST and diagnostics
//! only; nothing in `grammar` knows about this crate.

pub mod adapters;
pub mod autodiff;
pub mod backend;
pub mod elab;
pub mod error;
pub mod glob;
pub mod graph;
pub mod inspect;
pub mod interp;
pub mod kernel;
pub mod library;
pub mod memory;
pub mod modules;
pub mod objective;
pub mod passes;
pub mod recipe;
pub mod stdlib;
pub mod training;
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
    let recipe = target.recipe.as_deref().map(|r| recipe::parse(program, r)).transpose()?;
    let (adapter, recompute) = match recipe {
        Some(r) => (r.adapter.zip(r.adapter_at), r.recompute.zip(r.recompute_at)),
        None => (None, None),
    };
    let instance = match adapter {
        Some((adapter, span)) => adapters::apply(program, instance, &adapter, (root, span))?,
        None => instance,
    };
    if let Some((name, span)) = recompute {
        recompute_names_a_sub_block(&instance, &name, (root, span))?;
    }
    Ok(instance)
}

/// `recompute = NAME` makes each copy of every sub-block called `NAME`, at any depth, one
/// recomputed segment (`autodiff::recompute_segment`): the model must have one, or the
/// recipe is wrong (located here, for `check` and every command, not at autodiff).
fn recompute_names_a_sub_block(instance: &Instance, name: &str, at: (FileId, Span)) -> Result<(), Error> {
    fn names<'a>(instance: &'a Instance, out: &mut Vec<&'a str>) {
        for m in &instance.members {
            if let elab::instance::Member::Sub(s) = m {
                out.push(&s.name);
                names(&s.instance, out);
            }
        }
    }
    let mut found = Vec::new();
    names(instance, &mut found);
    if found.contains(&name) {
        return Ok(());
    }
    found.sort_unstable();
    found.dedup();
    let d = Diagnostic::error(format!("`recompute = {name}` names no sub-block of `{}`", instance.block_name), at.1)
        .with_label("not a sub-block of the model");
    let d = match suggest(name, found.iter().copied()) {
        Some(s) => d.with_help(format!("did you mean `{s}`?")),
        None if found.is_empty() => d.with_help("the model has no sub-blocks: remove `recompute`"),
        None => d.with_help(format!("its sub-blocks: {}", found.join(", "))),
    };
    Err(Error::new(at.0, d))
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
    // Each value is parsed alone (as a recipe entry, whose wrapper never shows in an
    // error), then all of them together for their spans.
    const OPEN: &str = "recipe set {\n";
    for (k, v) in sets {
        let line = format!("{k} = {v}\n");
        if let Err(d) = modelc_grammar::parse(&SourceFile::new("--set", format!("{OPEN}{line}}}\n"))) {
            let bare = program.add_file(SourceFile::new("--set", line.clone()));
            let at = d.span.start.saturating_sub(OPEN.len()).min(line.len() - 1);
            let d = Diagnostic::error(
                format!("`--set {k}={v}`: the value does not parse"),
                Span { start: at, end: at },
            )
            .with_label(if d.span.start >= OPEN.len() + line.len() {
                "the value ends too soon"
            } else {
                "unexpected here"
            })
            .with_help(
                "a value is one expression of the language: `--set d=512`, `--set act=gelu`, `--set bias=false`",
            );
            return Err(Error::new(bare, d));
        }
    }
    let body: String = sets.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let file = program.add_file(SourceFile::new("--set", format!("{OPEN}{body}}}\n")));
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
/// recipe's `data = text(..., seq:, batch:)`, else one sequence of 1024 tokens; and the
/// typed recipe (defaults without one).
#[derive(Clone, Debug)]
pub struct Workload {
    pub batch: i64,
    pub seq: i64,
    /// Where the numbers came from.
    pub from: String,
    pub recipe: recipe::Recipe,
}

pub use recipe::RECIPE_KEYS;

/// `inspect --json`'s `workload`: the numbers and the recipe's headline choices.
impl serde::Serialize for Workload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let r = &self.recipe;
        let mut out = s.serialize_struct("Workload", 12)?;
        out.serialize_field("batch", &self.batch)?;
        out.serialize_field("seq", &self.seq)?;
        out.serialize_field("from", &self.from)?;
        out.serialize_field("optimizer", r.optimizer.name())?;
        let momentum = matches!(r.optimizer.kind, modelc_runtime::optim::Kind::Sgd { momentum, .. } if momentum > 0.0);
        out.serialize_field("momentum", &momentum)?;
        out.serialize_field("precision", r.precision.name())?;
        out.serialize_field("seed", &r.seed)?;
        out.serialize_field("objective", &(!r.name.is_empty()).then(|| r.objective.name()))?;
        out.serialize_field("base", &r.base)?;
        out.serialize_field("upcycle", &r.upcycle)?;
        out.serialize_field("recompute", &r.recompute)?;
        out.serialize_field("trainable", &r.trainable)?;
        out.end()
    }
}

/// The workload of `target`: its recipe typed and validated (every entry), with
/// `--batch`/`--seq` applied.
pub fn workload(program: &Program, target: &Target, batch: Option<i64>, seq: Option<i64>) -> Result<Workload, Error> {
    let recipe = match &target.recipe {
        Some(name) => recipe::parse(program, name)?,
        None => recipe::Recipe::default_named(""),
    };
    let mut w = Workload { batch: 1, seq: 1024, from: "default (batch 1, seq 1024)".into(), recipe };
    if let Some(data) = &w.recipe.data {
        (w.batch, w.seq, w.from) = (data.batch, data.seq, format!("recipe `{}`", w.recipe.name));
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
        self.recipe.trainable.as_ref().is_none_or(|globs| globs.iter().any(|g| glob::matches(g, name)))
    }

    /// The compute dtype of `precision = mixed(compute: ..)`; `None` for plain f32.
    pub fn mixed_compute(&self) -> Option<graph::types::DType> {
        self.recipe.precision.compute()
    }

    /// The recipe's LoRA adapter, if any.
    pub fn lora(&self) -> Option<&adapters::Lora> {
        match &self.recipe.adapter {
            Some(adapters::Adapter::Lora(l)) => Some(l),
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
    let graph = if to == Lowering::Outputs { graph } else { objective::apply(graph, w.recipe.objective.loss)? };
    let mixed = w.mixed_compute();
    let graph = match mixed {
        Some(dtype) => passes::precision::mixed(&graph, dtype)?,
        None => graph,
    };
    match (to, mixed) {
        (Lowering::Training, mixed) => {
            let seed = mixed.map(|_| autodiff::LOSS_SCALE);
            autodiff::differentiate_params(graph, seed, &|name| w.is_trainable(name), w.recipe.recompute.as_deref())
        }
        _ => Ok(graph),
    }
}
