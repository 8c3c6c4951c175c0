//! Recipe adapters: what a recipe's `adapter = lora(...)` or `adapter = ptuning(...)` does
//! to the instance tree, and which parameters a recipe trains (`adapter`, `trainable`).
//! This stage sits between instantiation and elaboration: it rewrites the tree, so the
//! Graph IR, `inspect` and the checkpoint names all see the adapted model. LoRA is a pure
//! rewrite; P-tuning adds a `prompt` member and marks where the elaborator puts its output
//! (`PromptSite`), the one thing downstream that knows about an adapter.

use crate::elab::eval::Consts;
use crate::elab::instance::{ArgValue, Instance, Instantiator, Member};
use crate::elab::value::Value;
use crate::error::{Error, FileId};
use crate::modules::{self, Program};
use modelc_grammar::ast::{CopiesKind, Span};
use modelc_grammar::Diagnostic;

/// `lora(rank:, alpha:, drop:, targets: [globs])`: every `std.nn.Linear` whose path matches
/// a target becomes a `std.adapters.LoRA` with the same `weight` and `bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    pub rank: i64,
    pub alpha: f64,
    pub drop: f64,
    pub targets: Vec<String>,
}

impl Lora {
    /// The factor `alpha / rank` of the low-rank update.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// The LoRA parameters: the only ones a LoRA recipe trains.
pub const LORA_PARAMS: &[&str] = &["*.lora_a", "*.lora_b"];

/// `ptuning(tokens:, encoder: mlp|lstm|direct, at:)` (Liu et al., 2021): `tokens` virtual
/// token embeddings from a `std.adapters.PromptEncoder`, placed in front of the output of
/// the root's `Embedding` member `at` (the only one, by default).
#[derive(Clone, Debug, PartialEq)]
pub struct PTuning {
    pub tokens: i64,
    /// The `Reparam` variant: `mlp`, `lstm` or `direct`.
    pub encoder: String,
    pub at: Option<String>,
}

/// The P-tuning parameters: the only ones a P-tuning recipe trains.
pub const PTUNING_PARAMS: &[&str] = &["prompt.*"];

/// A recipe's `adapter`.
#[derive(Clone, Debug, PartialEq)]
pub enum Adapter {
    Lora(Lora),
    PTuning(PTuning),
}

impl Adapter {
    /// The globs of the parameters the adapter trains; the rest of the model is frozen.
    pub fn trainable(&self) -> &'static [&'static str] {
        match self {
            Adapter::Lora(_) => LORA_PARAMS,
            Adapter::PTuning(_) => PTUNING_PARAMS,
        }
    }
}

/// The recipe's `adapter` entry, evaluated; `span` is the entry's value, for messages.
pub fn parse(value: &Value, file: FileId, span: Span) -> Result<Adapter, Error> {
    match value {
        Value::Call { name, args } if name == "ptuning" => parse_ptuning(args, file, span).map(Adapter::PTuning),
        _ => parse_lora(value, file, span).map(Adapter::Lora),
    }
}

/// Applies the recipe's adapter to the instance tree.
pub fn apply(
    program: &mut Program,
    instance: Instance,
    adapter: &Adapter,
    site: (FileId, Span),
) -> Result<Instance, Error> {
    match adapter {
        Adapter::Lora(lora) => apply_lora(program, instance, lora, site),
        Adapter::PTuning(p) => apply_ptuning(program, instance, p, site),
    }
}

