//! Primitive calls → Graph IR nodes: each primitive's arguments are checked against its
//! signature, then built into `Op` nodes whose shape rule checks the shapes.

use super::einops;
use super::forward::{member_name, Builder, Frame, RValue};
use super::value::Value;
use crate::error::{suggest, Error};
use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Op, Reduce, Unary};
use crate::graph::types::{DType, TensorType};
use crate::graph::{DimDef, ValueId};
use modelc_grammar::ast::Span;
use modelc_grammar::Diagnostic;
use std::collections::HashMap;

impl Builder<'_> {
    /// The capacity `ceil(cf · k · N / E)` as a dim: a constant when `N` is, otherwise
    /// a named dim whose formula the graph records.
    pub(super) fn capacity_dim(&mut self, cf: f64, k: i64, n: &Dim, e: &Dim) -> Dim {
        if let (Some(n), Some(e)) = (n.as_constant(), e.as_constant()) {
            return Dim::constant((cf * k as f64 * n as f64 / e as f64).ceil() as i64);
        }
        let same = |d: &&DimDef| d.capacity == cf && d.k == k && d.tokens == *n && d.experts == *e;
        if let Some(def) = self.graph.dim_defs.iter().find(same) {
            return Dim::symbol(&def.name);
        }
        let name = format!("C{}", self.graph.dim_defs.len());
        self.graph.dim_defs.push(DimDef { name: name.clone(), capacity: cf, k, tokens: n.clone(), experts: e.clone() });
        Dim::symbol(&name)
    }

    pub(super) fn primitive(
        &mut self,
        name: &str,
        name_span: Span,
        args: &[(Option<String>, RValue, Span)],
        frame: &mut Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        let pos: Vec<&(Option<String>, RValue, Span)> = args.iter().filter(|a| a.0.is_none()).collect();
        if let Some((_, max_pos, names)) = SIGNATURES.iter().find(|(n, _, _)| *n == name) {
            if pos.len() > *max_pos {
                return Err(self.err(
                    frame,
                    Diagnostic::error(
                        format!("`{name}` takes at most {max_pos} positional argument(s)"),
                        pos[*max_pos].2,
                    )
                    .with_label("extra argument"),
                ));
            }
            for (key, _, kspan) in args.iter().filter(|a| a.0.is_some()) {
                let key = key.as_deref().unwrap_or_default();
                if !names.contains(&key) && !names.contains(&"*") {
                    let mut d = Diagnostic::error(format!("`{name}` has no option `{key}`"), *kspan)
                        .with_label("unknown keyword argument");
                    d = d.with_help(match suggest(key, names.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None if names.is_empty() => format!("`{name}` takes no keyword arguments"),
                        None => format!("its options are {}", names.join(", ")),
                    });
                    return Err(self.err(frame, d));
                }
            }
        }
        let named = |key: &str| args.iter().find(|a| a.0.as_deref() == Some(key)).map(|a| (&a.1, a.2));
        let tensor_arg = |b: &mut Self, i: usize, frame: &Frame| -> Result<ValueId, Error> {
            let a = pos.get(i).ok_or_else(|| {
                b.err(
                    frame,
                    Diagnostic::error(format!("`{name}` needs argument {}", i + 1), span)
                        .with_label("missing argument"),
                )
            })?;
            b.tensor_like(a.1.clone(), None, frame, a.2)
        };
        let axis_of = |b: &Self,
                       v: Option<(&RValue, Span)>,
                       rank: usize,
                       frame: &Frame,
                       default: Option<i64>|
         -> Result<Vec<usize>, Error> {
            let raw: Vec<i64> = match v {
                None => match default {
                    Some(d) => vec![d],
                    None => (0..rank as i64).collect(),
                },
                Some((v, s)) => match static_ints(v) {
                    Some(axes) => axes,
                    None => {
                        return Err(b.err(
                            frame,
                            Diagnostic::error("an axis is a compile-time integer or tuple of them", s)
                                .with_label("here"),
                        ))
                    }
                },
            };
            raw.into_iter()
                .map(|a| {
                    let r = rank as i64;
                    if a < -r || a >= r.max(1) {
                        return Err(b.err(
                            frame,
                            Diagnostic::error(format!("axis {a} is out of range for rank {rank}"), span)
                                .with_label("here"),
                        ));
                    }
                    Ok(if a < 0 { (a + r) as usize } else { a as usize })
                })
                .collect()
        };
        let static_f64 = |v: Option<(&RValue, Span)>| -> Option<f64> {
            match v {
                Some((RValue::Static(Value::Float(x)), _)) => Some(*x),
                Some((RValue::Static(Value::Int(i)), _)) => Some(*i as f64),
                _ => None,
            }
        };
        let unary = |u: Unary| Some(u);
        let simple = match name {
            "exp" => unary(Unary::Exp),
            "log" => unary(Unary::Log),
            "sqrt" => unary(Unary::Sqrt),
            "rsqrt" => unary(Unary::Rsqrt),
            "tanh" => unary(Unary::Tanh),
            "erf" => unary(Unary::Erf),
            "sigmoid" => unary(Unary::Sigmoid),
            "sin" => unary(Unary::Sin),
            "cos" => unary(Unary::Cos),
            "abs" => unary(Unary::Abs),
            "relu" => unary(Unary::Relu),
            "silu" => unary(Unary::Silu),
            "neg" => unary(Unary::Neg),
            "gelu" => match named("approx") {
                None | Some((RValue::Static(Value::None), _)) => unary(Unary::Gelu),
                Some((RValue::Static(Value::Symbol(t)), _)) if t == "tanh" => unary(Unary::GeluTanh),
                Some((_, s)) => {
                    return Err(self
                        .err(frame, Diagnostic::error("`approx:` is `none` (exact) or `tanh`", s).with_label("here")))
                }
            },
            _ => None,
        };
        if let Some(u) = simple {
            let x = tensor_arg(self, 0, frame)?;
            return Ok(RValue::Tensor(self.node(Op::Unary(u), vec![x], frame, span)?));
        }
        match name {
            "softcap" => {
                let x = tensor_arg(self, 0, frame)?;
                let cap = static_f64(pos.get(1).map(|a| (&a.1, a.2)))
                    .ok_or_else(|| self.err(frame, Diagnostic::error("`softcap` needs a number cap", span)))?;
                Ok(RValue::Tensor(self.node(Op::Softcap { cap }, vec![x], frame, span)?))
            }
            "dropout" => {
                let x = tensor_arg(self, 0, frame)?;
                let p = static_f64(pos.get(1).map(|a| (&a.1, a.2)).or(named("p"))).unwrap_or(0.0);
                if p == 0.0 {
                    return Ok(RValue::Tensor(x));
                }
                // Each dropout gets its own mask stream, numbered in graph order.
                let key = self.graph.nodes.iter().filter(|n| matches!(n.op, Op::Dropout { .. })).count() as u64;
                Ok(RValue::Tensor(self.node(Op::Dropout { p, key }, vec![x], frame, span)?))
            }
            "cast" => {
                let x = tensor_arg(self, 0, frame)?;
                let to = match pos.get(1).map(|a| &a.1) {
                    Some(RValue::Static(Value::Symbol(s))) => DType::parse(s),
                    _ => None,
                };
                let to = to.ok_or_else(|| {
                    self.err(
                        frame,
                        Diagnostic::error("`cast` needs a dtype: f32, f16, bf16, i32, i64 or bool", span)
                            .with_label("here"),
                    )
                })?;
                Ok(RValue::Tensor(self.node(Op::Cast { to }, vec![x], frame, span)?))
            }
            "min" | "max" if pos.len() == 2 => {
                let a = tensor_arg(self, 0, frame)?;
                let dt = self.ty(a).dtype;
                let b = self.tensor_like(pos[1].1.clone(), Some(dt), frame, pos[1].2)?;
                let op = if name == "min" { Binary::Min } else { Binary::Max };
                Ok(RValue::Tensor(self.node(Op::Binary(op), vec![a, b], frame, span)?))
            }
            "sum" | "mean" | "max" | "min" | "var" | "logsumexp" => {
                let x = tensor_arg(self, 0, frame)?;
                let rank = self.ty(x).rank();
                let axes = axis_of(self, named("axis"), rank, frame, None)?;
                let keepdim = matches!(named("keepdim"), Some((RValue::Static(Value::Bool(true)), _)));
                let kind = match name {
                    "sum" => Reduce::Sum,
                    "mean" => Reduce::Mean,
                    "max" => Reduce::Max,
                    "min" => Reduce::Min,
                    "var" => Reduce::Var,
                    _ => Reduce::LogSumExp,
                };
                Ok(RValue::Tensor(self.node(Op::Reduce { kind, axes, keepdim }, vec![x], frame, span)?))
            }
            "softmax" | "log_softmax" => {
                let x = tensor_arg(self, 0, frame)?;
                let rank = self.ty(x).rank();
                let axis = axis_of(self, named("axis"), rank, frame, Some(-1))?[0];
                let op = if name == "softmax" { Op::Softmax { axis } } else { Op::LogSoftmax { axis } };
                Ok(RValue::Tensor(self.node(op, vec![x], frame, span)?))
            }
            "where" => {
                let c = tensor_arg(self, 0, frame)?;
                let a = pos.get(1).map(|a| a.1.clone()).unwrap_or(RValue::Static(Value::None));
                let b = pos.get(2).map(|a| a.1.clone()).unwrap_or(RValue::Static(Value::None));
                let dt = match (&a, &b) {
                    (RValue::Tensor(t), _) | (_, RValue::Tensor(t)) => Some(self.ty(*t).dtype),
                    _ => None,
                };
                let a = self.tensor_like(a, dt, frame, span)?;
                let b = self.tensor_like(b, dt, frame, span)?;
                Ok(RValue::Tensor(self.node(Op::Where, vec![c, a, b], frame, span)?))
            }
            "arange" => {
                let dims: Vec<Dim> = pos
                    .iter()
                    .map(|a| match &a.1 {
                        RValue::Dim(d) => Ok(d.clone()),
                        RValue::Static(Value::Int(i)) => Ok(Dim::constant(*i)),
                        _ => Err(self
                            .err(frame, Diagnostic::error("`arange` takes dims or integers", a.2).with_label("here"))),
                    })
                    .collect::<Result<_, _>>()?;
                match dims.as_slice() {
                    [n] => Ok(RValue::Tensor(self.graph.push(
                        Op::Arange { n: n.clone() },
                        Vec::new(),
                        TensorType::new(DType::I32, vec![n.clone()]),
                        &frame.prefix,
                    ))),
                    [start, end] | [start, end, _] => {
                        let step = dims.get(2).and_then(|d| d.as_constant()).unwrap_or(1);
                        let len = end.sub(start);
                        if len.as_constant().is_some_and(|l| l < 0) || step <= 0 {
                            return Err(self.err(
                                frame,
                                Diagnostic::error(
                                    format!("`arange({start}, {end}, {step})` is empty or runs backwards"),
                                    span,
                                )
                                .with_label("here"),
                            ));
                        }
                        let n = match len.as_constant() {
                            Some(l) if step > 0 => Dim::constant((l + step - 1) / step),
                            _ => len.div_exact(&Dim::constant(step)).ok_or_else(|| {
                                self.err(
                                    frame,
                                    Diagnostic::error("`arange` length is not a whole number of steps", span),
                                )
                            })?,
                        };
                        let base = self.graph.push(
                            Op::Arange { n: n.clone() },
                            Vec::new(),
                            TensorType::new(DType::I32, vec![n]),
                            &frame.prefix,
                        );
                        let step_v = self.scalar(step as f64, DType::I32, frame);
                        let scaled = self.node(Op::Binary(Binary::Mul), vec![base, step_v], frame, span)?;
                        let out = match start.as_constant() {
                            Some(0) => scaled,
                            _ => {
                                let s = self.tensor_like(RValue::Dim(start.clone()), Some(DType::I32), frame, span)?;
                                self.node(Op::Binary(Binary::Add), vec![scaled, s], frame, span)?
                            }
                        };
                        Ok(RValue::Tensor(out))
                    }
                    _ => Err(self.err(
                        frame,
                        Diagnostic::error("`arange` takes (n) or (start, end[, step])", span).with_label("here"),
                    )),
                }
            }
            "embedding" => {
                let table = tensor_arg(self, 0, frame)?;
                let ids = tensor_arg(self, 1, frame)?;
                Ok(RValue::Tensor(self.node(Op::Embedding, vec![table, ids], frame, span)?))
            }
            "concat" => {
                let items = match pos.first().map(|a| &a.1) {
                    Some(RValue::List(items) | RValue::Tuple(items)) => items.clone(),
                    _ => {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("`concat` takes a list of tensors", span).with_label("here"),
                        ))
                    }
                };
                let mut ids = Vec::new();
                for i in items {
                    ids.push(self.tensor_like(i, None, frame, span)?);
                }
                let rank = ids.first().map_or(0, |t| self.ty(*t).rank());
                let axis = axis_of(self, named("axis"), rank, frame, Some(0))?[0];
                Ok(RValue::Tensor(self.node(Op::Concat { axis }, ids, frame, span)?))
            }
            "split" => {
                let x = tensor_arg(self, 0, frame)?;
                let parts = match pos.get(1).map(|a| &a.1) {
                    Some(RValue::Static(Value::Int(n))) if *n > 0 => *n,
                    _ => {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("`split(x, n, axis:)` needs a positive count n", span).with_label("here"),
                        ))
                    }
                };
                let rank = self.ty(x).rank();
                let axis = axis_of(self, named("axis"), rank, frame, Some(-1))?[0];
                let len = self.ty(x).shape[axis].clone();
                let piece = len.div_exact(&Dim::constant(parts)).ok_or_else(|| {
                    self.err(
                        frame,
                        Diagnostic::error(format!("cannot split {len} into {parts} equal parts"), span)
                            .with_label("uneven split"),
                    )
                })?;
                let mut out = Vec::new();
                for i in 0..parts {
                    let start = piece.mul(&Dim::constant(i));
                    let end = piece.mul(&Dim::constant(i + 1));
                    out.push(RValue::Tensor(self.node(Op::Slice { axis, start, end }, vec![x], frame, span)?));
                }
                Ok(RValue::Tuple(out))
            }
            "slice" => {
                let x = tensor_arg(self, 0, frame)?;
                let rank = self.ty(x).rank();
                let axis = axis_of(self, named("axis"), rank, frame, Some(0))?[0];
                let bound = |v: Option<(&RValue, Span)>, default: Dim| -> Option<Dim> {
                    match v {
                        None => Some(default),
                        Some((RValue::Static(Value::Int(i)), _)) => Some(Dim::constant(*i)),
                        Some((RValue::Dim(d), _)) => Some(d.clone()),
                        _ => None,
                    }
                };
                let len = self.ty(x).shape[axis].clone();
                let (Some(start), Some(end)) = (bound(named("start"), Dim::constant(0)), bound(named("end"), len))
                else {
                    return Err(self.err(
                        frame,
                        Diagnostic::error("`slice` bounds are integers or dims", span).with_label("here"),
                    ));
                };
                Ok(RValue::Tensor(self.node(Op::Slice { axis, start, end }, vec![x], frame, span)?))
            }
            "rearrange" => {
                let x = tensor_arg(self, 0, frame)?;
                let pattern = match pos.get(1).map(|a| &a.1) {
                    Some(RValue::Static(Value::Str(s))) => s.clone(),
                    _ => {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("`rearrange` needs an einops pattern string", span).with_label("here"),
                        ))
                    }
                };
                let pattern_span = pos.get(1).map_or(span, |a| a.2);
                let mut sizes = HashMap::new();
                for (k, v, s) in args.iter().filter(|a| a.0.is_some()) {
                    let d = match v {
                        RValue::Static(Value::Int(i)) => Dim::constant(*i),
                        RValue::Dim(d) => d.clone(),
                        _ => {
                            return Err(self.err(
                                frame,
                                Diagnostic::error("an axis size is an integer or a dim", *s).with_label("here"),
                            ))
                        }
                    };
                    sizes.insert(k.clone().unwrap_or_default(), d);
                }
                let ty = self.ty(x).clone();
                let plan = einops::plan(&pattern, &ty.shape, &sizes).map_err(|why| {
                    self.err(
                        frame,
                        Diagnostic::error(format!("{why} (input is {})", ty.shape_text()), pattern_span)
                            .with_label("in this pattern"),
                    )
                })?;
                let mut v = x;
                if plan.split != ty.shape {
                    v = self.node(Op::Reshape { shape: plan.split.clone() }, vec![v], frame, span)?;
                }
                if plan.perm.iter().enumerate().any(|(i, p)| i != *p) {
                    v = self.node(Op::Transpose { perm: plan.perm.clone() }, vec![v], frame, span)?;
                }
                if self.ty(v).shape != plan.output {
                    v = self.node(Op::Reshape { shape: plan.output.clone() }, vec![v], frame, span)?;
                }
                Ok(RValue::Tensor(v))
            }
            "attention" => {
                let q = tensor_arg(self, 0, frame)?;
                let k = tensor_arg(self, 1, frame)?;
                let v = tensor_arg(self, 2, frame)?;
                let causal = matches!(named("causal"), Some((RValue::Static(Value::Bool(true)), _)));
                let window = match named("window") {
                    Some((RValue::Static(Value::Int(w)), _)) => Some(*w),
                    _ => None,
                };
                let softcap = static_f64(named("softcap"));
                let hd = self.ty(q).shape.last().and_then(|d| d.as_constant()).unwrap_or(1);
                let scale = static_f64(named("scale")).unwrap_or(1.0 / (hd as f64).sqrt());
                let mut ids = vec![q, k, v];
                let has_bias = match named("bias") {
                    None | Some((RValue::Static(Value::None), _)) => false,
                    Some((b, s)) => {
                        ids.push(self.tensor_like(b.clone(), None, frame, s)?);
                        true
                    }
                };
                Ok(RValue::Tensor(self.node(
                    Op::Attention { causal, window, softcap, scale, has_bias },
                    ids,
                    frame,
                    span,
                )?))
            }
            "moe_route" => {
                let logits = tensor_arg(self, 0, frame)?;
                let k = match named("k") {
                    Some((RValue::Static(Value::Int(k)), _)) => *k,
                    _ => {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("`moe_route` needs `k:` as an integer", span).with_label("here"),
                        ))
                    }
                };
                let noise = static_f64(named("noise")).unwrap_or(0.0);
                let lt = self.ty(logits).clone();
                if lt.rank() != 2 {
                    return Err(self.err(
                        frame,
                        Diagnostic::error(
                            format!("`moe_route` takes router logits [N, E], found {}", lt.shape_text()),
                            span,
                        )
                        .with_label("here"),
                    ));
                }
                let capacity = match static_f64(named("capacity")) {
                    // Dropless: an expert may take every token.
                    None => lt.shape[0].clone(),
                    Some(cf) => self.capacity_dim(cf, k, &lt.shape[0], &lt.shape[1]),
                };
                // Noisy top-k gating: the route (and its gradient) sees the noisy logits; the
                // balance and z-losses keep the clean ones.
                let gated = if noise > 0.0 {
                    let key = self.graph.nodes.iter().filter(|n| matches!(n.op, Op::Noise { .. })).count() as u64;
                    self.node(Op::Noise { std: noise, key }, vec![logits], frame, span)?
                } else {
                    logits
                };
                let combine = self.node(Op::MoeRoute { k, capacity }, vec![gated], frame, span)?;
                Ok(RValue::Route { combine, logits, k })
            }
            "moe_dispatch" | "moe_combine" | "moe_balance" => {
                let Some(RValue::Route { combine, logits, k }) = pos.first().map(|a| a.1.clone()) else {
                    return Err(self.err(
                        frame,
                        Diagnostic::error(format!("`{name}` takes the route of `moe_route` first"), span)
                            .with_label("here"),
                    ));
                };
                let out = match name {
                    "moe_balance" => self.node(Op::MoeBalance { k }, vec![logits, combine], frame, span)?,
                    _ => {
                        let x = tensor_arg(self, 1, frame)?;
                        let op = if name == "moe_dispatch" { Op::MoeDispatch } else { Op::MoeCombine };
                        self.node(op, vec![combine, x], frame, span)?
                    }
                };
                Ok(RValue::Tensor(out))
            }
            "pow" => {
                let a = tensor_arg(self, 0, frame)?;
                let dt = self.ty(a).dtype;
                let b = pos
                    .get(1)
                    .ok_or_else(|| self.err(frame, Diagnostic::error("`pow(x, y)` needs two arguments", span)))?;
                let b = self.tensor_like(b.1.clone(), Some(dt), frame, b.2)?;
                Ok(RValue::Tensor(self.node(Op::Binary(Binary::Pow), vec![a, b], frame, span)?))
            }
            "reshape" | "broadcast" | "broadcast_to" => {
                let x = tensor_arg(self, 0, frame)?;
                let shape = match pos.get(1).map(|a| &a.1) {
                    Some(RValue::List(items) | RValue::Tuple(items)) => items
                        .iter()
                        .map(|v| match v {
                            RValue::Dim(d) => Some(d.clone()),
                            RValue::Static(Value::Int(i)) => Some(Dim::constant(*i)),
                            _ => None,
                        })
                        .collect::<Option<Vec<Dim>>>(),
                    _ => None,
                };
                let Some(shape) = shape else {
                    return Err(self.err(
                        frame,
                        Diagnostic::error(format!("`{name}` needs a shape list of dims, as in `[B, T, d]`"), span)
                            .with_label("here"),
                    ));
                };
                let op = if name == "reshape" { Op::Reshape { shape } } else { Op::Broadcast { shape } };
                Ok(RValue::Tensor(self.node(op, vec![x], frame, span)?))
            }
            "transpose" => {
                let x = tensor_arg(self, 0, frame)?;
                let rank = self.ty(x).rank();
                let mut axes: Vec<i64> = Vec::new();
                for a in &pos[1..] {
                    match static_ints(&a.1) {
                        Some(v) => axes.extend(v),
                        None => {
                            return Err(self.err(
                                frame,
                                Diagnostic::error("`transpose` takes compile-time axes", a.2).with_label("here"),
                            ))
                        }
                    }
                }
                let norm = |a: i64| if a < 0 { a + rank as i64 } else { a };
                // `transpose(x)` swaps the last two axes, `transpose(x, a, b)` swaps two,
                // `transpose(x, (p0, p1, ...))` permutes.
                let perm: Vec<usize> = match axes.as_slice() {
                    [] if rank >= 2 => {
                        let mut p: Vec<usize> = (0..rank).collect();
                        p.swap(rank - 2, rank - 1);
                        p
                    }
                    [a, b] if pos.len() == 3 => {
                        let mut p: Vec<usize> = (0..rank).collect();
                        let (a, b) = (norm(*a), norm(*b));
                        if a < 0 || b < 0 || a as usize >= rank || b as usize >= rank {
                            return Err(self.err(
                                frame,
                                Diagnostic::error(format!("axes {a} and {b} are out of range for rank {rank}"), span)
                                    .with_label("here"),
                            ));
                        }
                        p.swap(a as usize, b as usize);
                        p
                    }
                    many => many.iter().map(|a| norm(*a).max(0) as usize).collect(),
                };
                Ok(RValue::Tensor(self.node(Op::Transpose { perm }, vec![x], frame, span)?))
            }
            "pad" => {
                let x = tensor_arg(self, 0, frame)?;
                let rank = self.ty(x).rank();
                let axis = axis_of(self, named("axis"), rank, frame, Some(-1))?[0];
                let amount = |v: Option<(&RValue, Span)>| match v {
                    Some((RValue::Static(Value::Int(i)), _)) => Some(*i),
                    None => Some(0),
                    _ => None,
                };
                let (Some(before), Some(after)) = (amount(named("before")), amount(named("after"))) else {
                    return Err(self.err(
                        frame,
                        Diagnostic::error("`pad(x, axis:, before:, after:, value:)` takes integer amounts", span)
                            .with_label("here"),
                    ));
                };
                let value = static_f64(named("value")).unwrap_or(0.0);
                Ok(RValue::Tensor(self.node(Op::Pad { axis, before, after, value }, vec![x], frame, span)?))
            }
            "gather" | "scatter_add" => {
                let n_args = if name == "gather" { 2 } else { 3 };
                let ids = (0..n_args).map(|i| tensor_arg(self, i, frame)).collect::<Result<Vec<_>, _>>()?;
                let rank = self.ty(ids[0]).rank();
                let axis = axis_of(self, named("axis"), rank, frame, Some(-1))?[0];
                let op = if name == "gather" { Op::Gather { axis } } else { Op::ScatterAdd { axis } };
                Ok(RValue::Tensor(self.node(op, ids, frame, span)?))
            }
            "topk" => {
                let x = tensor_arg(self, 0, frame)?;
                let k = match named("k").or(pos.get(1).map(|a| (&a.1, a.2))) {
                    Some((RValue::Static(Value::Int(k)), _)) => *k,
                    _ => {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("`topk(x, k:)` needs an integer k", span).with_label("here"),
                        ))
                    }
                };
                let values = self.node(Op::TopK { k, indices: false }, vec![x], frame, span)?;
                let indices = self.node(Op::TopK { k, indices: true }, vec![x], frame, span)?;
                Ok(RValue::Tuple(vec![RValue::Tensor(values), RValue::Tensor(indices)]))
            }
            "one_hot" => {
                let x = tensor_arg(self, 0, frame)?;
                let n = match named("n").or(pos.get(1).map(|a| (&a.1, a.2))) {
                    Some((RValue::Static(Value::Int(n)), _)) if *n > 0 => *n,
                    _ => {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("`one_hot(ids, n)` needs a positive integer n", span).with_label("here"),
                        ))
                    }
                };
                Ok(RValue::Tensor(self.node(Op::OneHot { n }, vec![x], frame, span)?))
            }
            "cumsum" => {
                let x = tensor_arg(self, 0, frame)?;
                let rank = self.ty(x).rank();
                let axis = axis_of(self, named("axis"), rank, frame, Some(-1))?[0];
                Ok(RValue::Tensor(self.node(Op::Cumsum { axis }, vec![x], frame, span)?))
            }
            "lstm" => {
                let ids = (0..4).map(|i| tensor_arg(self, i, frame)).collect::<Result<Vec<_>, _>>()?;
                let reverse = matches!(named("reverse"), Some((RValue::Static(Value::Bool(true)), _)));
                Ok(RValue::Tensor(self.node(Op::Lstm { reverse }, ids, frame, span)?))
            }
            "moe_zloss" => {
                let logits = tensor_arg(self, 0, frame)?;
                Ok(RValue::Tensor(self.node(Op::MoeZLoss, vec![logits], frame, span)?))
            }
            "cross_entropy" => {
                let logits = tensor_arg(self, 0, frame)?;
                let targets = tensor_arg(self, 1, frame)?;
                let ignore = match named("ignore") {
                    Some((RValue::Static(Value::Int(i)), _)) => *i,
                    _ => -100,
                };
                Ok(RValue::Tensor(self.node(Op::CrossEntropy { ignore }, vec![logits, targets], frame, span)?))
            }
            _ => {
                let mut d = Diagnostic::error(format!("unknown block or primitive `{name}`"), name_span)
                    .with_label("cannot be called");
                let mut names: Vec<&str> = PRIMITIVES.to_vec();
                names.extend(frame.instance.members.iter().filter_map(member_name));
                d = d.with_help(match suggest(name, names.into_iter()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if NOT_YET.contains(&name) => format!("`{name}` is not elaborated into the Graph IR yet"),
                    None => "call a sub-block declared in this block, or a primitive".into(),
                });
                Err(self.err(frame, d))
            }
        }
    }
}

