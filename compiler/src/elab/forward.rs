//! A model instance's `forward` → Graph IR, with shapes as types: the entry point
//! `elaborate` and the state every part of it shares. Starting from the model's
//! `forward`, sub-block calls are inlined (`calls`), expressions evaluated (`expr`),
//! signatures unified with the values passed (`signature`), primitives built through
//! their table (`primitives`) and `stack(n)` calls lifted (`stack`). Compile-time `if`
//! elaborates only the branch taken, so the untaken one may use members that do not exist.

use super::eval::{Consts, Scope};
use super::instance::{Instance, Member};
use super::value::Value;
use crate::error::{Error, FileId};
use crate::graph::dim::Dim;
use crate::graph::op::Op;
use crate::graph::types::{DType, TensorType};
use crate::graph::{Graph, ValueId};
use crate::modules::Program;
use modelc_grammar::ast::{self, ItemKind, MemberKind, Span};
use modelc_grammar::Diagnostic;
use std::collections::HashMap;

/// A value during elaboration: a tensor in the graph, a compile-time value, a dim bound
/// by a signature, or a tuple/list of those.
#[derive(Clone, Debug)]
pub(super) enum RValue {
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

pub(super) struct Builder<'a> {
    pub(super) program: &'a Program,
    pub(super) consts: &'a Consts,
    pub(super) graph: Graph,
    /// The dtype of tensor types written without one.
    pub(super) act: DType,
    /// Parameter leaves by checkpoint name, so each parameter is one node.
    pub(super) params: HashMap<String, ValueId>,
    /// Inlining depth, to keep a pathological program from exhausting the stack.
    pub(super) depth: usize,
}

/// One inlined call: the instance, where its names come from, and what is bound.
pub(super) struct Frame<'i> {
    pub(super) instance: &'i Instance,
    pub(super) prefix: String,
    pub(super) module: usize,
    pub(super) locals: HashMap<String, (RValue, Span)>,
    pub(super) symbols: HashMap<String, Dim>,
    pub(super) ellipsis: Option<Vec<Dim>>,
    /// Buffers already built in this instance.
    pub(super) buffers: HashMap<String, RValue>,
    /// Inside an `if` condition: a compile-time position, where a block parameter wins
    /// over a member of the same name (`if bias { x + bias }` in `Linear`).
    pub(super) prefer_static: bool,
}

impl<'i> Frame<'i> {
    pub(super) fn new(instance: &'i Instance, prefix: String, b: &Builder) -> Frame<'i> {
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

    pub(super) fn file(&self, b: &Builder) -> FileId {
        b.program.file_of(self.module)
    }

    /// A compile-time scope with the instance's parameters and constants.
    pub(super) fn scope<'s>(&self, b: &'s Builder) -> Scope<'s> {
        let mut s = Scope::new(b.program, b.consts, self.module);
        s.locals = self.instance.statics.clone();
        s
    }

    pub(super) fn join(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
}

pub(super) const MAX_DEPTH: usize = 64;

impl<'a> Builder<'a> {
    pub(super) fn err(&self, frame: &Frame, diag: Diagnostic) -> Error {
        Error::new(frame.file(self), diag)
    }

    pub(super) fn forward_def(&self, instance: &Instance) -> Result<ast::Forward, Error> {
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

    pub(super) fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }

    /// Adds a node after checking its shape rule; an error names the op and both shapes.
    pub(super) fn node(&mut self, op: Op, args: Vec<ValueId>, frame: &Frame, span: Span) -> Result<ValueId, Error> {
        // Every copy of a `repeat` is elaborated: a count in the hundreds of thousands would
        // take gigabytes before anything else could say so.
        if self.graph.nodes.len() >= MAX_NODES {
            let d = Diagnostic::error(format!("the model elaborates into more than {MAX_NODES} Graph IR nodes"), span)
                .with_label("while elaborating this")
                .with_help(
                    "a `repeat` count or a configuration far larger than any real model; check the model's arguments",
                );
            return Err(self.err(frame, d));
        }
        let types: Vec<&TensorType> = args.iter().map(|a| self.graph.ty(*a)).collect();
        match op.infer(&types) {
            Ok(ty) => Ok(self.graph.push(op, args, ty, &frame.prefix)),
            Err(why) => Err(self.err(frame, Diagnostic::error(why, span).with_label("shapes do not fit"))),
        }
    }

    pub(super) fn scalar(&mut self, x: f64, dtype: DType, frame: &Frame) -> ValueId {
        self.graph.push(Op::Scalar { value: x }, Vec::new(), TensorType::scalar(dtype), &frame.prefix)
    }
}

/// The most nodes a model's forward may elaborate into: Llama-2-70B makes about 3,500;
/// a quarter of a million is past any real architecture and still fits in memory.
pub const MAX_NODES: usize = 250_000;

pub(super) fn member_name(m: &Member) -> Option<&str> {
    match m {
        Member::Weight(w) => Some(&w.name),
        Member::Buffer { name } => Some(name),
        Member::Sub(s) => Some(&s.name),
        Member::Unused(_) => None,
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
