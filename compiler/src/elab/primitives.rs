//! Primitive calls → checked arguments → Graph IR: `PRIMITIVES` is the one table of the
//! primitives `forward` can call, each with its signature (which arguments, passed how,
//! of which type, with which default) and its builder. Binding a call against the table
//! is where extra positionals, unknown or repeated keywords, missing arguments and
//! ill-typed values are rejected (at the argument), and the same table feeds
//! "did you mean" for unknown names; the builders (`builders`, `attention_moe`) then
//! read typed values and make `Op` nodes, whose shape rules check the shapes.

use super::forward::{member_name, Builder, Frame, RValue};
use super::value::Value;
use crate::error::{suggest, Error};
use crate::graph::dim::Dim;
use crate::graph::op::{Op, Reduce, Unary};
use crate::graph::types::DType;
use crate::graph::ValueId;
use modelc_grammar::ast::Span;
use modelc_grammar::Diagnostic;

/// One primitive: its name, its signature and how it is built.
pub(super) struct Primitive {
    pub name: &'static str,
    /// In positional order (keyword-only ones anywhere: order is for positionals only).
    pub params: &'static [Param],
    /// Keyword arguments beyond `params`, and their type: `rearrange`'s axis sizes.
    pub rest: Option<Ty>,
    pub build: Build,
}

/// One parameter of a primitive's signature.
pub(super) struct Param {
    pub name: &'static str,
    pub pass: Pass,
    pub ty: Ty,
    pub default: Default,
}

/// How an argument may be given.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Positional,
    Keyword,
    /// Either way: `dropout(x, 0.1)` or `dropout(x, p: 0.1)`.
    Either,
}

/// What an argument must be. Compile-time types are checked when the call is bound;
/// `Tensor` also takes a number (a scalar) and is checked when it is built.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Ty {
    Tensor,
    /// A list or tuple of tensors.
    Tensors,
    /// The route that `moe_route` returns.
    Route,
    Int,
    /// An integer of at least 1 (a count: `k`, `n`, a window).
    Positive,
    /// An integer of at least 0 (an amount: padding).
    Natural,
    /// A compile-time number, integer or float.
    Number,
    /// A finite number above 0 (a cap, a capacity factor).
    PositiveNumber,
    /// A number in [0, 1) (a probability that keeps something).
    Fraction,
    Bool,
    /// One axis: an integer, negative counting from the end.
    Axis,
    /// An axis or a tuple of axes.
    Axes,
    /// An integer or a dim bound by a signature (`T`).
    Dim,
    /// A list of dims: `[B, T, d]`.
    Shape,
    DType,
    Str,
    /// One of these words (`approx: tanh`).
    Word(&'static [&'static str]),
}

/// The value of an argument that is not given (or given as `none`).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Default {
    /// The argument must be given.
    Required,
    /// No value: the builder decides (all axes, no window, the full length).
    Absent,
    Int(i64),
    Number(f64),
    Bool(bool),
}

/// How a primitive becomes nodes: one elementwise op, one reduction, or a function.
pub(super) enum Build {
    Unary(Unary),
    Reduce(Reduce),
    Fn(BuildFn),
}

pub(super) type BuildFn = fn(&mut Builder<'_>, &Call, &Frame<'_>) -> Result<RValue, Error>;

const fn pos(name: &'static str, ty: Ty) -> Param {
    Param { name, pass: Pass::Positional, ty, default: Default::Required }
}

const fn opt_pos(name: &'static str, ty: Ty) -> Param {
    Param { name, pass: Pass::Positional, ty, default: Default::Absent }
}

const fn kw(name: &'static str, ty: Ty, default: Default) -> Param {
    Param { name, pass: Pass::Keyword, ty, default }
}

const fn either(name: &'static str, ty: Ty, default: Default) -> Param {
    Param { name, pass: Pass::Either, ty, default }
}

const X: Param = pos("x", Ty::Tensor);
const KEEPDIM: Param = kw("keepdim", Ty::Bool, Default::Bool(false));
const REDUCE: &[Param] = &[X, kw("axis", Ty::Axes, Default::Absent), KEEPDIM];
const LAST_AXIS: Param = kw("axis", Ty::Axis, Default::Int(-1));

const fn unary(name: &'static str, u: Unary) -> Primitive {
    Primitive { name, params: &[X], rest: None, build: Build::Unary(u) }
}

