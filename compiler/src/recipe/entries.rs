//! One parser per recipe entry: the entry's expression → its typed value, checked against
//! the constructor's signature and each value's range.

use super::call::{ctor, error, range, Sig, Want};
use super::{Data, LossScaling, Objective, Optimizer, Precision};
use crate::elab::eval::Scope;
use crate::elab::value::Value;
use crate::error::Error;
use crate::graph::types::DType;
use modelc_grammar::ast::{BinaryOp, Expr, ExprKind};
use modelc_runtime::batches::Batches;
use modelc_runtime::optim::Kind;
use modelc_runtime::schedule::Phase;

const BETAS: &str = "in [0, 1)";

/// Under loss scaling, more skipped steps in a row than this stop a run (`max_skipped:`).
pub const DEFAULT_MAX_SKIPPED: u64 = 20;

pub fn default_optimizer() -> Optimizer {
    Optimizer {
        kind: Kind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 },
        lr: 1e-3,
        weight_decay: 0.01,
        no_decay: Vec::new(),
    }
}

const OPTIMIZERS: &[&str] = &["sgd", "adam", "adamw", "adafactor"];

pub fn optimizer(scope: &Scope, expr: &Expr) -> Result<Optimizer, Error> {
    let c = ctor(scope, expr, "optimizer", "adamw(lr: 3e-4)")?;
    let sig = match c.name.as_str() {
        "sgd" => Sig {
            name: "sgd",
            params: &[
                ("lr", Want::Num),
                ("momentum", Want::Num),
                ("nesterov", Want::Bool),
                ("weight_decay", Want::Num),
                ("no_decay", Want::Names),
            ],
            positional: 0,
            required: &[],
        },
        "adam" | "adamw" => Sig {
            name: if c.name == "adam" { "adam" } else { "adamw" },
            params: &[
                ("lr", Want::Num),
                ("betas", Want::Pair),
                ("eps", Want::Num),
                ("weight_decay", Want::Num),
                ("no_decay", Want::Names),
            ],
            positional: 0,
            required: &[],
        },
        "adafactor" => Sig {
            name: "adafactor",
            params: &[
                ("lr", Want::Num),
                ("beta2", Want::Num),
                ("eps", Want::Num),
                ("weight_decay", Want::Num),
                ("no_decay", Want::Names),
            ],
            positional: 0,
            required: &[],
        },
        _ => return Err(c.unknown("optimizer", OPTIMIZERS)),
    };
    let a = c.bind(&sig)?;
    let (lr, lr_span) = a.num("lr", if c.name == "sgd" { 0.1 } else { 1e-3 }, c.span);
    range(lr.is_finite() && lr > 0.0, lr_span, "lr", lr, "a finite number above 0")?;
    let (wd, wd_span) = a.num("weight_decay", if c.name == "adamw" { 0.01 } else { 0.0 }, c.span);
    range(wd.is_finite() && wd >= 0.0, wd_span, "weight_decay", wd, "a finite number ≥ 0")?;
    let eps = |default: f64| -> Result<f64, Error> {
        let (eps, span) = a.num("eps", default, c.span);
        range(eps.is_finite() && eps > 0.0, span, "eps", eps, "a finite number above 0")?;
        Ok(eps)
    };
    let beta = |key: &str, x: f64, span| range((0.0..1.0).contains(&x), span, key, x, BETAS);
    let kind = match c.name.as_str() {
        "sgd" => {
            let (momentum, span) = a.num("momentum", 0.0, c.span);
            beta("momentum", momentum, span)?;
            let nesterov = a.bool("nesterov", false);
            if nesterov && momentum == 0.0 {
                return Err(error(
                    a.span("nesterov").unwrap_or(c.span),
                    "Nesterov momentum needs a momentum above 0",
                    "here",
                    "add `momentum: 0.9`, or drop `nesterov`",
                ));
            }
            Kind::Sgd { momentum, nesterov }
        }
        "adam" | "adamw" => {
            let ((b1, b2), span) = a.pair("betas").unwrap_or(((0.9, 0.999), c.span));
            beta("betas.0", b1, span)?;
            beta("betas.1", b2, span)?;
            let eps = eps(1e-8)?;
            if c.name == "adam" {
                Kind::Adam { beta1: b1, beta2: b2, eps }
            } else {
                Kind::AdamW { beta1: b1, beta2: b2, eps }
            }
        }
        _ => {
            let (b2, span) = a.num("beta2", 0.999, c.span);
            beta("beta2", b2, span)?;
            Kind::Adafactor { beta2: b2, eps: eps(1e-30)? }
        }
    };
    Ok(Optimizer { kind, lr, weight_decay: wd, no_decay: a.names("no_decay") })
}

