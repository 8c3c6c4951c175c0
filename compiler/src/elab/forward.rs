//! `forward` bodies → Graph IR, with shapes as types. Starting from the model's
//! `forward`, every call of a sub-block is inlined (its nodes carry the instance path as
//! scope), every primitive becomes `Op` nodes whose shape rule checks the arguments, and
//! every signature is unified with the values passed: a dim name that is not a
//! compile-time value (`B`, `T`) binds to what it meets, `...` binds the leading dims,
//! and a mismatch is an error that shows both shapes. Compile-time `if` elaborates only
//! the branch taken, so the untaken one may use members that do not exist.

use super::einops;
use super::eval::{Consts, Scope};
use super::instance::{Instance, Member};
use super::value::Value;
use crate::error::{suggest, Error, FileId};
use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Op, Reduce, Unary};
use crate::graph::types::{DType, TensorType};
use crate::graph::{DimDef, Graph, ValueId};
use crate::modules::Program;
use modelc_grammar::ast::{
    self, BinaryOp, CopiesKind, Expr, ExprKind, ItemKind, MemberKind, Span, StmtKind, TypeKind, UnaryOp,
};
use modelc_grammar::Diagnostic;
use std::collections::HashMap;

/// A value during elaboration: a tensor in the graph, a compile-time value, a dim bound
/// by a signature, or a tuple/list of those.
#[derive(Clone, Debug)]
enum RValue {
    Tensor(ValueId),
    Static(Value),
    Dim(Dim),
    Tuple(Vec<RValue>),
    List(Vec<RValue>),
    /// The result of `moe_route`: the combine weights `[N, E, C]`, the logits `[N, E]`
    /// they came from, and `k`.
    Route {
        combine: ValueId,
        logits: ValueId,
        k: i64,
    },
}

/// Builds the Graph IR of a model instance's `forward`.
pub fn elaborate(program: &Program, instance: &Instance) -> Result<Graph, Error> {
    let consts = Consts::default();
    let mut b = Builder {
        program,
        consts: &consts,
        graph: Graph::default(),
        act: DType::F32,
        params: HashMap::new(),
        depth: 0,
    };
    let frame = Frame::new(instance, String::new(), &b);
    let fwd = b.forward_def(instance)?;
    let mut frame = frame;
    // The model's own signature introduces the symbols and the graph's inputs.
    for p in &fwd.params {
        let value = match &p.default {
            Some(d) if p.ty.optional => RValue::Static(frame.scope(&b).eval(d)?),
            _ => {
                let ty = b.declared_type(&p.ty, &mut frame, None)?;
                RValue::Tensor(b.graph.push(Op::Input { name: p.name.name.clone() }, Vec::new(), ty, ""))
            }
        };
        frame.locals.insert(p.name.name.clone(), (value, p.name.span));
    }
    let result = b.body(&fwd, &mut frame)?;
    let mut outputs = Vec::new();
    b.flatten_tensors(&result, &mut outputs, &frame, fwd.ret.as_ref().map_or(Span::default(), |t| t.span))?;
    b.graph.outputs = outputs;
    Ok(b.graph)
}

struct Builder<'a> {
    program: &'a Program,
    consts: &'a Consts,
    graph: Graph,
    /// The dtype of tensor types written without one.
    act: DType,
    /// Parameter leaves by checkpoint name, so each parameter is one node.
    params: HashMap<String, ValueId>,
    /// Inlining depth, to keep a pathological program from exhausting the stack.
    depth: usize,
}

/// One inlined call: the instance, where its names come from, and what is bound.
struct Frame<'i> {
    instance: &'i Instance,
    prefix: String,
    module: usize,
    locals: HashMap<String, (RValue, Span)>,
    symbols: HashMap<String, Dim>,
    ellipsis: Option<Vec<Dim>>,
    /// Buffers already built in this instance.
    buffers: HashMap<String, RValue>,
    /// Inside an `if` condition: a compile-time position, where a block parameter wins
    /// over a member of the same name (`if bias { x + bias }` in `Linear`).
    prefer_static: bool,
}

impl<'i> Frame<'i> {
    fn new(instance: &'i Instance, prefix: String, b: &Builder) -> Frame<'i> {
        let _ = b;
        Frame {
            instance,
            prefix,
            module: instance.block.module,
            locals: HashMap::new(),
            symbols: HashMap::new(),
            ellipsis: None,
            buffers: HashMap::new(),
            prefer_static: false,
        }
    }

    fn file(&self, b: &Builder) -> FileId {
        b.program.file_of(self.module)
    }

    /// A compile-time scope with the instance's parameters and constants.
    fn scope<'s>(&self, b: &'s Builder) -> Scope<'s> {
        let mut s = Scope::new(b.program, b.consts, self.module);
        s.locals = self.instance.statics.clone();
        s
    }

    fn join(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
}

const MAX_DEPTH: usize = 64;

impl<'a> Builder<'a> {
    fn err(&self, frame: &Frame, diag: Diagnostic) -> Error {
        Error::new(frame.file(self), diag)
    }

    fn forward_def(&self, instance: &Instance) -> Result<ast::Forward, Error> {
        let item = self.program.item(instance.block);
        let ItemKind::Block(def) = &item.kind else { unreachable!("instances are of blocks") };
        def.members
            .iter()
            .find_map(|m| match &m.kind {
                MemberKind::Forward(f) => Some(f.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                Error::new(
                    self.program.file_of(instance.block.module),
                    Diagnostic::error(format!("`{}` has no `forward`", def.name.name), def.name.span)
                        .with_label("cannot be called")
                        .with_help("add `forward(x: [..]) -> [..] { ... }`"),
                )
            })
    }

    fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }

    /// Adds a node after checking its shape rule; an error names the op and both shapes.
    fn node(&mut self, op: Op, args: Vec<ValueId>, frame: &Frame, span: Span) -> Result<ValueId, Error> {
        let types: Vec<&TensorType> = args.iter().map(|a| self.graph.ty(*a)).collect();
        match op.infer(&types) {
            Ok(ty) => Ok(self.graph.push(op, args, ty, &frame.prefix)),
            Err(why) => Err(self.err(frame, Diagnostic::error(why, span).with_label("shapes do not fit"))),
        }
    }

    fn scalar(&mut self, x: f64, dtype: DType, frame: &Frame) -> ValueId {
        self.graph.push(Op::Scalar { value: x }, Vec::new(), TensorType::scalar(dtype), &frame.prefix)
    }

    // ------------------------------------------------------------ types and signatures