const fn reduce(name: &'static str, kind: Reduce) -> Primitive {
    Primitive { name, params: REDUCE, rest: None, build: Build::Reduce(kind) }
}

const fn prim(name: &'static str, params: &'static [Param], build: BuildFn) -> Primitive {
    Primitive { name, params, rest: None, build: Build::Fn(build) }
}

use super::attention_moe as am;
use super::builders as b;

/// Every primitive of `forward` (docs/language.md §8), in the order of that table.
pub(super) static PRIMITIVES: &[Primitive] = &[
    // ---- elementwise
    unary("exp", Unary::Exp),
    unary("log", Unary::Log),
    unary("sqrt", Unary::Sqrt),
    unary("rsqrt", Unary::Rsqrt),
    unary("tanh", Unary::Tanh),
    unary("erf", Unary::Erf),
    unary("sigmoid", Unary::Sigmoid),
    unary("sin", Unary::Sin),
    unary("cos", Unary::Cos),
    unary("abs", Unary::Abs),
    unary("relu", Unary::Relu),
    unary("silu", Unary::Silu),
    unary("neg", Unary::Neg),
    prim("gelu", &[X, kw("approx", Ty::Word(&["tanh"]), Default::Absent)], b::gelu),
    prim("softcap", &[X, pos("cap", Ty::PositiveNumber)], b::softcap),
    prim("cast", &[X, pos("dtype", Ty::DType)], b::cast),
    prim("pow", &[X, pos("y", Ty::Tensor)], b::pow),
    prim("where", &[pos("cond", Ty::Tensor), pos("a", Ty::Tensor), pos("b", Ty::Tensor)], b::where_),
    prim("dropout", &[X, either("p", Ty::Fraction, Default::Number(0.0))], b::dropout),
    // ---- reductions (`min`/`max` with two tensors are elementwise)
    reduce("sum", Reduce::Sum),
    reduce("mean", Reduce::Mean),
    reduce("var", Reduce::Var),
    reduce("logsumexp", Reduce::LogSumExp),
    prim("max", &[X, opt_pos("y", Ty::Tensor), kw("axis", Ty::Axes, Default::Absent), KEEPDIM], b::max),
    prim("min", &[X, opt_pos("y", Ty::Tensor), kw("axis", Ty::Axes, Default::Absent), KEEPDIM], b::min),
    prim("softmax", &[X, LAST_AXIS], b::softmax),
    prim("log_softmax", &[X, LAST_AXIS], b::log_softmax),
    // ---- contractions
    prim(
        "attention",
        &[
            pos("q", Ty::Tensor),
            pos("k", Ty::Tensor),
            pos("v", Ty::Tensor),
            kw("causal", Ty::Bool, Default::Bool(false)),
            kw("window", Ty::Positive, Default::Absent),
            kw("softcap", Ty::PositiveNumber, Default::Absent),
            kw("scale", Ty::Number, Default::Absent),
            kw("bias", Ty::Tensor, Default::Absent),
        ],
        am::attention,
    ),
    // ---- movement
    Primitive {
        name: "rearrange",
        params: &[X, pos("pattern", Ty::Str)],
        rest: Some(Ty::Dim),
        build: Build::Fn(b::rearrange),
    },
    prim("reshape", &[X, pos("shape", Ty::Shape)], b::reshape),
    prim("transpose", &[X, opt_pos("a", Ty::Axes), opt_pos("b", Ty::Axes)], b::transpose),
    prim("concat", &[pos("tensors", Ty::Tensors), kw("axis", Ty::Axis, Default::Int(0))], b::concat),
    prim("split", &[X, pos("n", Ty::Positive), LAST_AXIS], b::split),
    prim(
        "slice",
        &[
            X,
            kw("axis", Ty::Axis, Default::Int(0)),
            kw("start", Ty::Dim, Default::Int(0)),
            kw("end", Ty::Dim, Default::Absent),
        ],
        b::slice,
    ),
    prim("broadcast_to", &[X, pos("shape", Ty::Shape)], b::broadcast),
    prim("broadcast", &[X, pos("shape", Ty::Shape)], b::broadcast),
    prim(
        "pad",
        &[
            X,
            LAST_AXIS,
            kw("before", Ty::Natural, Default::Int(0)),
            kw("after", Ty::Natural, Default::Int(0)),
            kw("value", Ty::Number, Default::Number(0.0)),
        ],
        b::pad,
    ),
    // ---- indexing
    prim("arange", &[pos("start", Ty::Dim), opt_pos("end", Ty::Dim), opt_pos("step", Ty::Dim)], b::arange),
    prim("embedding", &[pos("table", Ty::Tensor), pos("ids", Ty::Tensor)], b::embedding),
    prim("gather", &[X, pos("index", Ty::Tensor), LAST_AXIS], b::gather),
    prim("scatter_add", &[X, pos("index", Ty::Tensor), pos("src", Ty::Tensor), LAST_AXIS], b::scatter_add),
    prim("one_hot", &[pos("ids", Ty::Tensor), either("n", Ty::Positive, Default::Required)], b::one_hot),
    prim("topk", &[X, either("k", Ty::Positive, Default::Required)], b::topk),
    prim("cumsum", &[X, LAST_AXIS], b::cumsum),
    // ---- losses
    prim(
        "cross_entropy",
        &[pos("logits", Ty::Tensor), pos("targets", Ty::Tensor), kw("ignore", Ty::Int, Default::Int(-100))],
        am::cross_entropy,
    ),
    // ---- mixture of experts
    prim(
        "moe_route",
        &[
            pos("logits", Ty::Tensor),
            kw("k", Ty::Positive, Default::Required),
            kw("capacity", Ty::PositiveNumber, Default::Absent),
            kw("noise", Ty::Number, Default::Number(0.0)),
        ],
        am::moe_route,
    ),
    prim("moe_dispatch", &[pos("route", Ty::Route), pos("x", Ty::Tensor)], am::moe_dispatch),
    prim("moe_combine", &[pos("route", Ty::Route), pos("y", Ty::Tensor)], am::moe_combine),
    prim("moe_balance", &[pos("route", Ty::Route)], am::moe_balance),
    prim("moe_zloss", &[pos("logits", Ty::Tensor)], am::moe_zloss),
    // ---- recurrence
    prim(
        "lstm",
        &[
            X,
            pos("w_ih", Ty::Tensor),
            pos("w_hh", Ty::Tensor),
            pos("bias", Ty::Tensor),
            kw("reverse", Ty::Bool, Default::Bool(false)),
        ],
        am::lstm,
    ),
];