fn parse_ptuning(args: &[(Option<String>, Value)], file: FileId, span: Span) -> Result<PTuning, Error> {
    let bad =
        |msg: String, help: &str| Error::new(file, Diagnostic::error(msg, span).with_label("here").with_help(help));
    let mut p = PTuning { tokens: 0, encoder: "lstm".into(), at: None };
    for (key, v) in args {
        match (key.as_deref(), v) {
            (Some("tokens"), Value::Int(n)) if *n > 0 => p.tokens = *n,
            (Some("encoder"), Value::Symbol(e) | Value::Variant { variant: e, .. })
                if ["mlp", "lstm", "direct"].contains(&e.as_str()) =>
            {
                p.encoder = e.clone()
            }
            (Some("at"), Value::Str(m)) => p.at = Some(m.clone()),
            (Some(k @ ("tokens" | "encoder" | "at")), v) => return Err(bad(
                format!("bad `{k}` for `ptuning`: `{v}`"),
                "`tokens` is a positive int, `encoder` one of `mlp`, `lstm`, `direct`, `at` a member name in quotes",
            )),
            (k, _) => {
                return Err(bad(
                    format!("`ptuning` takes no argument `{}`", k.unwrap_or("(positional)")),
                    "its arguments are `tokens:`, `encoder:` and `at:`",
                ))
            }
        }
    }
    if p.tokens == 0 {
        return Err(bad("`ptuning` needs `tokens`".into(), "write `adapter = ptuning(tokens: 8, encoder: mlp)`"));
    }
    Ok(p)
}