/// Primitives the elaborator knows, for "did you mean".
pub(super) const PRIMITIVES: &[&str] = &[
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "tanh",
    "erf",
    "sigmoid",
    "sin",
    "cos",
    "abs",
    "relu",
    "silu",
    "gelu",
    "softcap",
    "dropout",
    "cast",
    "min",
    "max",
    "sum",
    "mean",
    "var",
    "logsumexp",
    "softmax",
    "log_softmax",
    "where",
    "arange",
    "embedding",
    "concat",
    "split",
    "slice",
    "broadcast_to",
    "rearrange",
    "attention",
    "cross_entropy",
    "moe_route",
    "moe_dispatch",
    "moe_combine",
    "moe_balance",
    "moe_zloss",
    "lstm",
];

/// Primitives of LANGUAGE.md whose Graph IR comes later.
pub(super) const NOT_YET: &[&str] =
    &["topk", "one_hot", "gather", "scatter_add", "cumsum", "pad", "reshape", "transpose", "rope"];

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

/// What each primitive accepts: the most positional arguments and the keyword names.
/// Anything else is an error, so that a misspelt option never silently does nothing.
pub(super) const SIGNATURES: &[(&str, usize, &[&str])] = &[
    ("gelu", 1, &["approx"]),
    ("softcap", 2, &[]),
    ("dropout", 2, &["p"]),
    ("cast", 2, &[]),
    ("sum", 1, &["axis", "keepdim"]),
    ("mean", 1, &["axis", "keepdim"]),
    ("var", 1, &["axis", "keepdim"]),
    ("logsumexp", 1, &["axis", "keepdim"]),
    ("max", 2, &["axis", "keepdim"]),
    ("min", 2, &["axis", "keepdim"]),
    ("softmax", 1, &["axis"]),
    ("log_softmax", 1, &["axis"]),
    ("where", 3, &[]),
    ("arange", 3, &[]),
    ("embedding", 2, &[]),
    ("concat", 1, &["axis"]),
    ("split", 2, &["axis"]),
    ("slice", 1, &["axis", "start", "end"]),
    // Any keyword: the sizes of the pattern's axes (`h: heads`).
    ("rearrange", 2, &["*"]),
    ("attention", 3, &["causal", "window", "softcap", "scale", "bias"]),
    ("cross_entropy", 2, &["ignore"]),
    ("moe_route", 1, &["k", "capacity", "noise"]),
    ("moe_dispatch", 2, &[]),
    ("moe_combine", 2, &[]),
    ("moe_balance", 1, &[]),
    ("moe_zloss", 1, &[]),
    ("lstm", 4, &["reverse"]),
    ("pow", 2, &[]),
    ("reshape", 2, &[]),
    ("broadcast", 2, &[]),
    ("broadcast_to", 2, &[]),
    ("transpose", 3, &[]),
    ("pad", 1, &["axis", "before", "after", "value"]),
    ("gather", 2, &["axis"]),
    ("scatter_add", 3, &["axis"]),
    ("topk", 2, &["k"]),
    ("one_hot", 2, &["n"]),
    ("cumsum", 1, &["axis"]),
];
