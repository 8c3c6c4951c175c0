//! Reverse-mode autodiff on the Graph IR: a graph whose output is a scalar loss → the
//! same graph extended with the backward pass, with `grads` naming each parameter's
//! gradient. The backward is made of ordinary Graph IR nodes, so every later stage (the
//! interpreter, passes, backends) runs it like any other graph.
//!
//! `vjp` is one exhaustive match over `Op`: each arm emits the op's vector-Jacobian
//! product. An op without a gradient says so in its own arm, as an error naming it.

use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Op, Reduce, Unary};
use crate::graph::types::{DType, TensorType};
use crate::graph::{Graph, ValueId};

/// Extends `graph` (scalar loss in `outputs[0]`) with the backward pass; the gradient of
/// every parameter is in `grads`, in parameter order.
pub fn differentiate(graph: Graph) -> Result<Graph, String> {
    differentiate_seeded(graph, None)
}

/// The name of the scalar input that seeds the backward pass under loss scaling.
pub const LOSS_SCALE: &str = "loss_scale";

/// `differentiate` with the backward pass seeded by the f32 scalar input `LOSS_SCALE`
/// instead of 1, so every gradient comes out multiplied by the loss scale (mixed
/// precision: small cotangents stay representable in f16).
pub fn differentiate_scaled(graph: Graph) -> Result<Graph, String> {
    differentiate_seeded(graph, Some(LOSS_SCALE))
}

fn differentiate_seeded(graph: Graph, seed_input: Option<&str>) -> Result<Graph, String> {
    differentiate_params(graph, seed_input, &|_| true, None)
}

/// What a recomputed copy's scope ends with (`blocks.3.attn.recompute`): the copies are
/// duplicates on purpose, which `passes::cse` must not merge back into the originals.
pub const RECOMPUTE_SUFFIX: &str = ".recompute";

/// The segment a node belongs to under `recompute = name`: its scope up to the sub-block
/// `name` and, inside a `repeat`, the copy number (`blocks.3` of `blocks.3.attn.wq`).
pub fn recompute_segment(scope: &str, name: &str) -> Option<String> {
    let parts: Vec<&str> = scope.split('.').collect();
    let at = parts.iter().position(|p| *p == name)?;
    let end = if parts.get(at + 1).is_some_and(|p| p.parse::<u64>().is_ok()) { at + 2 } else { at + 1 };
    Some(parts[..end].join("."))
}

/// The backward pass for the parameters `trainable` accepts: frozen ones (a LoRA's base)
/// are constants to it, get no gradient and cost no backward nodes of their own. The
/// backward is seeded by the scalar input `seed_input`, or 1.
///
/// `recompute = Some(name)` is activation checkpointing: the backward does not read the
/// values made inside each `name` sub-block (each copy of a `repeat` is one segment);
/// just before the segment's first vector-Jacobian product, its forward is emitted again
/// from its inputs, and the products read the copies. The originals then die with the
/// forward pass; only the segments' inputs stay live. The copies are the same ops on the
/// same values (dropout and noise replay their keys), so the gradients are bit-identical.
pub fn differentiate_params(
    mut graph: Graph,
    seed_input: Option<&str>,
    trainable: &dyn Fn(&str) -> bool,
    recompute: Option<&str>,
) -> Result<Graph, String> {
    let loss = *graph.outputs.first().ok_or("the graph has no output to differentiate")?;
    if graph.ty(loss).rank() != 0 || !graph.ty(loss).dtype.is_float() {
        return Err(format!("autodiff needs a float scalar loss, found {}", graph.ty(loss)));
    }
    let n = graph.nodes.len();
    // Which values depend on a parameter through float arithmetic: only they need grads.
    let mut needs = vec![false; n];
    for i in 0..n {
        let node = &graph.nodes[i];
        needs[i] = node.ty.dtype.is_float()
            && (matches!(&node.op, Op::Param { name } if trainable(name))
                || node.args.iter().any(|a| needs[a.0 as usize]));
    }
    let mut grads: Vec<Option<ValueId>> = vec![None; n];
    let mut b = Builder { g: &mut graph };
    grads[loss.0 as usize] = Some(match seed_input {
        None => b.scalar(1.0, DType::F32),
        Some(name) => {
            b.g.push(Op::Input { name: name.to_string() }, Vec::new(), TensorType::scalar(DType::F32), "grad")
        }
    });
    // Which recompute segment each forward value belongs to (leaves belong to none: they
    // are the caller's buffers or constants).
    let segment: Vec<Option<String>> = b.g.nodes[..n]
        .iter()
        .map(|node| match recompute {
            Some(name) if !node.op.is_leaf() => recompute_segment(&node.scope, name),
            _ => None,
        })
        .collect();
    if let Some(name) = recompute {
        if segment.iter().all(Option::is_none) {
            let mut blocks: Vec<&str> =
                b.g.nodes
                    .iter()
                    .flat_map(|n| n.scope.split('.'))
                    .filter(|p| !p.is_empty() && p.parse::<u64>().is_err())
                    .collect();
            blocks.sort();
            blocks.dedup();
            return Err(format!(
                "`recompute = {name}` names no sub-block of the model; its sub-blocks: {}",
                blocks.join(", ")
            ));
        }
    }
    // The value the backward reads for each forward value: itself, or its recomputed copy.
    let mut value: Vec<ValueId> = (0..n as u32).map(ValueId).collect();
    let mut recomputed = std::collections::HashSet::new();
    for i in (0..n).rev() {
        let Some(gout) = grads[i] else { continue };
        if !needs[i] {
            continue;
        }
        let node = b.g.nodes[i].clone();
        let want: Vec<bool> = node.args.iter().map(|a| needs[a.0 as usize]).collect();
        if !want.iter().any(|w| *w) {
            continue;
        }
        if let Some(seg) = &segment[i] {
            if recomputed.insert(seg.clone()) {
                for j in 0..n {
                    if segment[j].as_ref() != Some(seg) {
                        continue;
                    }
                    let copy = b.g.nodes[j].clone();
                    let args = copy.args.iter().map(|a| value[a.0 as usize]).collect();
                    value[j] = b.g.push(copy.op, args, copy.ty, &format!("{}{RECOMPUTE_SUFFIX}", copy.scope));
                }
            }
        }
        if !node.op.has_gradient() {
            return Err(format!("the gradient of `{}` is not derived yet", node.op.name()));
        }
        let args: Vec<ValueId> = node.args.iter().map(|a| value[a.0 as usize]).collect();
        let arg_grads = b.vjp(value[i], &node.op, &args, &want, gout, &node.scope)?;
        for ((arg, ga), w) in node.args.iter().zip(arg_grads).zip(&want) {
            let (Some(ga), true) = (ga, w) else { continue };
            let slot = &mut grads[arg.0 as usize];
            *slot = Some(match *slot {
                Some(prev) => b.push(Op::Binary(Binary::Add), vec![prev, ga], &node.scope)?,
                None => ga,
            });
        }
    }
    let mut out = Vec::new();
    for (i, grad) in grads.iter().enumerate() {
        if let Op::Param { name } = &b.g.nodes[i].op {
            if !trainable(name) {
                continue;
            }
            let name = name.clone();
            let grad = match *grad {
                Some(g) => g,
                // A parameter the loss does not use gets a zero gradient.
                None => {
                    let ty = b.g.nodes[i].ty.clone();
                    let zero = b.scalar(0.0, ty.dtype);
                    b.push(Op::Broadcast { shape: ty.shape }, vec![zero], "grad")?
                }
            };
            out.push((name, grad));
        }
    }
    graph.grads = out;
    Ok(graph)
}