const PHASES: &[&str] = &["warmup", "cosine", "linear", "constant", "wsd", "inverse_sqrt"];

pub fn schedule(scope: &Scope, expr: &Expr) -> Result<Vec<Phase>, Error> {
    // `a then b then c`: the phases, left to right.
    if let ExprKind::Binary { op: BinaryOp::Then, lhs, rhs } = &expr.kind {
        let mut out = schedule(scope, lhs)?;
        out.extend(schedule(scope, rhs)?);
        return Ok(out);
    }
    let c = ctor(scope, expr, "schedule", "warmup(100) then cosine(to: 0.1)")?;
    let to = &[("to", Want::Num)];
    let sig = |name, params, positional, required| Sig { name, params, positional, required };
    let s = match c.name.as_str() {
        "warmup" => sig("warmup", &[("steps", Want::Int)], 1, &["steps"]),
        "cosine" => sig("cosine", to, 0, &[]),
        "linear" => sig("linear", to, 0, &[]),
        "constant" => sig("constant", &[], 0, &[]),
        "inverse_sqrt" => sig("inverse_sqrt", &[], 0, &[]),
        "wsd" => sig("wsd", &[("decay", Want::Num), ("to", Want::Num)], 0, &[]),
        _ => return Err(c.unknown("schedule", PHASES)),
    };
    let a = c.bind(&s)?;
    let (to, to_span) = a.num("to", 0.0, c.span);
    range(to.is_finite() && to >= 0.0, to_span, "to", to, "a fraction of the peak rate ≥ 0")?;
    Ok(vec![match c.name.as_str() {
        "warmup" => {
            let (n, span) = a.int("steps").unwrap_or((0, c.span));
            range(n >= 0, span, "warmup", n, "a number of steps ≥ 0")?;
            Phase::Warmup { steps: n as u64 }
        }
        "cosine" => Phase::Cosine { to },
        "linear" => Phase::Linear { to },
        "constant" => Phase::Constant,
        "inverse_sqrt" => Phase::InverseSqrt,
        _ => {
            let (decay, span) = a.num("decay", 0.1, c.span);
            range(decay > 0.0 && decay <= 1.0, span, "decay", decay, "a fraction in (0, 1]")?;
            Phase::Wsd { decay, to }
        }
    }])
}

const OBJECTIVES: &[&str] = &["causal_lm", "mlm", "span_corruption"];

pub fn objective(scope: &Scope, expr: &Expr) -> Result<Objective, Error> {
    let c = ctor(scope, expr, "objective", "causal_lm")?;
    let s = match c.name.as_str() {
        "causal_lm" => Sig { name: "causal_lm", params: &[], positional: 0, required: &[] },
        "mlm" => Sig {
            name: "mlm",
            params: &[("mask", Want::Num), ("dynamic", Want::Bool), ("mask_id", Want::Int)],
            positional: 0,
            required: &[],
        },
        "span_corruption" => Sig {
            name: "span_corruption",
            params: &[
                ("noise", Want::Num),
                ("mean_span", Want::Num),
                ("first_sentinel", Want::Int),
                ("sentinels", Want::Int),
            ],
            positional: 0,
            required: &[],
        },
        _ => return Err(c.unknown("objective", OBJECTIVES)),
    };
    let a = c.bind(&s)?;
    let token = |key: &str, default: u32| -> Result<u32, Error> {
        match a.int(key) {
            Some((id, span)) => {
                range((0..=u32::MAX as i64).contains(&id), span, key, id, "a token id ≥ 0")?;
                Ok(id as u32)
            }
            None => Ok(default),
        }
    };
    use crate::objective::Objective as Loss;
    Ok(match c.name.as_str() {
        "causal_lm" => Objective::CAUSAL_LM,
        "mlm" => {
            let (rate, span) = a.num("mask", 0.15, c.span);
            range(rate > 0.0 && rate < 1.0, span, "mask", rate, "a rate in (0, 1)")?;
            let batches = Batches::Mlm {
                rate,
                dynamic: a.bool("dynamic", true),
                mask_id: token("mask_id", modelc_runtime::tokens::MASK)?,
            };
            Objective { loss: Loss::Mlm, batches }
        }
        _ => {
            let (noise, span) = a.num("noise", 0.15, c.span);
            range(noise > 0.0 && noise < 1.0, span, "noise", noise, "a rate in (0, 1)")?;
            let (mean_span, span) = a.num("mean_span", 3.0, c.span);
            range(mean_span.is_finite() && mean_span > 0.0, span, "mean_span", mean_span, "a length above 0")?;
            let sentinels = token("sentinels", 32)?;
            range(sentinels >= 1, a.span("sentinels").unwrap_or(c.span), "sentinels", sentinels, "at least 1")?;
            let batches = Batches::SpanCorruption {
                noise,
                mean_span,
                first_sentinel: token("first_sentinel", modelc_runtime::tokens::FIRST_SENTINEL)?,
                sentinels,
            };
            Objective { loss: Loss::SpanCorruption, batches }
        }
    })
}