/// Adds the `prompt` member (a `PromptEncoder` of the embedding's width) to the root and
/// marks the embedding whose output it precedes.
fn apply_ptuning(
    program: &mut Program,
    mut instance: Instance,
    p: &PTuning,
    site: (FileId, Span),
) -> Result<Instance, Error> {
    let embedding = modules::std_item(program, "nn", "Embedding")?;
    let encoder = modules::std_item(program, "adapters", "PromptEncoder")?;
    let err = |msg: String, help: String| {
        Error::new(site.0, Diagnostic::error(msg, site.1).with_label("in this adapter").with_help(help))
    };
    let embeddings: Vec<&crate::elab::instance::Sub> = instance
        .members
        .iter()
        .filter_map(|m| match m {
            Member::Sub(s) if s.copies.is_none() && s.instance.block == embedding => Some(s),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = embeddings.iter().map(|s| s.name.as_str()).collect();
    let chosen = match (&p.at, embeddings.as_slice()) {
        (Some(at), _) => embeddings.iter().find(|s| &s.name == at).ok_or_else(|| {
            err(
                format!("`{}` has no `Embedding` member `{at}`", instance.block_name),
                format!("its `Embedding` members: {}", if names.is_empty() { "none".into() } else { names.join(", ") }),
            )
        })?,
        (None, [one]) => one,
        (None, []) => {
            return Err(err(
                format!("P-tuning needs a token `Embedding` member in `{}`, and it has none", instance.block_name),
                "the virtual tokens go in front of the output of the model's `std.nn.Embedding`".into(),
            ))
        }
        (None, _) => {
            return Err(err(
                format!("`{}` has several `Embedding` members: {}", instance.block_name, names.join(", ")),
                format!("name the token embedding: `ptuning(tokens: {}, at: \"{}\")`", p.tokens, names[0]),
            ))
        }
    };
    let (after, d) = (chosen.name.clone(), chosen.instance.args.iter().find(|(k, _)| k == "d").map(|(_, v)| v.clone()));
    if instance.members.iter().any(|m| matches!(m, Member::Sub(s) if s.name == "prompt")) {
        return Err(err(
            format!("`{}` already has a member `prompt`, the name P-tuning's encoder takes", instance.block_name),
            "rename that member".into(),
        ));
    }
    let args: Vec<ArgValue> = [
        ("tokens", Value::Int(p.tokens)),
        ("d", d.unwrap_or(Value::None)),
        ("encoder", Value::Variant { enum_name: "Reparam".into(), variant: p.encoder.clone() }),
    ]
    .into_iter()
    .map(|(k, value)| ArgValue { name: Some((k.to_string(), site.1)), value, span: site.1, file: site.0 })
    .collect();
    let consts = Consts::default();
    let prompt = Instantiator::new(program, &consts).instantiate(encoder, &args, site)?;
    let docs = prompt.docs.clone();
    instance.members.insert(
        0,
        Member::Sub(crate::elab::instance::Sub { name: "prompt".into(), copies: None, instance: prompt, docs }),
    );
    instance.prompt = Some(crate::elab::instance::PromptSite { after, encoder: "prompt".into(), tokens: p.tokens });
    Ok(instance)
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The recipe's `adapter` entry, evaluated; `span` is the entry's value, for messages.
pub fn parse_lora(value: &Value, file: FileId, span: Span) -> Result<Lora, Error> {
    let bad =
        |msg: String, help: &str| Error::new(file, Diagnostic::error(msg, span).with_label("here").with_help(help));
    let Value::Call { name, args } = value else {
        return Err(bad(
            format!("`adapter` must be `lora(...)` or `ptuning(...)`, found {}", value.kind()),
            "write `adapter = lora(rank: 8, alpha: 16, targets: [\"*.attn.wq\"])`",
        ));
    };
    if name != "lora" {
        return Err(bad(
            format!("unknown adapter `{name}`"),
            "the adapters are `lora(rank:, alpha:, targets:)` and `ptuning(tokens:, encoder:)`",
        ));
    }
    let mut lora = Lora { rank: 8, alpha: 16.0, drop: 0.0, targets: Vec::new() };
    for (key, v) in args {
        match (key.as_deref(), v) {
            (Some("rank"), Value::Int(r)) if *r > 0 => lora.rank = *r,
            (Some("alpha"), v) if num(v).is_some() => lora.alpha = num(v).unwrap_or(16.0),
            (Some("drop"), v) if num(v).is_some_and(|d| (0.0..1.0).contains(&d)) => lora.drop = num(v).unwrap_or(0.0),
            (Some("targets"), v) if strings(v).is_some_and(|t| !t.is_empty()) => {
                lora.targets = strings(v).unwrap_or_default()
            }
            (Some(k @ ("rank" | "alpha" | "drop" | "targets")), v) => return Err(bad(
                format!("bad `{k}` for `lora`: `{v}`"),
                "`rank` is a positive int, `alpha` a number, `drop` in [0, 1), `targets` a non-empty list of strings",
            )),
            (k, _) => {
                return Err(bad(
                    format!("`lora` takes no argument `{}`", k.unwrap_or("(positional)")),
                    "its arguments are `rank:`, `alpha:`, `drop:` and `targets:`",
                ))
            }
        }
    }
    if lora.targets.is_empty() {
        return Err(bad(
            "`lora` needs `targets`".into(),
            "name the `Linear`s to adapt: `targets: [\"*.attn.wq\", \"*.attn.wv\"]`",
        ));
    }
    Ok(lora)
}

/// Replaces every targeted `Linear` of `instance` by a `LoRA` of the same shape. A target
/// that matches no `Linear`, or only some copies of a `repeat` (copies share one
/// instance), is an error at `site`.
pub fn apply_lora(
    program: &mut Program,
    mut instance: Instance,
    lora: &Lora,
    site: (FileId, Span),
) -> Result<Instance, Error> {
    let linear = modules::std_item(program, "nn", "Linear")?;
    let block = modules::std_item(program, "adapters", "LoRA")?;
    let program: &Program = program;
    let consts = Consts::default();
    let mut rewrite = Rewrite {
        lora,
        site,
        linear,
        make: Box::new(|args: &[(String, Value)]| {
            let arg = |k: &str| args.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or(Value::None);
            let values = [
                ("d_in", arg("d_in")),
                ("d_out", arg("d_out")),
                ("bias", arg("bias")),
                ("std", arg("std")),
                ("rank", Value::Int(lora.rank)),
                ("alpha", Value::Float(lora.alpha)),
                ("drop", Value::Float(lora.drop)),
            ];
            let args: Vec<ArgValue> = values
                .into_iter()
                .map(|(k, value)| ArgValue { name: Some((k.to_string(), site.1)), value, span: site.1, file: site.0 })
                .collect();
            Instantiator::new(program, &consts).instantiate(block, &args, site)
        }),
        matched: vec![false; lora.targets.len()],
        linears: Vec::new(),
    };
    rewrite.walk(&mut instance, &[String::new()])?;
    if let Some(i) = rewrite.matched.iter().position(|m| !m) {
        let mut some: Vec<String> = rewrite.linears.iter().take(6).cloned().collect();
        if rewrite.linears.len() > 6 {
            some.push("...".into());
        }
        return Err(Error::new(
            site.0,
            Diagnostic::error(format!("LoRA target `{}` matches no `Linear` of the model", lora.targets[i]), site.1)
                .with_label("in this adapter")
                .with_help(format!("its `Linear`s are at {}", some.join(", "))),
        ));
    }
    Ok(instance)
}

/// Builds the `LoRA` instance that replaces a `Linear` with these arguments.
type MakeLora<'a> = dyn Fn(&[(String, Value)]) -> Result<Instance, Error> + 'a;

struct Rewrite<'a> {
    lora: &'a Lora,
    site: (FileId, Span),
    linear: modules::ItemRef,
    make: Box<MakeLora<'a>>,
    matched: Vec<bool>,
    /// Every `Linear` path seen, for the message when a target matches none.
    linears: Vec<String>,
}

impl Rewrite<'_> {
    /// `prefixes`: the paths this (shared) instance stands at, one per enclosing copy.
    fn walk(&mut self, instance: &mut Instance, prefixes: &[String]) -> Result<(), Error> {
        for m in &mut instance.members {
            let Member::Sub(s) = m else { continue };
            let join = |p: &str, n: &str| if p.is_empty() { n.to_string() } else { format!("{p}.{n}") };
            let paths: Vec<String> = prefixes
                .iter()
                .flat_map(|p| match s.copies {
                    Some((CopiesKind::Repeat, n)) => (0..n).map(|i| join(&join(p, &s.name), &i.to_string())).collect(),
                    _ => vec![join(p, &s.name)],
                })
                .collect();
            if s.instance.block != self.linear {
                self.walk(&mut s.instance, &paths)?;
                continue;
            }
            self.linears.push(paths[0].clone());
            let mut adapt = false;
            for (t, glob) in self.lora.targets.iter().enumerate() {
                let hits = paths.iter().filter(|p| crate::glob::matches(glob, p)).count();
                if hits > 0 && hits < paths.len() {
                    return Err(Error::new(
                        self.site.0,
                        Diagnostic::error(
                            format!("LoRA target `{glob}` selects {hits} of the {} copies of `{}`", paths.len(), paths[0]),
                            self.site.1,
                        )
                        .with_label("in this adapter")
                        .with_help("the copies of a `repeat` share one definition: target every copy, with `*` for the copy number"),
                    ));
                }
                if hits > 0 {
                    self.matched[t] = true;
                    adapt = true;
                }
            }
            if adapt {
                s.instance = (self.make)(&s.instance.args)?;
            }
        }
        Ok(())
    }
}

/// Folds each LoRA's update into its base weight: `weight += lora_a @ lora_b * scale`,
/// and drops `lora_a`, `lora_b`. The result loads into the model without the adapter.
/// Tensors are `(shape, data)`, row-major; leading axes (a `stack`'s copies) are batched.
pub fn merge(
    params: &mut std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    scale: f64,
) -> Result<usize, String> {
    let prefixes: Vec<String> =
        params.keys().filter_map(|k| k.strip_suffix(".lora_a").map(str::to_string)).collect::<Vec<_>>();
    for p in &prefixes {
        let (a_shape, a) = params.remove(&format!("{p}.lora_a")).unwrap_or_default();
        let (b_shape, b) =
            params.remove(&format!("{p}.lora_b")).ok_or_else(|| format!("`{p}.lora_a` without `{p}.lora_b`"))?;
        let (w_shape, w) =
            params.get_mut(&format!("{p}.weight")).ok_or_else(|| format!("`{p}.lora_a` without `{p}.weight`"))?;
        let n = a_shape.len();
        if n < 2 || b_shape.len() != n || w_shape.len() != n {
            return Err(format!("`{p}`: LoRA tensors of unexpected rank"));
        }
        let (d_in, r, d_out) = (a_shape[n - 2], a_shape[n - 1], b_shape[n - 1]);
        if b_shape[n - 2] != r || w_shape[n - 2] != d_in || w_shape[n - 1] != d_out {
            return Err(format!("`{p}`: shapes {a_shape:?} @ {b_shape:?} do not fit the weight {w_shape:?}"));
        }
        let copies = w.len() / (d_in * d_out).max(1);
        for c in 0..copies {
            let (a, b) = (&a[c * d_in * r..], &b[c * r * d_out..]);
            let w = &mut w[c * d_in * d_out..];
            for i in 0..d_in {
                for j in 0..d_out {
                    let dot: f64 = (0..r).map(|k| a[i * r + k] * b[k * d_out + j]).sum();
                    w[i * d_out + j] += dot * scale;
                }
            }
        }
    }
    Ok(prefixes.len())
}

/// The fold of `merge` as a program: for each adapted weight `PREFIX.weight` (with
/// `PREFIX.lora_a`, `PREFIX.lora_b` beside it in `shapes`), `weight += (lora_a @ lora_b) ·
/// scale`, computed in f64 and stored f32. Returns the graph and the prefixes it folds.
pub fn merge_graph(
    shapes: &std::collections::BTreeMap<String, Vec<usize>>,
    scale: f64,
) -> Result<(crate::graph::Graph, Vec<String>), String> {
    use crate::graph::dim::Dim;
    use crate::graph::op::Binary;
    use crate::graph::types::DType;
    let mut graph = crate::graph::Graph::default();
    let prefixes: Vec<String> = shapes.keys().filter_map(|k| k.strip_suffix(".lora_a").map(str::to_string)).collect();
    let mut updates = Vec::new();
    let mut b = crate::training::Builder::new(&mut graph, "merge");
    for p in &prefixes {
        let get = |suffix: &str| {
            shapes.get(&format!("{p}.{suffix}")).ok_or_else(|| format!("`{p}.lora_a` without `{p}.{suffix}`"))
        };
        let (a_shape, b_shape, w_shape) = (get("lora_a")?, get("lora_b")?, get("weight")?);
        let n = a_shape.len();
        if n < 2 || b_shape.len() != n || w_shape.len() != n {
            return Err(format!("`{p}`: LoRA tensors of unexpected rank"));
        }
        if b_shape[n - 2] != a_shape[n - 1] || w_shape[n - 2] != a_shape[n - 2] || w_shape[n - 1] != b_shape[n - 1] {
            return Err(format!("`{p}`: shapes {a_shape:?} @ {b_shape:?} do not fit the weight {w_shape:?}"));
        }
        let dims = |s: &[usize]| s.iter().map(|&d| Dim::constant(d as i64)).collect::<Vec<_>>();
        let leaf = |b: &mut crate::training::Builder, suffix: &str, s: &[usize]| {
            let v = b.param(&format!("{p}.{suffix}"), DType::F32, &dims(s));
            b.cast(v, DType::F64)
        };
        let a = leaf(&mut b, "lora_a", a_shape)?;
        let lb = leaf(&mut b, "lora_b", b_shape)?;
        let w = leaf(&mut b, "weight", w_shape)?;
        let prod = b.matmul(a, lb)?;
        let scaled = b.with(Binary::Mul, prod, scale)?;
        let sum = b.binary(Binary::Add, w, scaled)?;
        let stored = b.cast(sum, DType::F32)?;
        updates.push((format!("{p}.weight"), stored));
    }
    graph.updates = updates;
    Ok((graph, prefixes))
}