    /// A declared tensor type with its dims evaluated; unknown dim names become symbols.
    fn declared_type(
        &mut self,
        ty: &ast::Type,
        frame: &mut Frame,
        actual: Option<&TensorType>,
    ) -> Result<TensorType, Error> {
        let TypeKind::Tensor { dtype, dims } = &ty.kind else {
            return Err(self.err(
                frame,
                Diagnostic::error("`forward` arguments and results are tensors", ty.span)
                    .with_label("not a tensor type")
                    .with_help("write a shape, as in `x: [B, T, d]` or `ids: i32[B, T]`"),
            ));
        };
        let dtype = match dtype {
            Some(d) => DType::parse(&d.name).ok_or_else(|| {
                self.err(
                    frame,
                    Diagnostic::error(format!("unknown dtype `{}`", d.name), d.span).with_label("not a dtype"),
                )
            })?,
            None => actual.map_or(self.act, |a| a.dtype),
        };
        let ellipsis_at = dims.iter().position(|d| matches!(d, ast::Dim::Ellipsis(_)));
        let mut shape = Vec::new();
        let n_fixed = dims.len() - usize::from(ellipsis_at.is_some());
        if let (Some(a), Some(_)) = (actual, ellipsis_at) {
            if a.rank() < n_fixed {
                return Err(self.err(
                    frame,
                    Diagnostic::error(format!("expected at least {n_fixed} dims, found {}", a.shape_text()), ty.span),
                ));
            }
        } else if let Some(a) = actual {
            if a.rank() != dims.len() {
                return Err(self.mismatch(frame, ty, a, ty.span));
            }
        }
        for (i, d) in dims.iter().enumerate() {
            match d {
                ast::Dim::Ellipsis(span) => {
                    let lead = match actual {
                        Some(a) => a.shape[..a.rank() - n_fixed].to_vec(),
                        None => match &frame.ellipsis {
                            Some(l) => l.clone(),
                            None => {
                                return Err(self.err(
                                    frame,
                                    Diagnostic::error("`...` here has no dims to stand for", *span)
                                        .with_label("unbound `...`")
                                        .with_help("`...` in a result type repeats the `...` of an argument"),
                                ))
                            }
                        },
                    };
                    match &frame.ellipsis {
                        Some(prev) if actual.is_some() && *prev != lead => {
                            return Err(self.mismatch(frame, ty, actual.expect("checked"), ty.span));
                        }
                        _ => frame.ellipsis = Some(lead.clone()),
                    }
                    shape.extend(lead);
                }
                ast::Dim::Expr(e) => {
                    let actual_dim = actual.map(|a| {
                        let j = match ellipsis_at {
                            Some(at) if i > at => a.rank() - (dims.len() - i),
                            _ => i,
                        };
                        a.shape[j].clone()
                    });
                    // An unbound name binds to the dim it meets.
                    if let ExprKind::Name(n) = &e.kind {
                        let known = frame.symbols.contains_key(&n.name)
                            || frame.instance.statics.iter().any(|(k, _)| *k == n.name)
                            || self.program.modules[frame.module].names.contains_key(&n.name);
                        if !known {
                            let dim = actual_dim.clone().unwrap_or_else(|| Dim::symbol(&n.name));
                            frame.symbols.insert(n.name.clone(), dim.clone());
                            shape.push(dim);
                            continue;
                        }
                    }
                    let dim = self.dim_value(e, frame)?;
                    if let Some(a) = &actual_dim {
                        if *a != dim {
                            return Err(self.mismatch(frame, ty, actual.expect("checked"), ty.span));
                        }
                    }
                    shape.push(dim);
                }
            }
        }
        let out = TensorType::new(dtype, shape);
        if let Some(a) = actual {
            let dtype_ok = match dtype_written(ty) {
                Some(_) => a.dtype == out.dtype,
                None => true,
            };
            if !dtype_ok {
                return Err(self.err(
                    frame,
                    Diagnostic::error(format!("expected {out}, found {a}"), ty.span).with_label("dtype differs"),
                ));
            }
        }
        Ok(out)
    }

    fn mismatch(&self, frame: &Frame, ty: &ast::Type, actual: &TensorType, span: Span) -> Error {
        let expected = self.type_text(ty, frame);
        self.err(
            frame,
            Diagnostic::error(format!("expected {expected}, found {}", actual.shape_text()), span)
                .with_label("shape mismatch"),
        )
    }

    /// The declared type with what is known substituted, for messages: `[B, T, 256]`.
    fn type_text(&self, ty: &ast::Type, frame: &Frame) -> String {
        let TypeKind::Tensor { dims, .. } = &ty.kind else { return "a tensor".into() };
        let dims: Vec<String> = dims
            .iter()
            .map(|d| match d {
                ast::Dim::Ellipsis(_) => "...".to_string(),
                ast::Dim::Expr(e) => match &e.kind {
                    ExprKind::Name(n) if frame.symbols.contains_key(&n.name) => frame.symbols[&n.name].to_string(),
                    _ => self
                        .dim_value(e, frame)
                        .map(|d| d.to_string())
                        .unwrap_or_else(|_| modelc_grammar::format::flat(e)),
                },
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }

    /// A dim expression: constants, block parameters and bound symbols, with `+ - * /`.
    fn dim_value(&self, e: &Expr, frame: &Frame) -> Result<Dim, Error> {
        match &e.kind {
            ExprKind::Name(n) if frame.symbols.contains_key(&n.name) => Ok(frame.symbols[&n.name].clone()),
            ExprKind::Binary { op, lhs, rhs }
                if matches!(op, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div) =>
            {
                let (l, r) = (self.dim_value(lhs, frame)?, self.dim_value(rhs, frame)?);
                Ok(match op {
                    BinaryOp::Add => l.add(&r),
                    BinaryOp::Sub => l.sub(&r),
                    BinaryOp::Mul => l.mul(&r),
                    _ if l.as_constant().is_some() && r.as_constant().is_some_and(|c| c != 0) => {
                        Dim::constant(floor_div(l.as_constant().unwrap_or(0), r.as_constant().unwrap_or(1)))
                    }
                    _ => l.div_exact(&r).ok_or_else(|| {
                        self.err(
                            frame,
                            Diagnostic::error(format!("{l} is not divisible by {r}"), e.span).with_label("inexact dim"),
                        )
                    })?,
                })
            }
            _ => {
                let n = frame.scope(self).int(e, "a dim")?;
                Ok(Dim::constant(n))
            }
        }
    }

    // ------------------------------------------------------------ bodies and calls

    /// Runs a `forward` body in `frame`; returns what it returns.
    fn body(&mut self, fwd: &ast::Forward, frame: &mut Frame) -> Result<RValue, Error> {
        for stmt in &fwd.body {
            match &stmt.kind {
                StmtKind::Let { names, value } => {
                    let v = self.expr(value, frame)?;
                    let values = match (names.len(), v) {
                        (1, v) => vec![v],
                        (n, RValue::Tuple(items)) if items.len() == n => items,
                        (n, other) => {
                            let found = match &other {
                                RValue::Tuple(items) => format!("{} values", items.len()),
                                _ => "one value".into(),
                            };
                            return Err(self.err(
                                frame,
                                Diagnostic::error(format!("{n} names but {found}"), value.span)
                                    .with_label("cannot be split"),
                            ));
                        }
                    };
                    for (name, v) in names.iter().zip(values) {
                        if let Some((_, first)) = frame.locals.get(&name.name) {
                            return Err(self.err(
                                frame,
                                Diagnostic::error(format!("`{}` is assigned twice", name.name), name.span)
                                    .with_label("second assignment")
                                    .with_secondary(*first, "first assigned here")
                                    .with_help("values are single-assignment: give the new value its own name"),
                            ));
                        }
                        frame.locals.insert(name.name.clone(), (v, name.span));
                    }
                }
                StmtKind::AuxLoss { name, value } | StmtKind::Metric { name, value } => {
                    let v = self.expr(value, frame)?;
                    let v = self.scalar_tensor(v, frame, value.span, matches!(stmt.kind, StmtKind::AuxLoss { .. }))?;
                    let full = frame.join(&name.name);
                    match stmt.kind {
                        StmtKind::AuxLoss { .. } => self.graph.aux_losses.push((full, v)),
                        _ => self.graph.metrics.push((full, v)),
                    }
                }
                StmtKind::Return(e) => {
                    if let Some(after) = fwd.body.last().filter(|last| last.span != stmt.span) {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("`return` must be the last statement", after.span)
                                .with_label("never runs")
                                .with_secondary(stmt.span, "returns here"),
                        ));
                    }
                    let v = self.expr(e, frame)?;
                    let v = match &frame.instance.prompt {
                        Some(site) => self.drop_prompt(v, site, frame, e.span)?,
                        None => v,
                    };
                    if let Some(ret) = &fwd.ret {
                        self.check_return(ret, &v, frame, e.span)?;
                    }
                    return Ok(v);
                }
            }
        }
        let span = fwd.ret.as_ref().map_or(Span::default(), |t| t.span);
        Err(self.err(frame, Diagnostic::error("`forward` ends without `return`", span).with_label("nothing returned")))
    }