pub fn data(scope: &Scope, expr: &Expr) -> Result<Data, Error> {
    let c = ctor(scope, expr, "data", "text(builtin, tokenizer: bytes, seq: 256, batch: 8)")?;
    if c.name != "text" {
        return Err(c.unknown("data source", &["text"]));
    }
    let a = c.bind(&Sig {
        name: "text",
        params: &[("source", Want::Form), ("tokenizer", Want::Form), ("seq", Want::Int), ("batch", Want::Int)],
        positional: 1,
        required: &["seq", "batch"],
    })?;
    let mut dims = [(0i64, c.span); 2];
    for (i, key) in ["seq", "batch"].iter().enumerate() {
        let (n, span) = a.int(key).unwrap_or((0, c.span));
        range(n >= 1, span, key, n, "at least 1")?;
        dims[i] = (n, span);
    }
    let source = match a.value("source") {
        Some(Value::Str(p)) => Some(p.clone()),
        Some(Value::Symbol(w)) if w == "builtin" => None,
        Some(v) => {
            return Err(error(
                a.span("source").unwrap_or(c.span),
                format!("the text's source is `builtin` or a path in quotes, found `{v}`"),
                "not a source",
                "write `text(builtin, ...)` or `text(\"data/corpus.txt\", ...)`",
            ))
        }
        None => None,
    };
    let tokenizer = a.value("tokenizer").map_or("bytes".to_string(), |v| v.to_string());
    Ok(Data { source, tokenizer, seq: dims[0].0, batch: dims[1].0, seq_at: dims[0].1, batch_at: dims[1].1 })
}

pub fn precision(scope: &Scope, expr: &Expr) -> Result<Precision, Error> {
    let c = ctor(scope, expr, "precision", "mixed(compute: bf16)")?;
    match c.name.as_str() {
        "f32" => {
            c.bind(&Sig { name: "f32", params: &[], positional: 0, required: &[] })?;
            Ok(Precision::F32)
        }
        "mixed" => {
            let a = c.bind(&Sig {
                name: "mixed",
                params: &[
                    ("compute", Want::Word(&["bf16", "f16"])),
                    ("master", Want::Word(&["f32"])),
                    ("loss_scale", Want::Form),
                    ("max_skipped", Want::Int),
                ],
                positional: 0,
                required: &[],
            })?;
            let (max_skipped, span) = a.int("max_skipped").unwrap_or((DEFAULT_MAX_SKIPPED as i64, c.span));
            range(max_skipped >= 0, span, "max_skipped", max_skipped, "a number of steps ≥ 0")?;
            let compute = if a.word("compute") == Some("f16") { DType::F16 } else { DType::BF16 };
            let loss_scale = match a.value("loss_scale") {
                None if compute == DType::F16 => LossScaling::Dynamic { init: 65536.0, growth_interval: 2000 },
                None => LossScaling::Fixed(1.0),
                Some(_) => loss_scaling(scope, expr)?,
            };
            Ok(Precision::Mixed { compute, loss_scale, max_skipped: max_skipped as u64 })
        }
        _ => Err(c.unknown("precision", &["f32", "mixed"])),
    }
}

