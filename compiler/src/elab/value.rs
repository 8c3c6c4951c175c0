//! Compile-time values: what block parameters, constants, dims and recipe entries
//! evaluate to before any tensor exists.

use crate::modules::ItemRef;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    None,
    /// An enum type, as in `Norm` of `Norm.pre`.
    EnumType(ItemRef),
    /// A variant: its enum's name and its own.
    Variant {
        enum_name: String,
        variant: String,
    },
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A block or model not yet called (recipes: `model = Llama`).
    Block(ItemRef),
    /// A configured model: `Llama(d: 64)` in a recipe.
    Instance {
        block: ItemRef,
        args: Vec<(Option<String>, Value)>,
    },
    /// A bare word in a recipe that names a runtime choice (`causal_lm`, `bytes`).
    Symbol(String),
    /// A recipe constructor such as `adamw(lr: 3e-4)` or `every(200)`.
    Call {
        name: String,
        args: Vec<(Option<String>, Value)>,
    },
}

impl Value {
    /// The type's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::None => "none",
            Value::EnumType(_) => "an enum type",
            Value::Variant { .. } => "an enum variant",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Block(_) => "a block",
            Value::Instance { .. } => "a model",
            Value::Symbol(_) => "a name",
            Value::Call { .. } => "a call",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, items: &[Value]| -> fmt::Result {
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{v}")?;
            }
            Ok(())
        };
        let args = |f: &mut fmt::Formatter<'_>, args: &[(Option<String>, Value)]| -> fmt::Result {
            for (i, (k, v)) in args.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                match k {
                    Some(k) => write!(f, "{k}: {v}")?,
                    None => write!(f, "{v}")?,
                }
            }
            Ok(())
        };
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::None => write!(f, "none"),
            Value::EnumType(_) => write!(f, "<enum>"),
            Value::Variant { enum_name, variant } => write!(f, "{enum_name}.{variant}"),
            Value::Tuple(items) => {
                write!(f, "(")?;
                list(f, items)?;
                write!(f, "{})", if items.len() == 1 { "," } else { "" })
            }
            Value::List(items) => {
                write!(f, "[")?;
                list(f, items)?;
                write!(f, "]")
            }
            Value::Block(_) => write!(f, "<block>"),
            Value::Instance { args: a, .. } => {
                write!(f, "<model>(")?;
                args(f, a)?;
                write!(f, ")")
            }
            Value::Symbol(s) => write!(f, "{s}"),
            Value::Call { name, args: a } => {
                write!(f, "{name}(")?;
                args(f, a)?;
                write!(f, ")")
            }
        }
    }
}