impl Ty {
    /// What the type is, for messages: "`k` must be {this}".
    fn describe(self) -> String {
        match self {
            Ty::Tensor => "a tensor".into(),
            Ty::Tensors => "a list of tensors".into(),
            Ty::Route => "the route of `moe_route`".into(),
            Ty::Int => "an integer".into(),
            Ty::Positive => "a positive integer".into(),
            Ty::Natural => "a non-negative integer".into(),
            Ty::Number => "a number".into(),
            Ty::PositiveNumber => "a positive number".into(),
            Ty::Fraction => "a number in [0, 1)".into(),
            Ty::Bool => "`true` or `false`".into(),
            Ty::Axis => "an axis (a compile-time integer)".into(),
            Ty::Axes => "an axis or a tuple of axes (compile-time integers)".into(),
            Ty::Dim => "an integer or a dim".into(),
            Ty::Shape => "a shape list of dims, as in `[B, T, d]`".into(),
            Ty::DType => "a dtype: f32, f16, bf16, i32, i64 or bool".into(),
            Ty::Str => "a string".into(),
            Ty::Word(words) => {
                let words: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
                format!("`none` or {}", words.join(", "))
            }
        }
    }

    /// Whether a given value (not `none`) has this type. A `Tensor` is checked when built.
    fn accepts(self, v: &RValue) -> bool {
        let number = |v: &RValue| match v {
            RValue::Static(Value::Int(i)) => Some(*i as f64),
            RValue::Static(Value::Float(x)) => Some(*x),
            _ => None,
        };
        let int = |v: &RValue| match v {
            RValue::Static(Value::Int(i)) => Some(*i),
            _ => None,
        };
        match self {
            Ty::Tensor => true,
            Ty::Tensors => matches!(v, RValue::List(_) | RValue::Tuple(_)),
            Ty::Route => matches!(v, RValue::Route { .. }),
            Ty::Int | Ty::Axis => int(v).is_some(),
            Ty::Positive => int(v).is_some_and(|i| i >= 1),
            Ty::Natural => int(v).is_some_and(|i| i >= 0),
            Ty::Number => number(v).is_some(),
            Ty::PositiveNumber => number(v).is_some_and(|x| x > 0.0 && x.is_finite()),
            Ty::Fraction => number(v).is_some_and(|x| (0.0..1.0).contains(&x)),
            Ty::Bool => matches!(v, RValue::Static(Value::Bool(_))),
            Ty::Axes => static_ints(v).is_some(),
            Ty::Dim => matches!(v, RValue::Static(Value::Int(_)) | RValue::Dim(_)),
            Ty::Shape => shape_of(v).is_some(),
            Ty::DType => matches!(v, RValue::Static(Value::Symbol(s)) if DType::parse(s).is_some()),
            Ty::Str => matches!(v, RValue::Static(Value::Str(_))),
            Ty::Word(words) => matches!(v, RValue::Static(Value::Symbol(s)) if words.contains(&s.as_str())),
        }
    }
}