/// The `loss_scale:` argument of `mixed(..)` (found again in the AST for its spans).
fn loss_scaling(scope: &Scope, mixed: &Expr) -> Result<LossScaling, Error> {
    let ExprKind::Call { args, .. } = &mixed.kind else { unreachable!("`mixed` with arguments is a call") };
    let Some(arg) = args.iter().find(|a| a.name.as_ref().is_some_and(|n| n.name == "loss_scale")) else {
        unreachable!("bound `loss_scale`")
    };
    let fixed = match scope.eval(&arg.value)? {
        Value::Int(i) => Some(i as f64),
        Value::Float(x) => Some(x),
        _ => None,
    };
    if let Some(x) = fixed {
        range(x.is_finite() && x > 0.0, arg.value.span, "loss_scale", x, "a number above 0, or `dynamic`")?;
        return Ok(LossScaling::Fixed(x));
    }
    let c = ctor(scope, &arg.value, "loss_scale", "dynamic")?;
    if c.name != "dynamic" {
        return Err(c.unknown("loss scale", &["dynamic"]));
    }
    let a = c.bind(&Sig {
        name: "dynamic",
        params: &[("init", Want::Num), ("growth_interval", Want::Int)],
        positional: 0,
        required: &[],
    })?;
    let (init, span) = a.num("init", 65536.0, c.span);
    range(init.is_finite() && init > 0.0, span, "init", init, "a number above 0")?;
    let (interval, span) = a.int("growth_interval").unwrap_or((2000, c.span));
    range(interval >= 1, span, "growth_interval", interval, "at least 1 step")?;
    Ok(LossScaling::Dynamic { init, growth_interval: interval as u64 })
}

/// `every(N)`, N ≥ 1.
pub fn every(scope: &Scope, expr: &Expr, key: &str) -> Result<u64, Error> {
    let c = ctor(scope, expr, key, "every(100)")?;
    if c.name != "every" {
        return Err(c.unknown(&format!("`{key}` form"), &["every"]));
    }
    let a = c.bind(&Sig { name: "every", params: &[("steps", Want::Int)], positional: 1, required: &["steps"] })?;
    let (n, span) = a.int("steps").unwrap_or((0, c.span));
    range(n >= 1, span, key, n, "every N ≥ 1 steps")?;
    Ok(n as u64)
}

/// An int ≥ `min`.
pub fn count(scope: &Scope, expr: &Expr, key: &str, min: i64) -> Result<u64, Error> {
    match scope.eval(expr)? {
        Value::Int(n) => {
            range(n >= min, expr.span, key, n, &format!("an int ≥ {min}"))?;
            Ok(n as u64)
        }
        other => Err(error(
            expr.span,
            format!("`{key}` must be an int, found {}", other.kind()),
            "not an int",
            format!("write `{key} = {}`", min.max(1)),
        )),
    }
}

/// A finite number above 0.
pub fn positive(scope: &Scope, expr: &Expr, key: &str) -> Result<f64, Error> {
    let x = match scope.eval(expr)? {
        Value::Int(n) => n as f64,
        Value::Float(x) => x,
        other => {
            return Err(error(
                expr.span,
                format!("`{key}` must be a number, found {}", other.kind()),
                "not a number",
                format!("write `{key} = 1.0`"),
            ))
        }
    };
    range(x.is_finite() && x > 0.0, expr.span, key, x, "a finite number above 0")?;
    Ok(x)
}

pub fn boolean(scope: &Scope, expr: &Expr, key: &str) -> Result<bool, Error> {
    match scope.eval(expr)? {
        Value::Bool(b) => Ok(b),
        other => Err(error(
            expr.span,
            format!("`{key}` must be `true` or `false`, found {}", other.kind()),
            "not a bool",
            format!("write `{key} = true`"),
        )),
    }
}

/// A bare word (a member name).
pub fn word(scope: &Scope, expr: &Expr, key: &str, example: &str) -> Result<String, Error> {
    match scope.eval(expr)? {
        Value::Symbol(w) => Ok(w),
        other => Err(error(
            expr.span,
            format!("`{key}` must name a sub-block, found {}", other.kind()),
            "not a name",
            format!("write `{key} = {example}`"),
        )),
    }
}

/// `trainable = ["glob", ...]`.
pub fn trainable(scope: &Scope, expr: &Expr) -> Result<Vec<String>, Error> {
    let bad = |found: &str| {
        error(
            expr.span,
            format!("`trainable` lists parameter globs, found {found}"),
            "here",
            "write `trainable = [\"prompt.*\"]`",
        )
    };
    match scope.eval(expr)? {
        Value::List(items) => items
            .into_iter()
            .map(|i| match i {
                Value::Str(g) => Ok(g),
                other => Err(bad(other.kind())),
            })
            .collect(),
        other => Err(bad(other.kind())),
    }
}