    fn scalar_tensor(&mut self, v: RValue, frame: &Frame, span: Span, aux: bool) -> Result<ValueId, Error> {
        let what = if aux { "an `aux_loss`" } else { "a `metric`" };
        // A metric may also be a vector of statically known length (per-expert load): it
        // is reported as a JSON array.
        let vector =
            |ty: &crate::graph::types::TensorType| !aux && ty.rank() == 1 && ty.shape[0].as_constant().is_some();
        match v {
            RValue::Tensor(t) if self.ty(t).rank() == 0 || vector(self.ty(t)) => Ok(t),
            RValue::Tensor(t) => Err(self.err(
                frame,
                Diagnostic::error(
                    format!(
                        "{what} must be a scalar{}, found {}",
                        if aux { "" } else { " or a vector of known length" },
                        self.ty(t).shape_text()
                    ),
                    span,
                )
                .with_label("not a scalar")
                .with_help("reduce it first, for example with `mean(x)`"),
            )),
            RValue::Static(Value::Int(i)) => Ok(self.scalar(i as f64, DType::F32, frame)),
            RValue::Static(Value::Float(x)) => Ok(self.scalar(x, DType::F32, frame)),
            _ => Err(self.err(frame, Diagnostic::error(format!("{what} must be a number"), span).with_label("here"))),
        }
    }

    fn check_return(&mut self, ret: &ast::Type, v: &RValue, frame: &mut Frame, span: Span) -> Result<(), Error> {
        match (&ret.kind, v) {
            (TypeKind::Tuple(types), RValue::Tuple(values)) if types.len() == values.len() => {
                for (t, v) in types.iter().zip(values) {
                    self.check_return(t, v, frame, span)?;
                }
                Ok(())
            }
            (TypeKind::Tensor { .. }, RValue::Tensor(t)) => {
                let actual = self.ty(*t).clone();
                self.declared_type(ret, frame, Some(&actual)).map(|_| ()).map_err(|mut e| {
                    e.diag.span = span;
                    e.diag.label = format!("returns {}", actual.shape_text());
                    e.diag.message = format!("wrong return shape: {}", e.diag.message);
                    e
                })
            }
            _ => Err(self.err(
                frame,
                Diagnostic::error(format!("`forward` is declared to return {}", self.type_text(ret, frame)), span)
                    .with_label("returns something else"),
            )),
        }
    }

    fn flatten_tensors(&self, v: &RValue, out: &mut Vec<ValueId>, frame: &Frame, span: Span) -> Result<(), Error> {
        match v {
            RValue::Tensor(t) => out.push(*t),
            RValue::Tuple(items) | RValue::List(items) => {
                for i in items {
                    self.flatten_tensors(i, out, frame, span)?;
                }
            }
            _ => return Err(self.err(frame, Diagnostic::error("a model returns tensors", span).with_label("here"))),
        }
        Ok(())
    }