/// What a value is, for messages: "found {this}".
fn found(v: &RValue) -> String {
    match v {
        RValue::Tensor(_) => "a tensor".into(),
        RValue::Static(Value::Int(i)) => format!("{i}"),
        RValue::Static(Value::Float(x)) => format!("{x:?}"),
        RValue::Static(Value::Symbol(s)) => format!("`{s}`"),
        RValue::Static(Value::Str(s)) => format!("the string {s:?}"),
        RValue::Static(other) => other.kind().into(),
        RValue::Dim(d) => format!("the dim {d}"),
        RValue::Tuple(_) | RValue::List(_) => "a tuple or list".into(),
        RValue::Route { .. } => "a route".into(),
    }
}

/// A primitive call with its arguments bound to the signature.
pub(super) struct Call {
    pub prim: &'static Primitive,
    /// The whole call, where a missing argument is reported.
    pub span: Span,
    /// Each parameter's value and where it was written, in `prim.params` order; `None`
    /// when not given (or given as `none` where there is a default).
    values: Vec<Option<(RValue, Span)>>,
    /// The keyword arguments `rest` takes, in call order.
    pub rest: Vec<(String, RValue, Span)>,
}

impl Call {
    fn index(&self, name: &str) -> Option<usize> {
        self.prim.params.iter().position(|p| p.name == name)
    }

    /// The value given for `name`, if any.
    pub fn get(&self, name: &str) -> Option<(&RValue, Span)> {
        let i = self.index(name)?;
        self.values[i].as_ref().map(|(v, s)| (v, *s))
    }

    /// Where `name` was written, or the call when it was not.
    pub fn span_of(&self, name: &str) -> Span {
        self.get(name).map_or(self.span, |(_, s)| s)
    }

    fn default(&self, name: &str) -> Default {
        self.index(name).map_or(Default::Absent, |i| self.prim.params[i].default)
    }

    /// An `Int`-like argument, or its default; `None` when absent without one.
    pub fn int(&self, name: &str) -> Option<i64> {
        match (self.get(name), self.default(name)) {
            (Some((RValue::Static(Value::Int(i)), _)), _) => Some(*i),
            (None, Default::Int(d)) => Some(d),
            _ => None,
        }
    }

    /// A `Number`-like argument (integers widen), or its default.
    pub fn number(&self, name: &str) -> Option<f64> {
        match (self.get(name), self.default(name)) {
            (Some((RValue::Static(Value::Int(i)), _)), _) => Some(*i as f64),
            (Some((RValue::Static(Value::Float(x)), _)), _) => Some(*x),
            (None, Default::Number(d)) => Some(d),
            _ => None,
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        match (self.get(name), self.default(name)) {
            (Some((RValue::Static(Value::Bool(b)), _)), _) => *b,
            (None, Default::Bool(d)) => d,
            _ => false,
        }
    }

    /// A `Dim` argument (an integer or a bound dim), or its default.
    pub fn dim(&self, name: &str) -> Option<Dim> {
        match self.get(name) {
            Some((RValue::Static(Value::Int(i)), _)) => Some(Dim::constant(*i)),
            Some((RValue::Dim(d), _)) => Some(d.clone()),
            _ => self.int(name).map(Dim::constant),
        }
    }

    /// A `Shape` argument.
    pub fn shape(&self, name: &str) -> Option<Vec<Dim>> {
        self.get(name).and_then(|(v, _)| shape_of(v))
    }
}

impl Builder<'_> {
    /// A call of the primitive `name`: bound against its signature, then built. An
    /// unknown name gets "did you mean" over the primitives and the block's members.
    pub(super) fn primitive(
        &mut self,
        name: &str,
        name_span: Span,
        args: &[(Option<String>, RValue, Span)],
        frame: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        let Some(prim) = PRIMITIVES.iter().find(|p| p.name == name) else {
            let mut d = Diagnostic::error(format!("unknown block or primitive `{name}`"), name_span)
                .with_label("cannot be called");
            let mut names: Vec<&str> = PRIMITIVES.iter().map(|p| p.name).collect();
            names.extend(frame.instance.members.iter().filter_map(member_name));
            d = d.with_help(match suggest(name, names.into_iter()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "call a sub-block declared in this block, or a primitive".into(),
            });
            return Err(self.err(frame, d));
        };
        let call = self.bind(prim, args, frame, span)?;
        match prim.build {
            Build::Unary(u) => {
                let x = self.tensor_arg(&call, "x", frame)?;
                Ok(RValue::Tensor(self.node(Op::Unary(u), vec![x], frame, span)?))
            }
            Build::Reduce(kind) => b::reduction(self, &call, frame, kind),
            Build::Fn(build) => build(self, &call, frame),
        }
    }