struct Builder<'g> {
    g: &'g mut Graph,
}

impl Builder<'_> {
    fn ty(&self, v: ValueId) -> TensorType {
        self.g.ty(v).clone()
    }

    /// Appends a node, its type from the op's shape rule.
    fn push(&mut self, op: Op, args: Vec<ValueId>, scope: &str) -> Result<ValueId, String> {
        let types: Vec<&TensorType> = args.iter().map(|a| self.g.ty(*a)).collect();
        let ty = op.infer(&types).map_err(|e| format!("autodiff of {}: {e}", scope))?;
        Ok(self.g.push(op, args, ty, scope))
    }

    fn scalar(&mut self, v: f64, dtype: DType) -> ValueId {
        self.g.push(Op::Scalar { value: v }, Vec::new(), TensorType::scalar(dtype), "grad")
    }

    fn bin(&mut self, b: Binary, x: ValueId, y: ValueId, s: &str) -> Result<ValueId, String> {
        self.push(Op::Binary(b), vec![x, y], s)
    }

    fn un(&mut self, u: Unary, x: ValueId, s: &str) -> Result<ValueId, String> {
        self.push(Op::Unary(u), vec![x], s)
    }

    /// `x * c` for a number `c`, in `x`'s dtype.
    fn scale(&mut self, x: ValueId, c: f64, s: &str) -> Result<ValueId, String> {
        let c = self.scalar(c, self.ty(x).dtype);
        self.bin(Binary::Mul, x, c, s)
    }

    fn zeros_like(&mut self, x: ValueId, s: &str) -> Result<ValueId, String> {
        let ty = self.ty(x);
        let zero = self.scalar(0.0, ty.dtype);
        self.push(Op::Broadcast { shape: ty.shape }, vec![zero], s)
    }

    /// Sums a gradient over the axes that broadcasting added or stretched, back to `to`.
    fn unbroadcast(&mut self, grad: ValueId, to: &TensorType, s: &str) -> Result<ValueId, String> {
        let gt = self.ty(grad);
        if gt.shape == to.shape {
            return Ok(grad);
        }
        let extra = gt.rank() - to.rank();
        let mut v = grad;
        if extra > 0 {
            v = self.push(Op::Reduce { kind: Reduce::Sum, axes: (0..extra).collect(), keepdim: false }, vec![v], s)?;
        }
        let one = Dim::constant(1);
        let stretched: Vec<usize> =
            (0..to.rank()).filter(|&i| to.shape[i] == one && self.ty(v).shape[i] != one).collect();
        if !stretched.is_empty() {
            v = self.push(Op::Reduce { kind: Reduce::Sum, axes: stretched, keepdim: true }, vec![v], s)?;
        }
        Ok(v)
    }

    /// A reduced gradient broadcast back over the reduced axes of `x`.
    fn expand(
        &mut self,
        g: ValueId,
        x: &TensorType,
        axes: &[usize],
        keepdim: bool,
        s: &str,
    ) -> Result<ValueId, String> {
        let mut v = g;
        if !keepdim {
            let kept: Vec<Dim> =
                (0..x.rank()).map(|i| if axes.contains(&i) { Dim::constant(1) } else { x.shape[i].clone() }).collect();
            v = self.push(Op::Reshape { shape: kept }, vec![v], s)?;
        }
        self.push(Op::Broadcast { shape: x.shape.clone() }, vec![v], s)
    }

    fn swap_last(&mut self, x: ValueId, s: &str) -> Result<ValueId, String> {
        let r = self.ty(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.push(Op::Transpose { perm }, vec![x], s)
    }

    fn sum_keep(&mut self, x: ValueId, axis: usize, s: &str) -> Result<ValueId, String> {
        self.push(Op::Reduce { kind: Reduce::Sum, axes: vec![axis], keepdim: true }, vec![x], s)
    }

    /// The gradient of each argument (`None` where not wanted or not differentiable).
    fn vjp(
        &mut self,
        out: ValueId,
        op: &Op,
        args: &[ValueId],
        want: &[bool],
        g: ValueId,
        s: &str,
    ) -> Result<Vec<Option<ValueId>>, String> {
        let a = |i: usize| args[i];
        Ok(match op {
            Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } | Op::Scalar { .. } | Op::Arange { .. } => {
                Vec::new()
            }
            Op::Unary(u) => {
                let x = a(0);
                let d = match u {
                    Unary::Neg => return Ok(vec![Some(self.un(Unary::Neg, g, s)?)]),
                    // d/dx e^x = e^x, the output.
                    Unary::Exp => out,
                    Unary::Log => {
                        let one = self.scalar(1.0, self.ty(x).dtype);
                        self.bin(Binary::Div, one, x, s)?
                    }
                    Unary::Sqrt => {
                        let half = self.scalar(0.5, self.ty(x).dtype);
                        self.bin(Binary::Div, half, out, s)?
                    }
                    // d/dx x^(-1/2) = -1/2 · out³.
                    Unary::Rsqrt => {
                        let sq = self.bin(Binary::Mul, out, out, s)?;
                        let cube = self.bin(Binary::Mul, sq, out, s)?;
                        self.scale(cube, -0.5, s)?
                    }
                    Unary::Tanh => {
                        let sq = self.bin(Binary::Mul, out, out, s)?;
                        let one = self.scalar(1.0, self.ty(x).dtype);
                        self.bin(Binary::Sub, one, sq, s)?
                    }
                    Unary::Erf => {
                        let sq = self.bin(Binary::Mul, x, x, s)?;
                        let neg = self.un(Unary::Neg, sq, s)?;
                        let e = self.un(Unary::Exp, neg, s)?;
                        self.scale(e, 2.0 / std::f64::consts::PI.sqrt(), s)?
                    }
                    Unary::Sigmoid => {
                        let one = self.scalar(1.0, self.ty(x).dtype);
                        let c = self.bin(Binary::Sub, one, out, s)?;
                        self.bin(Binary::Mul, out, c, s)?
                    }
                    Unary::Sin => self.un(Unary::Cos, x, s)?,
                    Unary::Cos => {
                        let sin = self.un(Unary::Sin, x, s)?;
                        self.un(Unary::Neg, sin, s)?
                    }
                    Unary::Abs | Unary::Relu => {
                        let zero = self.scalar(0.0, self.ty(x).dtype);
                        let pos = self.bin(Binary::Gt, x, zero, s)?;
                        let one = self.scalar(1.0, self.ty(x).dtype);
                        let other = if *u == Unary::Relu { 0.0 } else { -1.0 };
                        let other = self.scalar(other, self.ty(x).dtype);
                        self.push(Op::Where, vec![pos, one, other], s)?
                    }
                    // silu' = σ(x) (1 + x (1 - σ(x))).
                    Unary::Silu => {
                        let sg = self.un(Unary::Sigmoid, x, s)?;
                        let one = self.scalar(1.0, self.ty(x).dtype);
                        let c = self.bin(Binary::Sub, one, sg, s)?;
                        let xc = self.bin(Binary::Mul, x, c, s)?;
                        let t = self.bin(Binary::Add, one, xc, s)?;
                        self.bin(Binary::Mul, sg, t, s)?
                    }
                    // gelu' = Φ(x) + x φ(x).
                    Unary::Gelu => {
                        let inv = self.scale(x, std::f64::consts::FRAC_1_SQRT_2, s)?;
                        let erf = self.un(Unary::Erf, inv, s)?;
                        let one = self.scalar(1.0, self.ty(x).dtype);
                        let t = self.bin(Binary::Add, one, erf, s)?;
                        let cdf = self.scale(t, 0.5, s)?;
                        let sq = self.bin(Binary::Mul, x, x, s)?;
                        let e = self.scale(sq, -0.5, s)?;
                        let e = self.un(Unary::Exp, e, s)?;
                        let pdf = self.scale(e, 1.0 / (2.0 * std::f64::consts::PI).sqrt(), s)?;
                        let xp = self.bin(Binary::Mul, x, pdf, s)?;
                        self.bin(Binary::Add, cdf, xp, s)?
                    }
                    // With t = tanh(c (x + 0.044715 x³)):
                    // 0.5 (1 + t) + 0.5 x (1 - t²) c (1 + 3 · 0.044715 x²).
                    Unary::GeluTanh => {
                        let c = (2.0 / std::f64::consts::PI).sqrt();
                        let sq = self.bin(Binary::Mul, x, x, s)?;
                        let cube = self.bin(Binary::Mul, sq, x, s)?;
                        let k = self.scale(cube, 0.044715, s)?;
                        let inner = self.bin(Binary::Add, x, k, s)?;
                        let inner = self.scale(inner, c, s)?;
                        let t = self.un(Unary::Tanh, inner, s)?;
                        let one = self.scalar(1.0, self.ty(x).dtype);
                        let left = self.bin(Binary::Add, one, t, s)?;
                        let left = self.scale(left, 0.5, s)?;
                        let t2 = self.bin(Binary::Mul, t, t, s)?;
                        let sech = self.bin(Binary::Sub, one, t2, s)?;
                        let sq3 = self.scale(sq, 3.0 * 0.044715, s)?;
                        let poly = self.bin(Binary::Add, one, sq3, s)?;
                        let r = self.bin(Binary::Mul, sech, poly, s)?;
                        let r = self.bin(Binary::Mul, x, r, s)?;
                        let r = self.scale(r, 0.5 * c, s)?;
                        self.bin(Binary::Add, left, r, s)?
                    }
                    Unary::Not => return Ok(vec![None]),
                };
                vec![Some(self.bin(Binary::Mul, g, d, s)?)]
            }
            Op::Binary(bop) => {
                let (x, y) = (a(0), a(1));
                let (tx, ty) = (self.ty(x), self.ty(y));
                let (gx, gy) = match bop {
                    Binary::Add => (Some(g), Some(g)),
                    Binary::Sub => (Some(g), Some(self.un(Unary::Neg, g, s)?)),
                    Binary::Mul => {
                        let gx = if want[0] { Some(self.bin(Binary::Mul, g, y, s)?) } else { None };
                        let gy = if want[1] { Some(self.bin(Binary::Mul, g, x, s)?) } else { None };
                        (gx, gy)
                    }
                    Binary::Div => {
                        let gx = self.bin(Binary::Div, g, y, s)?;
                        let gy = if want[1] {
                            let q = self.bin(Binary::Mul, gx, out, s)?;
                            Some(self.un(Unary::Neg, q, s)?)
                        } else {
                            None
                        };
                        (Some(gx), gy)
                    }
                    // d/dx x^y = y x^(y-1) = y · out / x; d/dy = out · ln x.
                    Binary::Pow => {
                        let gx = if want[0] {
                            let one = self.scalar(1.0, ty.dtype);
                            let ym1 = self.bin(Binary::Sub, y, one, s)?;
                            let p = self.bin(Binary::Pow, x, ym1, s)?;
                            let d = self.bin(Binary::Mul, y, p, s)?;
                            Some(self.bin(Binary::Mul, g, d, s)?)
                        } else {
                            None
                        };
                        let gy = if want[1] {
                            let ln = self.un(Unary::Log, x, s)?;
                            let d = self.bin(Binary::Mul, out, ln, s)?;
                            Some(self.bin(Binary::Mul, g, d, s)?)
                        } else {
                            None
                        };
                        (gx, gy)
                    }
                    Binary::Min | Binary::Max => {
                        let pick = if *bop == Binary::Min { Binary::Le } else { Binary::Ge };
                        let first = self.bin(pick, x, y, s)?;
                        let zero = self.scalar(0.0, self.ty(g).dtype);
                        let gx = self.push(Op::Where, vec![first, g, zero], s)?;
                        let gy = self.push(Op::Where, vec![first, zero, g], s)?;
                        (Some(gx), Some(gy))
                    }
                    Binary::Rem => (Some(g), None),
                    Binary::Eq
                    | Binary::Ne
                    | Binary::Lt
                    | Binary::Le
                    | Binary::Gt
                    | Binary::Ge
                    | Binary::And
                    | Binary::Or => (None, None),
                };
                let gx = match gx {
                    Some(v) if want[0] => Some(self.unbroadcast(v, &tx, s)?),
                    _ => None,
                };
                let gy = match gy {
                    Some(v) if want[1] => Some(self.unbroadcast(v, &ty, s)?),
                    _ => None,
                };
                vec![gx, gy]
            }
            Op::Where => {
                let zero = self.scalar(0.0, self.ty(g).dtype);
                let ga = self.push(Op::Where, vec![a(0), g, zero], s)?;
                let gb = self.push(Op::Where, vec![a(0), zero, g], s)?;
                let (ta, tb) = (self.ty(a(1)), self.ty(a(2)));
                vec![None, Some(self.unbroadcast(ga, &ta, s)?), Some(self.unbroadcast(gb, &tb, s)?)]
            }
            // d/dx cap · tanh(x / cap) = 1 - (out / cap)².
            Op::Softcap { cap } => {
                let r = self.scale(out, 1.0 / cap, s)?;
                let r2 = self.bin(Binary::Mul, r, r, s)?;
                let one = self.scalar(1.0, self.ty(r).dtype);
                let d = self.bin(Binary::Sub, one, r2, s)?;
                vec![Some(self.bin(Binary::Mul, g, d, s)?)]
            }
            Op::Cast { .. } => {
                let to = self.ty(a(0)).dtype;
                vec![Some(self.push(Op::Cast { to }, vec![g], s)?)]
            }
            // The same mask (same key), the same scaling.
            Op::Dropout { p, key } => vec![Some(self.push(Op::Dropout { p: *p, key: *key }, vec![g], s)?)],
            Op::Noise { .. } => vec![Some(g)],
            Op::Reduce { kind, axes, keepdim } => {
                let tx = self.ty(a(0));
                let spread = self.expand(g, &tx, axes, *keepdim, s)?;
                let count: f64 = axes.iter().map(|&i| tx.shape[i].as_constant().unwrap_or(1) as f64).product();
                let symbolic = axes.iter().any(|&i| tx.shape[i].is_symbolic());
                let d = match kind {
                    Reduce::Sum => spread,
                    Reduce::Mean if !symbolic => self.scale(spread, 1.0 / count, s)?,
                    Reduce::Max | Reduce::Min => {
                        let o = self.expand(out, &tx, axes, *keepdim, s)?;
                        let hit = self.bin(Binary::Eq, a(0), o, s)?;
                        let zero = self.scalar(0.0, tx.dtype);
                        self.push(Op::Where, vec![hit, spread, zero], s)?
                    }
                    // d/dx logsumexp = softmax.
                    Reduce::LogSumExp => {
                        let o = self.expand(out, &tx, axes, *keepdim, s)?;
                        let diff = self.bin(Binary::Sub, a(0), o, s)?;
                        let p = self.un(Unary::Exp, diff, s)?;
                        self.bin(Binary::Mul, spread, p, s)?
                    }
                    // d/dx mean((x - m)²) = 2 (x - m) / n.
                    Reduce::Var if !symbolic => {
                        let m = self.push(
                            Op::Reduce { kind: Reduce::Mean, axes: axes.clone(), keepdim: true },
                            vec![a(0)],
                            s,
                        )?;
                        let m = self.push(Op::Broadcast { shape: tx.shape.clone() }, vec![m], s)?;
                        let c = self.bin(Binary::Sub, a(0), m, s)?;
                        let c = self.scale(c, 2.0 / count, s)?;
                        self.bin(Binary::Mul, spread, c, s)?
                    }
                    Reduce::Mean | Reduce::Var => {
                        return Err("the gradient of `mean`/`var` over a symbolic dim is not derived yet".into())
                    }
                };
                vec![Some(d)]
            }
            // dx = y ⊙ (g − Σ g ⊙ y).
            Op::Softmax { axis } => {
                let gy = self.bin(Binary::Mul, g, out, s)?;
                let sum = self.sum_keep(gy, *axis, s)?;
                let c = self.bin(Binary::Sub, g, sum, s)?;
                vec![Some(self.bin(Binary::Mul, out, c, s)?)]
            }
            // dx = g − softmax ⊙ Σ g.
            Op::LogSoftmax { axis } => {
                let p = self.un(Unary::Exp, out, s)?;
                let sum = self.sum_keep(g, *axis, s)?;
                let ps = self.bin(Binary::Mul, p, sum, s)?;
                vec![Some(self.bin(Binary::Sub, g, ps, s)?)]
            }
            Op::MatMul => {
                let (x, y) = (a(0), a(1));
                let (tx, ty) = (self.ty(x), self.ty(y));
                let gx = if want[0] {
                    let yt = self.swap_last(y, s)?;
                    let v = self.push(Op::MatMul, vec![g, yt], s)?;
                    Some(self.unbroadcast(v, &tx, s)?)
                } else {
                    None
                };
                let gy = if want[1] {
                    let xt = self.swap_last(x, s)?;
                    let v = self.push(Op::MatMul, vec![xt, g], s)?;
                    Some(self.unbroadcast(v, &ty, s)?)
                } else {
                    None
                };
                vec![gx, gy]
            }
            Op::Attention { causal, window, softcap, scale, has_bias } => {
                self.attention_vjp(args, g, *causal, *window, *softcap, *scale, *has_bias, s)?
            }
            Op::AttentionGrad { .. } => {
                return Err("the gradient of `attention_grad` (a second derivative) is not derived".into())
            }
            Op::Reshape { .. } => {
                let shape = self.ty(a(0)).shape;
                vec![Some(self.push(Op::Reshape { shape }, vec![g], s)?)]
            }
            Op::Transpose { perm } => {
                let mut inv = vec![0; perm.len()];
                for (i, p) in perm.iter().enumerate() {
                    inv[*p] = i;
                }
                vec![Some(self.push(Op::Transpose { perm: inv }, vec![g], s)?)]
            }
            Op::Slice { axis, start, end } => {
                let len = self.ty(a(0)).shape[*axis].clone();
                let (Some(before), Some(after)) = (start.as_constant(), len.sub(end).as_constant()) else {
                    return Err("the gradient of a slice with symbolic bounds is not derived yet".into());
                };
                vec![Some(self.push(Op::Pad { axis: *axis, before, after, value: 0.0 }, vec![g], s)?)]
            }
            Op::Concat { axis } => {
                let mut start = Dim::constant(0);
                let mut out_grads = Vec::new();
                for &arg in args {
                    let len = self.ty(arg).shape[*axis].clone();
                    let end = start.add(&len);
                    out_grads.push(Some(self.push(
                        Op::Slice { axis: *axis, start: start.clone(), end: end.clone() },
                        vec![g],
                        s,
                    )?));
                    start = end;
                }
                out_grads
            }
            Op::Broadcast { .. } => {
                let tx = self.ty(a(0));
                vec![Some(self.unbroadcast(g, &tx, s)?)]
            }
            Op::Pad { axis, before, .. } => {
                let len = self.ty(a(0)).shape[*axis].clone();
                let start = Dim::constant(*before);
                let end = start.add(&len);
                vec![Some(self.push(Op::Slice { axis: *axis, start, end }, vec![g], s)?)]
            }
            // d table = one_hot(ids)ᵀ @ g, rows summed where ids repeat.
            Op::Embedding => {
                let (table, ids) = (self.ty(a(0)), self.ty(a(1)));
                let (v, d) = (table.shape[0].clone(), table.shape[1].clone());
                let vocab = v.as_constant().ok_or("an embedding table with a symbolic size")?;
                let hot = self.push(Op::OneHot { n: vocab }, vec![a(1)], s)?;
                let hot = self.push(Op::Cast { to: table.dtype }, vec![hot], s)?;
                let n = ids.numel();
                let hot = self.push(Op::Reshape { shape: vec![n.clone(), v] }, vec![hot], s)?;
                let gf = self.push(Op::Reshape { shape: vec![n, d] }, vec![g], s)?;
                let ht = self.swap_last(hot, s)?;
                vec![Some(self.push(Op::MatMul, vec![ht, gf], s)?), None]
            }
            Op::Gather { axis } => {
                let zeros = self.zeros_like(a(0), s)?;
                vec![Some(self.push(Op::ScatterAdd { axis: *axis }, vec![zeros, a(1), g], s)?), None]
            }
            Op::ScatterAdd { axis } => {
                let src = if want.get(2) == Some(&true) {
                    Some(self.push(Op::Gather { axis: *axis }, vec![g, a(1)], s)?)
                } else {
                    None
                };
                vec![Some(g), None, src]
            }
            Op::TopK { k, indices: false } => {
                let idx = self.push(Op::TopK { k: *k, indices: true }, vec![a(0)], s)?;
                let zeros = self.zeros_like(a(0), s)?;
                let axis = self.ty(a(0)).rank() - 1;
                vec![Some(self.push(Op::ScatterAdd { axis }, vec![zeros, idx, g], s)?)]
            }
            Op::TopK { indices: true, .. } | Op::OneHot { .. } => vec![None],
            // The gradient of a running sum is the reversed running sum: total − cumsum + g.
            Op::Cumsum { axis } => {
                let total = self.sum_keep(g, *axis, s)?;
                let c = self.push(Op::Cumsum { axis: *axis }, vec![g], s)?;
                let t = self.bin(Binary::Sub, total, c, s)?;
                vec![Some(self.bin(Binary::Add, t, g, s)?)]
            }
            // d logits = (softmax − one_hot(target)) / count, rows of ignored targets 0.
            Op::CrossEntropy { ignore } => {
                let (logits, targets) = (a(0), a(1));
                let (tl, tt) = (self.ty(logits), self.ty(targets));
                let v =
                    tl.shape.last().and_then(|d| d.as_constant()).ok_or("cross_entropy over a symbolic vocabulary")?;
                let ign = self.scalar(*ignore as f64, tt.dtype);
                let skip = self.bin(Binary::Eq, targets, ign, s)?;
                let zero_i = self.scalar(0.0, tt.dtype);
                let safe = self.push(Op::Where, vec![skip, zero_i, targets], s)?;
                let hot = self.push(Op::OneHot { n: v }, vec![safe], s)?;
                let hot = self.push(Op::Cast { to: tl.dtype }, vec![hot], s)?;
                let p = self.push(Op::Softmax { axis: tl.rank() - 1 }, vec![logits], s)?;
                let d = self.bin(Binary::Sub, p, hot, s)?;
                let one = self.scalar(1.0, tl.dtype);
                let zero = self.scalar(0.0, tl.dtype);
                let keep = self.push(Op::Where, vec![skip, zero, one], s)?;
                let count = self.push(
                    Op::Reduce { kind: Reduce::Sum, axes: (0..tt.rank()).collect(), keepdim: false },
                    vec![keep],
                    s,
                )?;
                let count = self.bin(Binary::Max, count, one, s)?;
                let rank = tt.rank();
                let mut keep_shape = tt.shape.clone();
                keep_shape.push(Dim::constant(1));
                let keep = self.push(Op::Reshape { shape: keep_shape }, vec![keep], s)?;
                let d = self.bin(Binary::Mul, d, keep, s)?;
                let gc = self.bin(Binary::Div, g, count, s)?;
                let _ = rank;
                vec![Some(self.bin(Binary::Mul, d, gc, s)?), None]
            }
            // `has_gradient` is false: `differentiate_params` stops before asking.
            Op::Lstm { .. } => return Err("the gradient of `lstm` is not derived yet".into()),
            Op::MoeRoute { k, .. } => vec![Some(self.route_vjp(a(0), out, g, *k, s)?)],
            // d x = Σ_slots mask · g: a combine with the route's 0/1 mask.
            Op::MoeDispatch => {
                let route = a(0);
                let dt = self.ty(route).dtype;
                let zero = self.scalar(0.0, dt);
                let kept = self.bin(Binary::Ne, route, zero, s)?;
                let mask = self.push(Op::Cast { to: dt }, vec![kept], s)?;
                vec![None, Some(self.push(Op::MoeCombine, vec![mask, g], s)?)]
            }
            // d route[n,e,c] = g[n] · y[e,c]; d y[e,c] = Σ_n route[n,e,c] g[n].
            Op::MoeCombine => {
                let (route, y) = (a(0), a(1));
                let (tr, ty) = (self.ty(route), self.ty(y));
                let (n, e, c, d) = (tr.shape[0].clone(), tr.shape[1].clone(), tr.shape[2].clone(), ty.shape[2].clone());
                let ec = e.mul(&c);
                let rf = self.push(Op::Reshape { shape: vec![n.clone(), ec.clone()] }, vec![route], s)?;
                let yf = self.push(Op::Reshape { shape: vec![ec.clone(), d.clone()] }, vec![y], s)?;
                let groute = if want[0] {
                    let yt = self.swap_last(yf, s)?;
                    let m = self.push(Op::MatMul, vec![g, yt], s)?;
                    Some(self.push(Op::Reshape { shape: tr.shape.clone() }, vec![m], s)?)
                } else {
                    None
                };
                let gy = if want[1] {
                    let rt = self.swap_last(rf, s)?;
                    let m = self.push(Op::MatMul, vec![rt, g], s)?;
                    Some(self.push(Op::Reshape { shape: vec![e, c, d] }, vec![m], s)?)
                } else {
                    None
                };
                vec![groute, gy]
            }
            // E · Σ f_i P_i: f is piecewise constant; P_i = mean_n softmax(logits)[n, i].
            Op::MoeBalance { k } => {
                let logits = a(0);
                let tl = self.ty(logits);
                let (n, e) = (tl.shape[0].clone(), tl.shape[1].clone());
                let experts = e.as_constant().ok_or("MoE with a symbolic expert count")?;
                let chosen = self.chosen_mask(logits, *k, s)?;
                let f = self.push(Op::Reduce { kind: Reduce::Mean, axes: vec![0], keepdim: true }, vec![chosen], s)?;
                let f = self.scale(f, experts as f64 / *k as f64, s)?;
                // d/dp[n, i] = E f_i / N, then through the softmax.
                let p = self.push(Op::Softmax { axis: 1 }, vec![logits], s)?;
                let nt = self.tensor_of_dim(&n, tl.dtype, s)?;
                let dp = self.bin(Binary::Div, f, nt, s)?;
                let dp = self.push(Op::Broadcast { shape: tl.shape.clone() }, vec![dp], s)?;
                let dl = self.softmax_back(p, dp, 1, s)?;
                vec![Some(self.bin(Binary::Mul, dl, g, s)?), None]
            }
            // mean(lse²): d = 2 lse softmax / N.
            Op::MoeZLoss => {
                let logits = a(0);
                let tl = self.ty(logits);
                let lse =
                    self.push(Op::Reduce { kind: Reduce::LogSumExp, axes: vec![1], keepdim: true }, vec![logits], s)?;
                let p = self.push(Op::Softmax { axis: 1 }, vec![logits], s)?;
                let d = self.bin(Binary::Mul, lse, p, s)?;
                let nt = self.tensor_of_dim(&tl.shape[0], tl.dtype, s)?;
                let d = self.bin(Binary::Div, d, nt, s)?;
                let d = self.scale(d, 2.0, s)?;
                vec![Some(self.bin(Binary::Mul, d, g, s)?)]
            }
            Op::MoeLoad { .. } | Op::MoeOverflow { .. } => vec![None; args.len()],
        })
    }

    /// A dim as a scalar tensor (`N = B*T` at run time).
    fn tensor_of_dim(&mut self, d: &Dim, dtype: DType, s: &str) -> Result<ValueId, String> {
        if let Some(c) = d.as_constant() {
            return Ok(self.scalar(c as f64, dtype));
        }
        // Count the rows of a ones vector of that length: a sum the interpreter evaluates.
        let one = self.scalar(1.0, dtype);
        let ones = self.push(Op::Broadcast { shape: vec![d.clone()] }, vec![one], s)?;
        self.push(Op::Reduce { kind: Reduce::Sum, axes: vec![0], keepdim: false }, vec![ones], s)
    }

    /// `p ⊙ (dp − Σ dp ⊙ p)`: the softmax's vector-Jacobian product.
    fn softmax_back(&mut self, p: ValueId, dp: ValueId, axis: usize, s: &str) -> Result<ValueId, String> {
        let m = self.bin(Binary::Mul, dp, p, s)?;
        let sum = self.sum_keep(m, axis, s)?;
        let c = self.bin(Binary::Sub, dp, sum, s)?;
        self.bin(Binary::Mul, p, c, s)
    }

    /// 1 where expert e is among token n's top k, else 0: `[N, E]`.
    fn chosen_mask(&mut self, logits: ValueId, k: i64, s: &str) -> Result<ValueId, String> {
        let tl = self.ty(logits);
        let experts = tl.shape[1].as_constant().ok_or("MoE with a symbolic expert count")?;
        let idx = self.push(Op::TopK { k, indices: true }, vec![logits], s)?;
        let hot = self.push(Op::OneHot { n: experts }, vec![idx], s)?;
        let hot = self.push(Op::Cast { to: tl.dtype }, vec![hot], s)?;
        self.push(Op::Reduce { kind: Reduce::Sum, axes: vec![1], keepdim: false }, vec![hot], s)
    }

    /// Through `moe_route`: each kept weight is `p_e / S` with `S` the sum of the chosen
    /// experts' probabilities, so `dL/dp_j = M_j (G_j K_j / S − Σ_e G_e K_e p_e / S²)`
    /// (`G` the gradient summed over slots, `K` kept, `M` chosen), then the softmax. The
    /// routing choice itself is piecewise constant. With noisy gating `logits` are the noisy
    /// ones (a `noise` node in front), so the route is differentiated where it was taken.
    fn route_vjp(&mut self, logits: ValueId, route: ValueId, g: ValueId, k: i64, s: &str) -> Result<ValueId, String> {
        let tl = self.ty(logits);
        let dt = tl.dtype;
        let zero = self.scalar(0.0, dt);
        let assigned = self.bin(Binary::Ne, route, zero, s)?;
        let assigned = self.push(Op::Cast { to: dt }, vec![assigned], s)?;
        let ga = self.bin(Binary::Mul, g, assigned, s)?;
        let gsum = self.push(Op::Reduce { kind: Reduce::Sum, axes: vec![2], keepdim: false }, vec![ga], s)?;
        let p = self.push(Op::Softmax { axis: 1 }, vec![logits], s)?;
        let chosen = self.chosen_mask(logits, k, s)?;
        let pc = self.bin(Binary::Mul, p, chosen, s)?;
        let sum = self.sum_keep(pc, 1, s)?;
        let term1 = self.bin(Binary::Div, gsum, sum, s)?;
        let gp = self.bin(Binary::Mul, gsum, p, s)?;
        let gps = self.sum_keep(gp, 1, s)?;
        let s2 = self.bin(Binary::Mul, sum, sum, s)?;
        let term2 = self.bin(Binary::Div, gps, s2, s)?;
        let dp = self.bin(Binary::Sub, term1, term2, s)?;
        let dp = self.bin(Binary::Mul, dp, chosen, s)?;
        self.softmax_back(p, dp, 1, s)
    }

    /// Attention recomputed from primitives (scores, masks, softmax), then differentiated:
    /// dV = Pᵀ g, dP = g Vᵀ, dS = P ⊙ (dP − Σ dP ⊙ P) (times the soft-cap's derivative),
    /// dQ = dS K · scale, dK = dSᵀ Q · scale; shared K/V heads sum over their query group.
    #[allow(clippy::too_many_arguments)]
    /// The gradients of `attention`: one `attention_grad` node per argument wanted, each
    /// recomputing the scores one query row at a time (no `T × S` buffer but for a bias's
    /// gradient, which is the score gradient reduced to the bias's shape).
    #[allow(clippy::too_many_arguments)]
    fn attention_vjp(
        &mut self,
        args: &[ValueId],
        g: ValueId,
        causal: bool,
        window: Option<i64>,
        softcap: Option<f64>,
        scale: f64,
        has_bias: bool,
        s: &str,
    ) -> Result<Vec<Option<ValueId>>, String> {
        let mut operands = args.to_vec();
        operands.push(g);
        let mut out = Vec::with_capacity(args.len());
        for wrt in 0..3 {
            let op = Op::AttentionGrad { wrt, causal, window, softcap, scale, has_bias };
            out.push(Some(self.push(op, operands.clone(), s)?));
        }
        if has_bias {
            let op = Op::AttentionGrad { wrt: 3, causal, window, softcap, scale, has_bias };
            let scores = self.push(op, operands, s)?;
            let tb = self.ty(args[3]);
            out.push(Some(self.unbroadcast(scores, &tb, s)?));
        }
        Ok(out)
    }
}