    fn call_instance(
        &mut self,
        instance: &Instance,
        prefix: String,
        args: &[(Option<String>, RValue, Span)],
        caller: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err(caller, Diagnostic::error("calls nested too deeply", span).with_label("here")));
        }
        let fwd = self.forward_def(instance)?;
        let mut frame = Frame::new(instance, prefix, self);
        // Match arguments to the signature, then unify each tensor with its type.
        let mut given: Vec<Option<(RValue, Span)>> = vec![None; fwd.params.len()];
        let mut positional = 0;
        for (name, value, aspan) in args {
            let i = match name {
                None => {
                    positional += 1;
                    positional - 1
                }
                Some(n) => match fwd.params.iter().position(|p| &p.name.name == n) {
                    Some(i) => i,
                    None => {
                        let mut d = Diagnostic::error(
                            format!("`{}.forward` has no argument `{n}`", instance.block_name),
                            *aspan,
                        )
                        .with_label("unknown keyword argument");
                        if let Some(s) = suggest(n, fwd.params.iter().map(|p| p.name.name.as_str())) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        return Err(self.err(caller, d));
                    }
                },
            };
            if i >= fwd.params.len() {
                return Err(self.err(
                    caller,
                    Diagnostic::error(
                        format!("`{}` takes {} argument(s)", instance.block_name, fwd.params.len()),
                        *aspan,
                    )
                    .with_label("extra argument"),
                ));
            }
            if given[i].is_some() {
                return Err(self.err(
                    caller,
                    Diagnostic::error(format!("`{}` is given twice", fwd.params[i].name.name), *aspan)
                        .with_label("second value"),
                ));
            }
            given[i] = Some((value.clone(), *aspan));
        }
        for (p, g) in fwd.params.iter().zip(given) {
            let value = match g {
                Some((RValue::Tensor(t), aspan)) => {
                    let actual = self.ty(t).clone();
                    let ty = p.ty.clone();
                    if let Err(e) = self.declared_type(&ty, &mut frame, Some(&actual)) {
                        // Report at the call, in the caller's file, with both shapes.
                        let expected = self.type_text(&ty, &frame);
                        return Err(self.err(
                            caller,
                            Diagnostic::error(
                                format!(
                                    "`{}` expects `{}` as {expected}, found {}",
                                    instance.block_name,
                                    p.name.name,
                                    if expected == actual.shape_text() {
                                        actual.to_string()
                                    } else {
                                        actual.shape_text()
                                    }
                                ),
                                aspan,
                            )
                            .with_label(format!("this is {}", actual.shape_text()))
                            .with_help(e.diag.message.clone()),
                        ));
                    }
                    RValue::Tensor(t)
                }
                Some((other, _)) => other,
                None => match &p.default {
                    Some(d) => RValue::Static(frame.scope(self).eval(d)?),
                    None => {
                        return Err(self.err(
                            caller,
                            Diagnostic::error(
                                format!("missing argument `{}` of `{}`", p.name.name, instance.block_name),
                                span,
                            )
                            .with_label(format!("`{}` is required", p.name.name)),
                        ))
                    }
                },
            };
            frame.locals.insert(p.name.name.clone(), (value, p.name.span));
        }
        self.depth += 1;
        let result = self.body(&fwd, &mut frame);
        self.depth -= 1;
        result.map_err(|e| self.at_user_call(e, instance, caller, span))
    }

    /// An error inside a library block (the stdlib, an imported file) reached from the
    /// user's own file is reported at the user's call, where it can be fixed; where it
    /// arose inside the library goes into the help.
    fn at_user_call(&self, mut e: Error, instance: &Instance, caller: &Frame, span: Span) -> Error {
        let root = FileId(0);
        if e.file == root || caller.file(self) != root {
            return e;
        }
        let inner = self.program.source(e.file);
        let place = format!("{}:{}", inner.name, inner.position(e.diag.span.start));
        let detail = if e.diag.label.is_empty() { String::new() } else { format!(" ({})", e.diag.label) };
        let help = format!("it arises inside `{}` at {place}{detail}", instance.block_name);
        e.diag.help = Some(match e.diag.help.take() {
            Some(h) => format!("{help}; {h}"),
            None => help,
        });
        e.diag.span = span;
        e.diag.label = format!("in this call of `{}`", instance.block_name);
        e.diag.secondary.clear();
        e.file = root;
        e
    }

    // ------------------------------------------------------------ expressions

    fn expr(&mut self, e: &Expr, frame: &mut Frame) -> Result<RValue, Error> {
        match &e.kind {
            ExprKind::Int { value, .. } => Ok(RValue::Static(Value::Int(*value))),
            ExprKind::Float { value, .. } => Ok(RValue::Static(Value::Float(*value))),
            ExprKind::Str(s) => Ok(RValue::Static(Value::Str(s.clone()))),
            ExprKind::Bool(b) => Ok(RValue::Static(Value::Bool(*b))),
            ExprKind::None => Ok(RValue::Static(Value::None)),
            ExprKind::Name(n) => self.name(&n.name, n.span, frame),
            ExprKind::Field { base, name } => self.field(base, name, frame),
            ExprKind::Tuple(items) => {
                Ok(RValue::Tuple(items.iter().map(|i| self.expr(i, frame)).collect::<Result<_, _>>()?))
            }
            ExprKind::List(items) => {
                Ok(RValue::List(items.iter().map(|i| self.expr(i, frame)).collect::<Result<_, _>>()?))
            }
            ExprKind::If { cond, then, otherwise } => match self.condition(cond, frame)? {
                RValue::Static(Value::Bool(true)) => self.expr(then, frame),
                RValue::Static(Value::Bool(false)) => self.expr(otherwise, frame),
                _ => Err(self.err(
                    frame,
                    Diagnostic::error("an `if` condition must be known at compile time", cond.span)
                        .with_label("depends on tensor values")
                        .with_help("choose between tensors elementwise with `where(cond, a, b)`"),
                )),
            },
            ExprKind::Unary { .. } => {
                // A chain of prefix operators is applied innermost first, without recursion.
                let mut ops = Vec::new();
                let mut inner = e;
                while let ExprKind::Unary { op, operand } = &inner.kind {
                    ops.push((*op, inner.span));
                    inner = operand;
                }
                let mut v = self.expr(inner, frame)?;
                for (op, span) in ops.into_iter().rev() {
                    v = self.unary(op, v, frame, span)?;
                }
                Ok(v)
            }
            ExprKind::Binary { op, lhs, rhs } if !matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Pow) => {
                // `a + b - c ...` nests to the left: walk the left spine, then fold forwards.
                let mut rest = vec![(*op, rhs.as_ref(), e.span)];
                let mut cur = lhs.as_ref();
                while let ExprKind::Binary { op, lhs, rhs } = &cur.kind {
                    if matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Pow) {
                        break;
                    }
                    rest.push((*op, rhs.as_ref(), cur.span));
                    cur = lhs;
                }
                let mut v = self.expr(cur, frame)?;
                for (op, rhs, span) in rest.into_iter().rev() {
                    let r = self.expr(rhs, frame)?;
                    v = self.binary(op, v, r, frame, span, rhs.span)?;
                }
                Ok(v)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.expr(lhs, frame)?;
                // `w == none or w > 2`: a decided compile-time `and`/`or` skips its right side.
                if let (BinaryOp::And, RValue::Static(Value::Bool(false)))
                | (BinaryOp::Or, RValue::Static(Value::Bool(true))) = (op, &l)
                {
                    return Ok(l);
                }
                let r = self.expr(rhs, frame)?;
                self.binary(*op, l, r, frame, e.span, rhs.span)
            }
            ExprKind::Call { callee, args } => self.call(callee, args, frame, e.span),
        }
    }

    /// An `if` condition, elaborated with block parameters taking precedence.
    fn condition(&mut self, cond: &Expr, frame: &mut Frame) -> Result<RValue, Error> {
        let before = std::mem::replace(&mut frame.prefer_static, true);
        let v = self.expr(cond, frame);
        frame.prefer_static = before;
        v
    }

    fn name(&mut self, name: &str, span: Span, frame: &mut Frame) -> Result<RValue, Error> {
        if let Some((v, _)) = frame.locals.get(name) {
            return Ok(v.clone());
        }
        if frame.prefer_static {
            if let Some((_, v)) = frame.instance.statics.iter().rev().find(|(k, _)| k == name) {
                return Ok(RValue::Static(v.clone()));
            }
        }
        if let Some(d) = frame.symbols.get(name) {
            return Ok(RValue::Dim(d.clone()));
        }
        // Members: weights and buffers are tensors here.
        for m in &frame.instance.members {
            match m {
                Member::Weight(w) if w.name == name => {
                    let full = frame.join(name);
                    let dtype = w.dtype.as_deref().and_then(DType::parse).unwrap_or(self.act);
                    let shape = w.shape.iter().map(|&d| Dim::constant(d)).collect();
                    return Ok(RValue::Tensor(self.param(full, TensorType::new(dtype, shape))));
                }
                Member::Buffer { name: b } if b == name => return self.buffer(name, frame),
                Member::Sub(s) if s.name == name => {
                    return Err(self.err(
                        frame,
                        Diagnostic::error(format!("`{name}` is a sub-block: call it, as in `{name}(x)`"), span)
                            .with_label("not a tensor"),
                    ))
                }
                _ => {}
            }
        }
        if let Some((_, v)) = frame.instance.statics.iter().rev().find(|(k, _)| k == name) {
            return Ok(RValue::Static(v.clone()));
        }
        // Dtype names are values where a dtype is expected: `cast(x, f32)`.
        if DType::parse(name).is_some() {
            return Ok(RValue::Static(Value::Symbol(name.to_string())));
        }
        let scope = frame.scope(self);
        match scope.eval(&Expr { kind: ExprKind::Name(ast::Ident { name: name.to_string(), span }), span }) {
            Ok(v) => Ok(RValue::Static(v)),
            Err(_) => {
                let mut names: Vec<String> = frame.locals.keys().cloned().collect();
                names.extend(frame.symbols.keys().cloned());
                names.extend(frame.instance.members.iter().filter_map(member_name).map(str::to_string));
                names.extend(scope.visible_names());
                let mut d =
                    Diagnostic::error(format!("unknown name `{name}`"), span).with_label("not found in this scope");
                if let Some(s) = suggest(name, names.iter().map(String::as_str)) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                Err(self.err(frame, d))
            }
        }
    }

    fn param(&mut self, full: String, ty: TensorType) -> ValueId {
        if let Some(&v) = self.params.get(&full) {
            return v;
        }
        let v = self.graph.push(Op::Param { name: full.clone() }, Vec::new(), ty, "");
        self.params.insert(full, v);
        v
    }

    /// A buffer is its expression, elaborated once per instance from compile-time values.
    fn buffer(&mut self, name: &str, frame: &mut Frame) -> Result<RValue, Error> {
        if let Some(v) = frame.buffers.get(name) {
            return Ok(v.clone());
        }
        let item = self.program.item(frame.instance.block);
        let ItemKind::Block(def) = &item.kind else { unreachable!("instances are of blocks") };
        let scope = frame.scope(self);
        let expr = find_buffer(&def.members, name, &scope)?
            .ok_or_else(|| self.err(frame, Diagnostic::error(format!("buffer `{name}` not found"), Span::default())))?;
        // A buffer is compile-time: it sees parameters and constants, not `forward`'s values.
        let locals = std::mem::take(&mut frame.locals);
        let v = self.expr(&expr, frame);
        frame.locals = locals;
        let v = v?;
        frame.buffers.insert(name.to_string(), v.clone());
        Ok(v)
    }

    fn field(&mut self, base: &Expr, name: &ast::Ident, frame: &mut Frame) -> Result<RValue, Error> {
        // `embed.weight`: a parameter of a sub-block.
        if let ExprKind::Name(n) = &base.kind {
            if !frame.locals.contains_key(&n.name) {
                let sub = frame.instance.members.iter().find_map(|m| match m {
                    Member::Sub(s) if s.name == n.name => Some(s),
                    _ => None,
                });
                if let Some(sub) = sub {
                    if sub.copies.is_some() {
                        return Err(self.err(
                            frame,
                            Diagnostic::error("a field of copied blocks is ambiguous", name.span)
                                .with_label("which copy?"),
                        ));
                    }
                    let w = sub.instance.members.iter().find_map(|m| match m {
                        Member::Weight(w) if w.name == name.name => Some(w),
                        _ => None,
                    });
                    let Some(w) = w else {
                        let names = sub.instance.members.iter().filter_map(member_name);
                        let mut d =
                            Diagnostic::error(format!("`{}` has no parameter `{}`", n.name, name.name), name.span)
                                .with_label("not found");
                        if let Some(s) = suggest(&name.name, names) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        return Err(self.err(frame, d));
                    };
                    let full = format!("{}.{}", frame.join(&n.name), w.name);
                    let dtype = w.dtype.as_deref().and_then(DType::parse).unwrap_or(self.act);
                    let ty = TensorType::new(dtype, w.shape.iter().map(|&d| Dim::constant(d)).collect());
                    return Ok(RValue::Tensor(self.param(full, ty)));
                }
            }
        }
        // `route.load`, `route.overflow`.
        if let ExprKind::Name(n) = &base.kind {
            if let Some((RValue::Route { combine, logits, k }, _)) = frame.locals.get(&n.name).cloned() {
                let span = base.span.to(name.span);
                return match name.name.as_str() {
                    "load" => Ok(RValue::Tensor(self.node(Op::MoeLoad { k }, vec![combine], frame, span)?)),
                    "overflow" => {
                        Ok(RValue::Tensor(self.node(Op::MoeOverflow { k }, vec![logits, combine], frame, span)?))
                    }
                    other => Err(self.err(
                        frame,
                        Diagnostic::error(format!("a route has no field `{other}`"), name.span)
                            .with_label("unknown field")
                            .with_help("a route has `load` (per expert) and `overflow`"),
                    )),
                };
            }
        }
        // `Norm.pre` and other compile-time fields.
        let scope = frame.scope(self);
        let e = Expr {
            kind: ExprKind::Field { base: Box::new(base.clone()), name: name.clone() },
            span: base.span.to(name.span),
        };
        scope.eval(&e).map(RValue::Static)
    }

    fn binary(
        &mut self,
        op: BinaryOp,
        l: RValue,
        r: RValue,
        frame: &mut Frame,
        span: Span,
        rhs_span: Span,
    ) -> Result<RValue, Error> {
        // `x == none` asks whether an optional argument was given.
        if matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
            let is_none = |v: &RValue| matches!(v, RValue::Static(Value::None));
            if is_none(&l) != is_none(&r) && (matches!(l, RValue::Tensor(_)) || matches!(r, RValue::Tensor(_))) {
                return Ok(RValue::Static(Value::Bool(op == BinaryOp::Ne)));
            }
        }
        match (l, r) {
            (RValue::Static(a), RValue::Static(b)) => {
                frame.scope(self).apply_binary(op, a, b, span, rhs_span).map(RValue::Static)
            }
            (RValue::Dim(a), RValue::Dim(b)) => {
                dim_binary(op, &a, &b).map(RValue::Dim).ok_or_else(|| self.op_error(frame, op, span))
            }
            (RValue::Dim(a), RValue::Static(Value::Int(b))) => {
                dim_binary(op, &a, &Dim::constant(b)).map(RValue::Dim).ok_or_else(|| self.op_error(frame, op, span))
            }
            (RValue::Static(Value::Int(a)), RValue::Dim(b)) => {
                dim_binary(op, &Dim::constant(a), &b).map(RValue::Dim).ok_or_else(|| self.op_error(frame, op, span))
            }
            (l, r) => {
                // A number takes the dtype of the tensor on the other side.
                let dtype = match (&l, &r) {
                    (RValue::Tensor(t), _) | (_, RValue::Tensor(t)) => Some(self.ty(*t).dtype),
                    _ => None,
                };
                let a = self.tensor_like(l, dtype, frame, span)?;
                let b = self.tensor_like(r, dtype, frame, span)?;
                let op = match op {
                    BinaryOp::MatMul => Op::MatMul,
                    BinaryOp::Add => Op::Binary(Binary::Add),
                    BinaryOp::Sub => Op::Binary(Binary::Sub),
                    BinaryOp::Mul => Op::Binary(Binary::Mul),
                    BinaryOp::Div => Op::Binary(Binary::Div),
                    BinaryOp::Rem => Op::Binary(Binary::Rem),
                    BinaryOp::Pow => Op::Binary(Binary::Pow),
                    BinaryOp::Eq => Op::Binary(Binary::Eq),
                    BinaryOp::Ne => Op::Binary(Binary::Ne),
                    BinaryOp::Lt => Op::Binary(Binary::Lt),
                    BinaryOp::Le => Op::Binary(Binary::Le),
                    BinaryOp::Gt => Op::Binary(Binary::Gt),
                    BinaryOp::Ge => Op::Binary(Binary::Ge),
                    BinaryOp::And => Op::Binary(Binary::And),
                    BinaryOp::Or => Op::Binary(Binary::Or),
                    BinaryOp::Then | BinaryOp::From => return Err(self.op_error(frame, op, span)),
                };
                Ok(RValue::Tensor(self.node(op, vec![a, b], frame, span)?))
            }
        }
    }

    /// One prefix operator applied to an elaborated value.
    fn unary(&mut self, op: UnaryOp, v: RValue, frame: &mut Frame, span: Span) -> Result<RValue, Error> {
        match (op, v) {
            (_, RValue::Static(s)) => {
                let scope = frame.scope(self);
                let zero = Value::Int(0);
                match op {
                    UnaryOp::Neg => scope.apply_binary(BinaryOp::Sub, zero, s, span, span).map(RValue::Static),
                    UnaryOp::Not => match s {
                        Value::Bool(b) => Ok(RValue::Static(Value::Bool(!b))),
                        other => Err(scope.type_error(format!("`not` needs a bool, found {}", other.kind()), span)),
                    },
                }
            }
            (UnaryOp::Neg, RValue::Dim(d)) => Ok(RValue::Dim(d.neg())),
            (UnaryOp::Neg, RValue::Tensor(t)) => {
                Ok(RValue::Tensor(self.node(Op::Unary(Unary::Neg), vec![t], frame, span)?))
            }
            (UnaryOp::Not, RValue::Tensor(t)) => {
                Ok(RValue::Tensor(self.node(Op::Unary(Unary::Not), vec![t], frame, span)?))
            }
            _ => Err(self.err(frame, Diagnostic::error("this operator does not apply here", span).with_label("here"))),
        }
    }

    fn op_error(&self, frame: &Frame, op: BinaryOp, span: Span) -> Error {
        self.err(
            frame,
            Diagnostic::error(format!("`{}` does not apply to these values", op.symbol()), span).with_label("here"),
        )
    }

    /// A tensor for an operand: tensors as they are, numbers as scalars of `dtype`
    /// (default: the activation dtype, or `i32` for a dim).
    fn tensor_like(&mut self, v: RValue, dtype: Option<DType>, frame: &Frame, span: Span) -> Result<ValueId, Error> {
        match v {
            RValue::Tensor(t) => Ok(t),
            RValue::Static(Value::Int(i)) => Ok(self.scalar(i as f64, dtype.unwrap_or(DType::I32), frame)),
            RValue::Static(Value::Float(x)) => match dtype {
                Some(d) if !d.is_float() && x.fract() != 0.0 => Err(self.err(
                    frame,
                    Diagnostic::error(format!("{x:?} does not fit a {} tensor", d.name()), span)
                        .with_label("fractional number")
                        .with_help("cast the tensor to a float dtype first, as in `cast(x, f32)`"),
                )),
                _ => Ok(self.scalar(x, dtype.unwrap_or(self.act), frame)),
            },
            RValue::Static(Value::Bool(b)) => Ok(self.scalar(f64::from(u8::from(b)), DType::Bool, frame)),
            RValue::Dim(d) => match d.as_constant() {
                Some(c) => Ok(self.scalar(c as f64, dtype.unwrap_or(DType::I32), frame)),
                None => Err(self.err(
                    frame,
                    Diagnostic::error(format!("the dim {d} is only known at run time here"), span)
                        .with_label("symbolic dim")
                        .with_help("use it in shapes, `arange` or `reshape`; as a number, take it from a tensor"),
                )),
            },
            RValue::Static(other) => Err(self.err(
                frame,
                Diagnostic::error(format!("expected a tensor or a number, found {}", other.kind()), span)
                    .with_label("here"),
            )),
            RValue::Route { .. } => Err(self.err(
                frame,
                Diagnostic::error("expected a tensor, found a route", span)
                    .with_label("here")
                    .with_help("use a route with `moe_dispatch`, `moe_combine`, `moe_balance`, `.load` or `.overflow`"),
            )),
            RValue::Tuple(_) | RValue::List(_) => Err(self.err(
                frame,
                Diagnostic::error("expected a tensor, found a tuple or list", span)
                    .with_label("here")
                    .with_help("take it apart first: `a, b = ...`"),
            )),
        }
    }

    fn call(&mut self, callee: &Expr, args: &[ast::Arg], frame: &mut Frame, span: Span) -> Result<RValue, Error> {
        let ExprKind::Name(f) = &callee.kind else {
            return Err(self.err(
                frame,
                Diagnostic::error("only named blocks and primitives can be called", callee.span).with_label("here"),
            ));
        };
        let sub = if frame.locals.contains_key(&f.name) {
            None
        } else {
            frame.instance.members.iter().find_map(|m| match m {
                Member::Sub(s) if s.name == f.name => Some(s),
                _ => None,
            })
        };
        let mut values = Vec::with_capacity(args.len());
        for a in args {
            let value = match (&a.name, &a.value.kind, sub) {
                // A primitive's option may be a bare word (`gelu(x, approx: tanh)`).
                (Some(_), ExprKind::Name(n), None) => {
                    self.expr(&a.value, frame).unwrap_or_else(|_| RValue::Static(Value::Symbol(n.name.clone())))
                }
                _ => self.expr(&a.value, frame)?,
            };
            values.push((a.name.as_ref().map(|n| n.name.clone()), value, a.value.span));
        }
        match sub {
            Some(sub) => self.call_sub(&f.name, sub, &values, frame, span),
            None => self.primitive(&f.name, f.span, &values, frame, span),
        }
    }

    /// Inlines a call of sub-block `sub`; `repeat` copies run in order, the first
    /// positional argument flowing through them and the rest going to each.
    fn call_sub(
        &mut self,
        name: &str,
        sub: &super::instance::Sub,
        args: &[(Option<String>, RValue, Span)],
        frame: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        match sub.copies {
            None => {
                let out = self.call_instance(&sub.instance, frame.join(name), args, frame, span)?;
                match &frame.instance.prompt {
                    Some(site) if site.after == name => self.prepend_prompt(out, site, frame, span),
                    _ => Ok(out),
                }
            }
            Some((CopiesKind::Repeat, n)) => {
                if !args.iter().any(|a| a.0.is_none()) {
                    return Err(self.err(
                        frame,
                        Diagnostic::error(
                            format!("`{name}` repeats a block: pass what flows through the copies positionally"),
                            span,
                        )
                        .with_label("no positional argument")
                        .with_help(format!(
                            "each copy's output is the next copy's first positional argument, as in `{name}(x)`"
                        )),
                    ));
                }
                let mut args = args.to_vec();
                let mut out = RValue::Static(Value::None);
                for i in 0..n {
                    out = self.call_instance(&sub.instance, format!("{}.{i}", frame.join(name)), &args, frame, span)?;
                    if let Some(first) = args.iter_mut().find(|a| a.0.is_none()) {
                        first.1 = out.clone();
                    }
                }
                Ok(out)
            }
            Some((CopiesKind::Stack, n)) => self.call_stacked(sub, n, args, frame, span),
        }
    }

    /// P-tuning: the embedding `[B, T, d]` with the prompt encoder's `[n, d]` in front,
    /// `[B, n + T, d]`.
    fn prepend_prompt(
        &mut self,
        embedded: RValue,
        site: &super::instance::PromptSite,
        frame: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        let RValue::Tensor(e) = embedded else {
            return Err(
                self.err(frame, Diagnostic::error("P-tuning's embedding returned no tensor", span).with_label("here"))
            );
        };
        let shape = self.ty(e).shape.clone();
        if shape.len() != 3 {
            return Err(self.err(
                frame,
                Diagnostic::error(
                    format!("P-tuning needs the embedding to give `[B, T, d]`, it gives {}", self.ty(e).shape_text()),
                    span,
                )
                .with_label("embedding called here"),
            ));
        }
        let encoder = frame.instance.members.iter().find_map(|m| match m {
            Member::Sub(s) if s.name == site.encoder => Some(s),
            _ => None,
        });
        let Some(encoder) = encoder else {
            return Err(
                self.err(frame, Diagnostic::error("P-tuning's prompt encoder is missing", span).with_label("here"))
            );
        };
        let RValue::Tensor(p) = self.call_sub(&site.encoder, encoder, &[], frame, span)? else {
            return Err(
                self.err(frame, Diagnostic::error("the prompt encoder returned no tensor", span).with_label("here"))
            );
        };
        let n = Dim::constant(site.tokens);
        let one = self.node(
            Op::Reshape { shape: vec![Dim::constant(1), n.clone(), shape[2].clone()] },
            vec![p],
            frame,
            span,
        )?;
        let wide =
            self.node(Op::Broadcast { shape: vec![shape[0].clone(), n, shape[2].clone()] }, vec![one], frame, span)?;
        Ok(RValue::Tensor(self.node(Op::Concat { axis: 1 }, vec![wide, e], frame, span)?))
    }

    /// P-tuning: the model's output without the virtual positions (axis 1 from `n`).
    fn drop_prompt(
        &mut self,
        out: RValue,
        site: &super::instance::PromptSite,
        frame: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        let n = Dim::constant(site.tokens);
        match out {
            RValue::Tensor(t) if self.ty(t).rank() >= 2 && self.ty(t).shape[1].sub(&n).is_symbolic() => {
                let end = self.ty(t).shape[1].clone();
                Ok(RValue::Tensor(self.node(Op::Slice { axis: 1, start: n, end }, vec![t], frame, span)?))
            }
            _ => Err(self.err(
                frame,
                Diagnostic::error("P-tuning needs a model whose output has a position axis (`[B, T, ...]`)", span)
                    .with_label("this output")
                    .with_help("the virtual tokens are dropped from axis 1 of the output"),
            )),
        }
    }

    /// The capacity `ceil(cf · k · N / E)` as a dim: a constant when `N` is, otherwise
    /// a named dim whose formula the graph records.
    fn capacity_dim(&mut self, cf: f64, k: i64, n: &Dim, e: &Dim) -> Dim {
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

    /// Calls `stack(n)` copies: elaborates one copy on per-copy types (so errors show
    /// one expert's shapes), then lifts every node that depends on the stacked inputs or
    /// parameters to a leading copy axis `n`, like `vmap`.
    fn call_stacked(
        &mut self,
        sub: &super::instance::Sub,
        n: i64,
        args: &[(Option<String>, RValue, Span)],
        frame: &Frame,
        span: Span,
    ) -> Result<RValue, Error> {
        let prefix = frame.join(&sub.name);
        let start = self.graph.nodes.len();
        let (aux_before, metrics_before) = (self.graph.aux_losses.len(), self.graph.metrics.len());
        let mut placeholders: HashMap<ValueId, ValueId> = HashMap::new();
        let mut per_copy = Vec::with_capacity(args.len());
        for (name, v, s) in args {
            let v = match v {
                RValue::Tensor(t) => {
                    let ty = self.ty(*t).clone();
                    if ty.shape.first().and_then(|d| d.as_constant()) != Some(n) {
                        return Err(self.err(
                            frame,
                            Diagnostic::error(
                                format!(
                                    "`{}` has {n} stacked copies: its input needs a leading dim {n}, found {}",
                                    sub.name,
                                    ty.shape_text()
                                ),
                                *s,
                            )
                            .with_label("no copy axis")
                            .with_help(format!("give each copy its slice along a first axis of size {n}")),
                        ));
                    }
                    let one = TensorType::new(ty.dtype, ty.shape[1..].to_vec());
                    let ph = self.graph.push(Op::Input { name: "<copy>".into() }, Vec::new(), one, &prefix);
                    placeholders.insert(ph, *t);
                    RValue::Tensor(ph)
                }
                other => other.clone(),
            };
            per_copy.push((name.clone(), v, *s));
        }
        let result = self.call_instance(&sub.instance, prefix.clone(), &per_copy, frame, span)?;
        if self.graph.aux_losses.len() != aux_before || self.graph.metrics.len() != metrics_before {
            return Err(self.err(
                frame,
                Diagnostic::error("`aux_loss` and `metric` inside stacked copies are not supported", span)
                    .with_label("here"),
            ));
        }
        // Rebuild the nodes of the call, lifted.
        let old: Vec<crate::graph::Node> = self.graph.nodes.drain(start..).collect();
        let mut map: HashMap<ValueId, (ValueId, bool)> = HashMap::new();
        for (i, node) in old.into_iter().enumerate() {
            let id = ValueId((start + i) as u32);
            if let Some(real) = placeholders.get(&id) {
                map.insert(id, (*real, true));
                continue;
            }
            let mapped: Vec<(ValueId, bool)> =
                node.args.iter().map(|a| map.get(a).copied().unwrap_or((*a, false))).collect();
            let lifted = match &node.op {
                Op::Param { name } => {
                    let mut shape = vec![Dim::constant(n)];
                    shape.extend(node.ty.shape.iter().cloned());
                    let v = self.graph.push(
                        Op::Param { name: name.clone() },
                        Vec::new(),
                        TensorType::new(node.ty.dtype, shape),
                        "",
                    );
                    self.params.insert(name.clone(), v);
                    map.insert(id, (v, true));
                    continue;
                }
                _ if !mapped.iter().any(|(_, l)| *l) => {
                    let v = self.graph.push(
                        node.op.clone(),
                        mapped.iter().map(|(a, _)| *a).collect(),
                        node.ty.clone(),
                        &node.scope,
                    );
                    map.insert(id, (v, false));
                    continue;
                }
                op => self.lift(op, &node, &mapped, n, frame, span)?,
            };
            map.insert(id, (lifted, true));
        }
        fn remap(v: RValue, map: &HashMap<ValueId, (ValueId, bool)>) -> RValue {
            match v {
                RValue::Tensor(t) => RValue::Tensor(map.get(&t).map_or(t, |m| m.0)),
                RValue::Tuple(items) => RValue::Tuple(items.into_iter().map(|i| remap(i, map)).collect()),
                RValue::List(items) => RValue::List(items.into_iter().map(|i| remap(i, map)).collect()),
                other => other,
            }
        }
        Ok(remap(result, &map))
    }

    /// One node of a stacked call with a leading copy axis: lifted operands get unit
    /// axes up to the node's rank, and axis attributes shift by one.
    fn lift(
        &mut self,
        op: &Op,
        node: &crate::graph::Node,
        args: &[(ValueId, bool)],
        n: i64,
        frame: &Frame,
        span: Span,
    ) -> Result<ValueId, Error> {
        let rank = node.ty.rank();
        let Some(lifted_op) = op.batched(&Dim::constant(n)) else {
            return Err(self.err(
                frame,
                Diagnostic::error(format!("`{}` inside stacked copies is not supported yet", op.name()), span)
                    .with_label("in this stacked call")
                    .with_help("stacked copies (experts) may use elementwise ops, reductions, movement and `@`"),
            ));
        };
        let mut ids = Vec::with_capacity(args.len());
        for (i, (a, lifted)) in args.iter().enumerate() {
            // The table of an embedding stays shared; its ids carry the copy axis.
            let target = if matches!(op, Op::Embedding) && i == 0 { None } else { Some(rank) };
            let a = match (lifted, target) {
                (true, Some(r)) => {
                    let ty = self.ty(*a).clone();
                    let per_copy_rank = ty.rank() - 1;
                    // Operands that broadcast (elementwise ops, `@`'s batch dims, `broadcast`)
                    // get unit axes after the copy axis up to the node's rank, so that the
                    // copy axis stays leading; other operands keep their own rank (a
                    // reshape's, an embedding's ids).
                    let broadcasts = op.is_elementwise() || matches!(op, Op::MatMul | Op::Broadcast { .. });
                    let aligned_rank = if broadcasts { r } else { per_copy_rank };
                    if per_copy_rank < aligned_rank {
                        let mut shape = vec![ty.shape[0].clone()];
                        shape.extend(std::iter::repeat_n(Dim::constant(1), aligned_rank - per_copy_rank));
                        shape.extend(ty.shape[1..].iter().cloned());
                        self.graph.push(
                            Op::Reshape { shape: shape.clone() },
                            vec![*a],
                            TensorType::new(ty.dtype, shape),
                            &node.scope,
                        )
                    } else {
                        *a
                    }
                }
                (true, None) => {
                    return Err(self.err(
                        frame,
                        Diagnostic::error("a stacked embedding table is not supported yet", span).with_label("here"),
                    ));
                }
                (false, _) => *a,
            };
            ids.push(a);
        }
        let types: Vec<&TensorType> = ids.iter().map(|a| self.graph.ty(*a)).collect();
        let ty = lifted_op.infer(&types).map_err(|why| {
            self.err(
                frame,
                Diagnostic::error(format!("stacked copies: {why}"), span).with_label("while lifting this call"),
            )
        })?;
        Ok(self.graph.push(lifted_op, ids, ty, &node.scope))
    }

    // ------------------------------------------------------------ primitives

    fn primitive(
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
const PRIMITIVES: &[&str] = &[
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
const NOT_YET: &[&str] = &["topk", "one_hot", "gather", "scatter_add", "cumsum", "pad", "reshape", "transpose", "rope"];

/// Integers known at compile time: `1`, `(0, 1)` or `[0, 1]`, written inline or bound
/// to a name.
fn static_ints(v: &RValue) -> Option<Vec<i64>> {
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
const SIGNATURES: &[(&str, usize, &[&str])] = &[
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

fn member_name(m: &Member) -> Option<&str> {
    match m {
        Member::Weight(w) => Some(&w.name),
        Member::Buffer { name } => Some(name),
        Member::Sub(s) => Some(&s.name),
        Member::Unused(_) => None,
    }
}

fn dtype_written(ty: &ast::Type) -> Option<&ast::Ident> {
    match &ty.kind {
        TypeKind::Tensor { dtype, .. } => dtype.as_ref(),
        _ => None,
    }
}

/// Integer division rounding towards negative infinity, as compile-time `/` does.
pub fn floor_div(a: i64, b: i64) -> i64 {
    let q = a / b;
    if a % b != 0 && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

fn dim_binary(op: BinaryOp, a: &Dim, b: &Dim) -> Option<Dim> {
    match op {
        BinaryOp::Add => Some(a.add(b)),
        BinaryOp::Sub => Some(a.sub(b)),
        BinaryOp::Mul => Some(a.mul(b)),
        BinaryOp::Div => a.div_exact(b),
        _ => None,
    }
}

/// The expression of buffer `name`, in the `if` branches that instantiation took.
fn find_buffer(members: &[ast::Member], name: &str, scope: &Scope) -> Result<Option<Expr>, Error> {
    for m in members {
        match &m.kind {
            MemberKind::Buffer { name: n, value } if n.name == name => return Ok(Some(value.clone())),
            MemberKind::If { cond, then, otherwise } => {
                let found = if scope.condition(cond)? {
                    find_buffer(then, name, scope)?
                } else {
                    match otherwise {
                        Some(ast::Else::If(inner)) => find_buffer(std::slice::from_ref(inner), name, scope)?,
                        Some(ast::Else::Body(body)) => find_buffer(body, name, scope)?,
                        None => None,
                    }
                };
                if found.is_some() {
                    return Ok(found);
                }
            }
            _ => {}
        }
    }
    Ok(None)
}