    /// Matches the arguments to `prim`'s signature: positionals in order, keywords by
    /// name; then every given value is checked against its type and every required
    /// parameter must have one. Anything else is an error, so that a misspelt option
    /// never silently does nothing.
    fn bind(
        &self,
        prim: &'static Primitive,
        args: &[(Option<String>, RValue, Span)],
        frame: &Frame,
        span: Span,
    ) -> Result<Call, Error> {
        let name = prim.name;
        let positional: Vec<usize> = (0..prim.params.len()).filter(|&i| prim.params[i].pass != Pass::Keyword).collect();
        let keywords: Vec<&str> = prim.params.iter().filter(|p| p.pass != Pass::Positional).map(|p| p.name).collect();
        let mut call = Call { prim, span, values: vec![None; prim.params.len()], rest: Vec::new() };
        let mut next = 0;
        for (key, value, vspan) in args {
            let i = match key {
                None => {
                    let Some(&i) = positional.get(next) else {
                        return Err(self.err(
                            frame,
                            Diagnostic::error(
                                format!("`{name}` takes at most {} positional argument(s)", positional.len()),
                                *vspan,
                            )
                            .with_label("extra argument"),
                        ));
                    };
                    next += 1;
                    i
                }
                Some(key) => match prim.params.iter().position(|p| p.name == key && p.pass != Pass::Positional) {
                    Some(i) => i,
                    None if prim.rest.is_some() => {
                        self.check_type(prim, key, prim.rest.unwrap_or(Ty::Tensor), value, *vspan, frame)?;
                        if call.rest.iter().any(|(k, _, _)| k == key) {
                            return Err(self.given_twice(name, key, *vspan, frame));
                        }
                        call.rest.push((key.clone(), value.clone(), *vspan));
                        continue;
                    }
                    None => {
                        let mut d = Diagnostic::error(format!("`{name}` has no option `{key}`"), *vspan)
                            .with_label("unknown keyword argument");
                        d = d.with_help(match suggest(key, keywords.iter().copied()) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None if keywords.is_empty() => format!("`{name}` takes no keyword arguments"),
                            None => format!("its options are {}", keywords.join(", ")),
                        });
                        return Err(self.err(frame, d));
                    }
                },
            };
            let param = &prim.params[i];
            if call.values[i].is_some() {
                return Err(self.given_twice(name, param.name, *vspan, frame));
            }
            // `none` for a parameter with a default means the default.
            if matches!(value, RValue::Static(Value::None)) && param.default != Default::Required {
                continue;
            }
            self.check_type(prim, param.name, param.ty, value, *vspan, frame)?;
            call.values[i] = Some((value.clone(), *vspan));
        }
        for (i, p) in prim.params.iter().enumerate() {
            if p.default == Default::Required && call.values[i].is_none() {
                let (message, label) = match p.pass {
                    Pass::Keyword => (format!("`{name}` needs `{}:` ({})", p.name, p.ty.describe()), "missing option"),
                    _ => (
                        format!(
                            "`{name}` needs argument {} (`{}`)",
                            positional.iter().position(|&j| j == i).unwrap_or(i) + 1,
                            p.name
                        ),
                        "missing argument",
                    ),
                };
                return Err(self.err(frame, Diagnostic::error(message, span).with_label(label)));
            }
        }
        Ok(call)
    }

    fn check_type(
        &self,
        prim: &Primitive,
        param: &str,
        ty: Ty,
        value: &RValue,
        span: Span,
        frame: &Frame,
    ) -> Result<(), Error> {
        if ty.accepts(value) {
            return Ok(());
        }
        Err(self.err(
            frame,
            Diagnostic::error(
                format!("`{}` needs `{param}` to be {}, found {}", prim.name, ty.describe(), found(value)),
                span,
            )
            .with_label(format!("not {}", ty.describe())),
        ))
    }

    fn given_twice(&self, prim: &str, param: &str, span: Span, frame: &Frame) -> Error {
        self.err(frame, Diagnostic::error(format!("`{prim}` gets `{param}` twice"), span).with_label("second value"))
    }

    /// A tensor argument: tensors as they are, numbers as scalars (activation dtype).
    pub(super) fn tensor_arg(&mut self, call: &Call, name: &str, frame: &Frame) -> Result<ValueId, Error> {
        match call.get(name) {
            Some((v, s)) => self.tensor_like(v.clone(), None, frame, s),
            None => Err(self.err(
                frame,
                Diagnostic::error(format!("`{}` needs `{name}`", call.prim.name), call.span)
                    .with_label("missing argument"),
            )),
        }
    }

    /// An `Axes` argument normalised against `rank`; all axes when absent.
    pub(super) fn axes_arg(&self, call: &Call, name: &str, rank: usize, frame: &Frame) -> Result<Vec<usize>, Error> {
        let raw = match call.get(name) {
            Some((v, _)) => static_ints(v).unwrap_or_default(),
            None => match call.int(name) {
                Some(d) => vec![d],
                None => (0..rank as i64).collect(),
            },
        };
        let span = call.span_of(name);
        let axes: Vec<usize> =
            raw.iter().map(|&a| self.normalise_axis(a, rank, span, frame)).collect::<Result<_, _>>()?;
        if let Some(i) = (1..axes.len()).find(|&i| axes[..i].contains(&axes[i])) {
            return Err(self.err(
                frame,
                Diagnostic::error(format!("`{}` gets axis {} twice, in {raw:?}", call.prim.name, axes[i]), span)
                    .with_label(format!("for rank {rank}, these name axis {} twice", axes[i])),
            ));
        }
        Ok(axes)
    }

    /// An `Axis` argument normalised against `rank`; a scalar has none (builders index
    /// the shape with it).
    pub(super) fn axis_arg(&self, call: &Call, name: &str, rank: usize, frame: &Frame) -> Result<usize, Error> {
        let a = call.int(name).unwrap_or(0);
        let span = call.span_of(name);
        if rank == 0 {
            return Err(self.err(
                frame,
                Diagnostic::error(
                    format!("`{}` needs a tensor with an axis {a}, found a scalar", call.prim.name),
                    span,
                )
                .with_label("no axes"),
            ));
        }
        self.normalise_axis(a, rank, span, frame)
    }

    /// `a` counted from the end when negative; out of range is an error.
    fn normalise_axis(&self, a: i64, rank: usize, span: Span, frame: &Frame) -> Result<usize, Error> {
        let r = rank as i64;
        // A scalar's only "axis" is 0, as reductions over all axes of a scalar use it.
        if a < -r || a >= r.max(1) {
            return Err(self.err(
                frame,
                Diagnostic::error(format!("axis {a} is out of range for rank {rank}"), span).with_label("here"),
            ));
        }
        Ok(if a < 0 { (a + r) as usize } else { a as usize })
    }
}

/// Integers known at compile time: `1`, `(0, 1)` or `[0, 1]`, written inline or bound
/// to a name.
pub(super) fn static_ints(v: &RValue) -> Option<Vec<i64>> {
    let one = |v: &Value| if let Value::Int(i) = v { Some(*i) } else { None };
    match v {
        RValue::Static(Value::Int(i)) => Some(vec![*i]),
        RValue::Static(Value::Tuple(items) | Value::List(items)) => items.iter().map(one).collect(),
        RValue::Tuple(items) | RValue::List(items) => items
            .iter()
            .map(|i| match i {
                RValue::Static(v) => one(v),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A shape written as a list of dims and integers: `[B, T, d]`.
fn shape_of(v: &RValue) -> Option<Vec<Dim>> {
    match v {
        RValue::List(items) | RValue::Tuple(items) => items
            .iter()
            .map(|v| match v {
                RValue::Dim(d) => Some(d.clone()),
                RValue::Static(Value::Int(i)) => Some(Dim::constant(*i)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}
