//! A recipe value as written (`adamw(lr: 3e-4, betas: (0.9, 0.95))`, or a bare word) →
//! its constructor name and evaluated arguments, each with its span, checked against a
//! signature: unknown and missing keyword arguments, too many positional ones and wrong
//! types are located diagnostics with a did-you-mean.

use crate::elab::eval::Scope;
use crate::elab::value::Value;
use crate::error::{suggest, Error, FileId};
use modelc_grammar::ast::{Expr, ExprKind, Span};
use modelc_grammar::Diagnostic;

/// What an argument must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Want {
    /// An int or a float.
    Num,
    Int,
    Bool,
    /// One of these words.
    Word(&'static [&'static str]),
    /// A pair of numbers `(a, b)`.
    Pair,
    /// A list of words or strings.
    Names,
    /// A word or a call (checked by the caller).
    Form,
}

impl Want {
    fn describe(self) -> String {
        match self {
            Want::Num => "a number".into(),
            Want::Int => "an int".into(),
            Want::Bool => "`true` or `false`".into(),
            Want::Word(words) => {
                format!("one of {}", words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", "))
            }
            Want::Pair => "a pair of numbers `(a, b)`".into(),
            Want::Names => "a list of names `[norm, bias]`".into(),
            Want::Form => "a name, a call or a number".into(),
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match (self, v) {
            (Want::Num, Value::Int(_) | Value::Float(_))
            | (Want::Int, Value::Int(_))
            | (Want::Bool, Value::Bool(_)) => true,
            (Want::Word(words), Value::Symbol(w)) => words.contains(&w.as_str()),
            (Want::Pair, Value::Tuple(items)) => {
                items.len() == 2 && items.iter().all(|i| matches!(i, Value::Int(_) | Value::Float(_)))
            }
            (Want::Names, Value::List(items)) => items.iter().all(|i| matches!(i, Value::Symbol(_) | Value::Str(_))),
            (Want::Form, Value::Symbol(_) | Value::Call { .. } | Value::Str(_) | Value::Int(_) | Value::Float(_)) => {
                true
            }
            _ => false,
        }
    }
}

/// A constructor's signature: its name and parameters (the first `positional` may be
/// given without a key), and which of them must be given.
pub struct Sig {
    pub name: &'static str,
    pub params: &'static [(&'static str, Want)],
    pub positional: usize,
    pub required: &'static [&'static str],
}

/// One argument as written.
#[derive(Clone, Debug)]
pub struct Arg {
    pub key: Option<(String, Span)>,
    pub value: Value,
    pub span: Span,
}

/// A constructor call (or bare word) of a recipe entry.
#[derive(Clone, Debug)]
pub struct Ctor {
    pub name: String,
    pub name_span: Span,
    pub span: Span,
    pub args: Vec<Arg>,
}

/// Arguments bound to a signature's parameters.
pub struct Bound {
    values: Vec<(&'static str, Option<(Value, Span)>)>,
}

pub fn error(span: Span, msg: impl Into<String>, label: &str, help: impl Into<String>) -> Error {
    Error::new(FileId(0), Diagnostic::error(msg, span).with_label(label).with_help(help))
}

/// The value `expr` of entry `key` as a constructor: a bare word or a call of one.
pub fn ctor(scope: &Scope, expr: &Expr, key: &str, example: &str) -> Result<Ctor, Error> {
    match &expr.kind {
        ExprKind::Name(id) => {
            if let Value::Symbol(name) = scope.eval(expr)? {
                return Ok(Ctor { name, name_span: id.span, span: expr.span, args: Vec::new() });
            }
        }
        ExprKind::Call { callee, args } => {
            if let (ExprKind::Name(id), Value::Call { name, .. }) = (&callee.kind, scope.eval(expr)?) {
                let args = args
                    .iter()
                    .map(|a| {
                        Ok(Arg {
                            key: a.name.as_ref().map(|n| (n.name.clone(), n.span)),
                            value: scope.eval(&a.value)?,
                            span: a.value.span,
                        })
                    })
                    .collect::<Result<_, Error>>()?;
                return Ok(Ctor { name, name_span: id.span, span: expr.span, args });
            }
        }
        _ => {}
    }
    let found = scope.eval(expr)?;
    Err(error(
        expr.span,
        format!("`{key}` must be a name or a call such as `{example}`, found {}", found.kind()),
        "here",
        format!("write `{key} = {example}`"),
    ))
}

impl Ctor {
    /// Reports an unknown constructor name with a did-you-mean among `known`.
    pub fn unknown(&self, key: &str, known: &[&str]) -> Error {
        let help = match suggest(&self.name, known.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => {
                format!("the choices are {}", known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))
            }
        };
        error(self.name_span, format!("unknown {key} `{}`", self.name), &format!("not a known {key}"), help)
    }

