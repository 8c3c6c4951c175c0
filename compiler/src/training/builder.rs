//! A small typed builder for graphs the compiler writes itself (the training step's
//! programs): each node's type comes from `Op::infer`, except leaves and constants, whose
//! type is declared.

use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Op, Reduce, Unary};
use crate::graph::types::{DType, TensorType};
use crate::graph::{Graph, ValueId};

pub struct Builder<'g> {
    pub graph: &'g mut Graph,
    scope: String,
}

fn dims(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::constant(d as i64)).collect()
}

impl<'g> Builder<'g> {
    pub fn new(graph: &'g mut Graph, scope: &str) -> Builder<'g> {
        Builder { graph, scope: scope.to_string() }
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }

    fn push(&mut self, op: Op, args: Vec<ValueId>) -> Result<ValueId, String> {
        let tys: Vec<&TensorType> = args.iter().map(|a| self.graph.ty(*a)).collect();
        let ty = op.infer(&tys)?;
        Ok(self.graph.push(op, args, ty, &self.scope))
    }

    /// A host input of this dtype and concrete shape.
    pub fn input(&mut self, name: &str, dtype: DType, shape: &[usize]) -> ValueId {
        self.graph.push(
            Op::Input { name: name.to_string() },
            Vec::new(),
            TensorType::new(dtype, dims(shape)),
            &self.scope,
        )
    }

    /// A persistent buffer of this dtype and shape (already-symbolic dims allowed).
    pub fn param(&mut self, name: &str, dtype: DType, shape: &[Dim]) -> ValueId {
        self.graph.push(
            Op::Param { name: name.to_string() },
            Vec::new(),
            TensorType::new(dtype, shape.to_vec()),
            &self.scope,
        )
    }

    /// An f64 constant.
    pub fn constant(&mut self, value: f64) -> ValueId {
        self.graph.push(Op::Scalar { value }, Vec::new(), TensorType::scalar(DType::F64), &self.scope)
    }

    pub fn binary(&mut self, op: Binary, a: ValueId, b: ValueId) -> Result<ValueId, String> {
        self.push(Op::Binary(op), vec![a, b])
    }

    /// `a op constant`.
    pub fn with(&mut self, op: Binary, a: ValueId, constant: f64) -> Result<ValueId, String> {
        let c = self.constant(constant);
        self.binary(op, a, c)
    }

    /// `constant op a`.
    pub fn of(&mut self, constant: f64, op: Binary, a: ValueId) -> Result<ValueId, String> {
        let c = self.constant(constant);
        self.binary(op, c, a)
    }

    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId, String> {
        self.push(Op::MatMul, vec![a, b])
    }

    pub fn unary(&mut self, op: Unary, a: ValueId) -> Result<ValueId, String> {
        self.push(Op::Unary(op), vec![a])
    }

    pub fn cast(&mut self, a: ValueId, to: DType) -> Result<ValueId, String> {
        self.push(Op::Cast { to }, vec![a])
    }

    pub fn reshape(&mut self, a: ValueId, shape: &[usize]) -> Result<ValueId, String> {
        self.push(Op::Reshape { shape: dims(shape) }, vec![a])
    }

    pub fn broadcast(&mut self, a: ValueId, shape: &[Dim]) -> Result<ValueId, String> {
        self.push(Op::Broadcast { shape: shape.to_vec() }, vec![a])
    }

    pub fn reduce(&mut self, kind: Reduce, a: ValueId, axes: Vec<usize>) -> Result<ValueId, String> {
        self.push(Op::Reduce { kind, axes, keepdim: false }, vec![a])
    }

    pub fn concat(&mut self, parts: Vec<ValueId>, axis: usize) -> Result<ValueId, String> {
        self.push(Op::Concat { axis }, parts)
    }

    pub fn select(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> Result<ValueId, String> {
        self.push(Op::Where, vec![cond, a, b])
    }
}
