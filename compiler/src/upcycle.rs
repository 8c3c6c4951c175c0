//! Sparse upcycling (Komatsuzaki et al., 2023): a recipe's `init = upcycle("dense.safetensors",
//! noise: 0.01)` starts a mixture-of-experts model from a dense checkpoint. Every parameter
//! the two models share is copied by name; each expert of a `stack` is a copy of the dense
//! block the stack replaces (`blocks.0.mlp.experts.wup.weight` from `blocks.0.mlp.wup.weight`,
//! see `Instance::stacked_params`), plus Gaussian noise so the experts can diverge; what the
//! dense model lacks (the router) keeps its initialiser. This module reads the recipe form;
//! the runtime fills the tensors.

use crate::elab::value::Value;
use crate::error::{Error, FileId};
use modelc_grammar::ast::Span;
use modelc_grammar::Diagnostic;

/// `upcycle(PATH, noise:)`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Upcycle {
    /// The dense checkpoint, relative to the working directory like `from` and `runs/`.
    pub path: String,
    /// Each expert copy gets `noise · std(dense tensor)` of Gaussian noise; 0 copies exactly.
    pub noise: f64,
}

/// The recipe's `init` entry, evaluated; `span` is the entry's value, for messages.
pub fn parse(value: &Value, file: FileId, span: Span) -> Result<Upcycle, Error> {
    let bad =
        |msg: String, help: &str| Error::new(file, Diagnostic::error(msg, span).with_label("here").with_help(help));
    const FORM: &str = "write `init = upcycle(\"runs/llama-tiny/final.safetensors\", noise: 0.01)`";
    let Value::Call { name, args } = value else {
        return Err(bad(format!("`init` must be `upcycle(...)`, found {}", value.kind()), FORM));
    };
    if name != "upcycle" {
        let close = crate::error::suggest(name, ["upcycle"].into_iter()).is_some();
        return Err(bad(
            format!("unknown `init` `{name}`"),
            if close {
                "did you mean `upcycle`? `init = upcycle(PATH, noise:)` starts an MoE model from a dense checkpoint"
            } else {
                "`init = upcycle(PATH, noise:)` starts an MoE model from a dense checkpoint; a model of the same shape starts `from` one: `model = Llama(...) from \"PATH\"`"
            },
        ));
    }
    let mut up = Upcycle { path: String::new(), noise: 0.0 };
    for (i, (key, v)) in args.iter().enumerate() {
        match (key.as_deref(), v) {
            (None, Value::Str(p)) if i == 0 => up.path = p.clone(),
            (Some("noise"), Value::Float(x)) if *x >= 0.0 => up.noise = *x,
            (Some("noise"), Value::Int(x)) if *x >= 0 => up.noise = *x as f64,
            (Some("noise"), v) => {
                return Err(bad(
                    format!("bad `noise` for `upcycle`: `{v}`"),
                    "`noise` is a number ≥ 0 (0.01 is typical)",
                ))
            }
            (k, _) => {
                return Err(bad(
                    format!("`upcycle` takes no argument `{}` here", k.unwrap_or("(positional)")),
                    "its arguments are the checkpoint path, then `noise:`",
                ))
            }
        }
    }
    if up.path.is_empty() {
        return Err(bad("`upcycle` needs the dense checkpoint's path".into(), FORM));
    }
    Ok(up)
}