    /// Binds the arguments to `sig`, checking keys, arity and types.
    pub fn bind(&self, sig: &Sig) -> Result<Bound, Error> {
        let mut values: Vec<(&'static str, Option<(Value, Span)>)> =
            sig.params.iter().map(|(n, _)| (*n, None)).collect();
        let keys: Vec<&str> = sig.params.iter().map(|(n, _)| *n).collect();
        for (i, arg) in self.args.iter().enumerate() {
            let index = match &arg.key {
                Some((k, span)) => keys.iter().position(|p| p == k).ok_or_else(|| {
                    let help = match suggest(k, keys.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None if keys.is_empty() => format!("`{}` takes no arguments", sig.name),
                        None => format!(
                            "its arguments are {}",
                            keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                        ),
                    };
                    error(*span, format!("`{}` has no argument `{k}`", sig.name), "unknown argument", help)
                })?,
                None if i < sig.positional => i,
                None => {
                    let help = match sig.positional {
                        0 => format!("name it: `{}(key: value)`", sig.name),
                        n => format!("`{}` takes {n} positional argument(s); name the others", sig.name),
                    };
                    return Err(error(
                        arg.span,
                        format!("too many positional arguments to `{}`", sig.name),
                        "here",
                        help,
                    ));
                }
            };
            let (name, want) = sig.params[index];
            if values[index].1.is_some() {
                return Err(error(arg.span, format!("`{name}` is given twice"), "second value", "keep one"));
            }
            if !want.accepts(&arg.value) {
                let found = match &arg.value {
                    Value::Symbol(w) => format!("`{w}`"),
                    v => v.kind().to_string(),
                };
                return Err(error(
                    arg.span,
                    format!("`{name}` of `{}` must be {}, found {found}", sig.name, want.describe()),
                    "wrong type",
                    format!("`{name}` takes {}", want.describe()),
                ));
            }
            values[index].1 = Some((arg.value.clone(), arg.span));
        }
        for r in sig.required {
            if values.iter().any(|(n, v)| n == r && v.is_none()) {
                return Err(error(
                    self.span,
                    format!("`{}` needs `{r}`", sig.name),
                    "missing argument",
                    format!("add `{r}: ...`"),
                ));
            }
        }
        Ok(Bound { values })
    }
}

impl Bound {
    fn get(&self, key: &str) -> Option<&(Value, Span)> {
        self.values.iter().find(|(n, _)| *n == key).and_then(|(_, v)| v.as_ref())
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.get(key).map(|(v, _)| v)
    }

    pub fn span(&self, key: &str) -> Option<Span> {
        self.get(key).map(|(_, s)| *s)
    }

    /// A number, with its span; `default` (and the call's span) when not given.
    pub fn num(&self, key: &str, default: f64, call: Span) -> (f64, Span) {
        match self.get(key) {
            Some((Value::Int(i), s)) => (*i as f64, *s),
            Some((Value::Float(x), s)) => (*x, *s),
            _ => (default, call),
        }
    }

    pub fn int(&self, key: &str) -> Option<(i64, Span)> {
        match self.get(key) {
            Some((Value::Int(i), s)) => Some((*i, *s)),
            _ => None,
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            Some((Value::Bool(b), _)) => *b,
            _ => default,
        }
    }

    pub fn word(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some((Value::Symbol(w), _)) => Some(w),
            _ => None,
        }
    }

    pub fn pair(&self, key: &str) -> Option<((f64, f64), Span)> {
        let num = |v: &Value| match v {
            Value::Int(i) => *i as f64,
            Value::Float(x) => *x,
            _ => f64::NAN,
        };
        match self.get(key) {
            Some((Value::Tuple(items), s)) if items.len() == 2 => Some(((num(&items[0]), num(&items[1])), *s)),
            _ => None,
        }
    }

    pub fn names(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some((Value::List(items), _)) => items
                .iter()
                .filter_map(|i| match i {
                    Value::Symbol(s) | Value::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Checks `ok`, else reports that `key` (at `span`) is out of range.
pub fn range(ok: bool, span: Span, key: &str, value: impl std::fmt::Display, expected: &str) -> Result<(), Error> {
    if ok {
        return Ok(());
    }
    Err(error(span, format!("`{key}` is {value}, out of range"), "out of range", format!("`{key}` must be {expected}")))
}
