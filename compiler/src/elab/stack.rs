//! `stack(n)` calls → lifted Graph IR: one copy is elaborated on per-copy types, then
//! every node that depends on the stacked inputs or parameters gets a leading copy axis
//! through its op's batching rule (`Op::batched`), like `vmap`.

use super::forward::{Builder, Frame, RValue};
use crate::error::Error;
use crate::graph::dim::Dim;
use crate::graph::op::Op;
use crate::graph::types::TensorType;
use crate::graph::ValueId;
use modelc_grammar::ast::Span;
use modelc_grammar::Diagnostic;
use std::collections::HashMap;

impl Builder<'_> {
    /// Calls `stack(n)` copies: elaborates one copy on per-copy types (so errors show
    /// one expert's shapes), then lifts every node that depends on the stacked inputs or
    /// parameters to a leading copy axis `n`, like `vmap`.
    pub(super) fn call_stacked(
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
    pub(super) fn lift(
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
}
