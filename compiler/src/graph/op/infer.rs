//! Each op's shape rule: argument types → result type, or what is wrong, in words that
//! name both shapes; integer attributes checked for every value a symbolic dim may take.

use super::*;

fn check_axis(axis: usize, rank: usize) -> Result<(), String> {
    if axis >= rank {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(())
}

// The integer attributes of an op (counts, amounts, bounds) are checked here for every
// value a dim may take: what is wrong for all bindings is an error now, what depends on
// a symbolic dim is checked again by the interpreter when the dim is bound.

/// A count attribute (`k`, `n`, a window) must be at least 1, whatever the dims.
fn check_count(what: &str, name: &str, value: i64) -> Result<(), String> {
    if value < 1 {
        return Err(format!("`{what}` needs {name} >= 1, found {name} = {value}"));
    }
    Ok(())
}

/// A count that must also fit a dim (`topk`'s `k` in the last axis): checked now when
/// the dim is a constant, at run time otherwise.
fn check_count_within(what: &str, name: &str, value: i64, dim: &Dim, dim_name: &str) -> Result<(), String> {
    check_count(what, name, value)?;
    match dim.as_constant() {
        Some(n) if value > n => {
            Err(format!("`{what}` needs 1 <= {name} <= {dim_name}, found {name} = {value}, {dim_name} = {n}"))
        }
        _ => Ok(()),
    }
}

/// Target shapes (`reshape`, `broadcast`) cannot hold a negative constant dim: `-1` is
/// not "infer this dim" here.
fn check_shape(what: &str, shape: &[Dim]) -> Result<(), String> {
    if shape.iter().any(|d| d.as_constant().is_some_and(|c| c < 0)) {
        return Err(format!(
            "`{what}` needs dims of at least 0, found {} (write each dim, as in `[B*T, d]`)",
            shape_text(shape)
        ));
    }
    Ok(())
}

/// `0 <= start <= end <= len` wherever the difference is known now (constants, or
/// `T - 1` against `T`); the rest is checked when the dims are bound.
fn check_bounds(start: &Dim, end: &Dim, len: &Dim) -> Result<(), String> {
    let negative = |d: Dim| d.as_constant().is_some_and(|c| c < 0);
    if negative(start.clone()) || negative(end.sub(start)) || negative(len.sub(end)) {
        return Err(format!("`slice` needs 0 <= start <= end <= {len}, found start = {start}, end = {end}"));
    }
    Ok(())
}

/// `gather`/`scatter_add`: every axis but `axis` of `index` must fit in `x` (equal, `x`'s
/// dim 1 for `gather`, which broadcasts it, or smaller when both are known).
fn check_index_dims(
    what: &str,
    x: &TensorType,
    index: &TensorType,
    axis: usize,
    broadcasts: bool,
) -> Result<(), String> {
    for (i, (dx, di)) in x.shape.iter().zip(&index.shape).enumerate() {
        let fits = i == axis
            || dx == di
            || (broadcasts && dx.as_constant() == Some(1))
            || match (dx.as_constant(), di.as_constant()) {
                (Some(a), Some(b)) => b <= a,
                // Only known when bound: the interpreter checks each position.
                _ => true,
            };
        if !fits {
            return Err(format!(
                "`{what}` needs the index's dims to fit {} off axis {axis}, found {}",
                x.shape_text(),
                index.shape_text()
            ));
        }
    }
    Ok(())
}

impl Op {
    /// The shape rule: argument types → result type, or what is wrong, in words that name
    /// both shapes. Leaves (`Input`, `Param`, `Buffer`) carry their type from elaboration.
    pub fn infer(&self, args: &[&TensorType]) -> Result<TensorType, String> {
        let arity = |n: usize| -> Result<(), String> {
            if args.len() != n {
                return Err(format!("{} takes {n} argument(s), found {}", self.name(), args.len()));
            }
            Ok(())
        };
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } => {
                Err("a leaf's type comes from its declaration".into())
            }
            Op::Scalar { .. } => Ok(TensorType::scalar(DType::F32)),
            Op::Arange { n } => {
                if n.as_constant().is_some_and(|c| c < 0) {
                    return Err(format!("`arange` needs a length of at least 0, found {n}"));
                }
                Ok(TensorType::new(DType::I32, vec![n.clone()]))
            }
            Op::Unary(u) => {
                arity(1)?;
                if *u == Unary::Not && args[0].dtype != DType::Bool {
                    return Err(format!("`not` needs bool, found {}", args[0].dtype.name()));
                }
                if !matches!(u, Unary::Neg | Unary::Abs | Unary::Not) && !args[0].dtype.is_float() {
                    return Err(format!("`{}` needs a float tensor, found {}", u.name(), args[0]));
                }
                Ok(args[0].clone())
            }
            Op::Binary(b) => {
                arity(2)?;
                let shape = broadcast(&args[0].shape, &args[1].shape).map_err(|e| {
                    format!("cannot {} {} and {}: {e}", b.name(), args[0].shape_text(), args[1].shape_text())
                })?;
                if args[0].dtype != args[1].dtype {
                    return Err(format!(
                        "cannot {} {} and {}: the dtypes differ (cast one first)",
                        b.name(),
                        args[0],
                        args[1]
                    ));
                }
                let dtype = if b.is_predicate() { DType::Bool } else { args[0].dtype };
                Ok(TensorType::new(dtype, shape))
            }
            Op::Where => {
                arity(3)?;
                if args[0].dtype != DType::Bool {
                    return Err(format!("`where` needs a bool condition, found {}", args[0]));
                }
                if args[1].dtype != args[2].dtype {
                    return Err(format!("`where` needs both branches of one dtype, found {} and {}", args[1], args[2]));
                }
                let s = broadcast(&args[1].shape, &args[2].shape)
                    .and_then(|s| broadcast(&args[0].shape, &s))
                    .map_err(|e| format!("`where` arguments do not broadcast: {e}"))?;
                Ok(TensorType::new(args[1].dtype, s))
            }
            Op::Softcap { cap } => {
                arity(1)?;
                if !(*cap > 0.0 && cap.is_finite()) {
                    return Err(format!("`softcap` needs a positive cap, found {cap:?}"));
                }
                Ok(args[0].clone())
            }
            Op::Dropout { p, .. } => {
                arity(1)?;
                // p = 1 would scale the kept elements (none) by 1/0.
                if !(0.0..1.0).contains(p) {
                    return Err(format!("`dropout` needs 0 <= p < 1, found p = {p:?}"));
                }
                Ok(args[0].clone())
            }
            Op::Noise { .. } => {
                arity(1)?;
                Ok(args[0].clone())
            }
            Op::Cast { to } => {
                arity(1)?;
                Ok(TensorType::new(*to, args[0].shape.clone()))
            }
            Op::Reduce { axes, keepdim, .. } => {
                arity(1)?;
                for (i, &a) in axes.iter().enumerate() {
                    check_axis(a, args[0].rank())?;
                    if axes[..i].contains(&a) {
                        return Err(format!("axis {a} is reduced twice in {axes:?}"));
                    }
                }
                let shape = args[0]
                    .shape
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| match (axes.contains(&i), keepdim) {
                        (false, _) => Some(d.clone()),
                        (true, true) => Some(Dim::constant(1)),
                        (true, false) => None,
                    })
                    .collect();
                Ok(TensorType::new(args[0].dtype, shape))
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } | Op::Cumsum { axis } => {
                arity(1)?;
                check_axis(*axis, args[0].rank())?;
                Ok(args[0].clone())
            }
            Op::MatMul => {
                arity(2)?;
                let (a, b) = (args[0], args[1]);
                if a.rank() < 2 || b.rank() < 2 {
                    return Err(format!(
                        "`@` needs two matrices or batches of them, found {} and {}",
                        a.shape_text(),
                        b.shape_text()
                    ));
                }
                let (m, k1) = (&a.shape[a.rank() - 2], &a.shape[a.rank() - 1]);
                let (k2, n) = (&b.shape[b.rank() - 2], &b.shape[b.rank() - 1]);
                if k1 != k2 {
                    return Err(format!(
                        "`@` needs the inner dims to agree: {} @ {} contracts {k1} with {k2}",
                        a.shape_text(),
                        b.shape_text()
                    ));
                }
                if a.dtype != b.dtype || !a.dtype.is_float() {
                    return Err(format!("`@` needs two float tensors of one dtype, found {a} and {b}"));
                }
                let batch = broadcast(&a.shape[..a.rank() - 2], &b.shape[..b.rank() - 2])
                    .map_err(|e| format!("`@` batch dims of {} and {}: {e}", a.shape_text(), b.shape_text()))?;
                let mut shape = batch;
                shape.extend([m.clone(), n.clone()]);
                Ok(TensorType::new(a.dtype, shape))
            }
            Op::AttentionGrad { wrt, has_bias, window, softcap, causal, scale } => {
                arity(if *has_bias { 5 } else { 4 })?;
                if *wrt > 3 {
                    return Err(format!("`attention_grad` takes wrt in q, k, v, scores, found {wrt}"));
                }
                let forward = Op::Attention {
                    causal: *causal,
                    window: *window,
                    softcap: *softcap,
                    scale: *scale,
                    has_bias: *has_bias,
                };
                let out = forward.infer(&args[..args.len() - 1])?;
                let g = args[args.len() - 1];
                if g.shape != out.shape {
                    return Err(format!(
                        "`attention_grad` needs the output's gradient shaped {}, found {}",
                        out.shape_text(),
                        g.shape_text()
                    ));
                }
                let (q, k) = (args[0], args[1]);
                Ok(match wrt {
                    3 => TensorType::new(
                        q.dtype,
                        vec![q.shape[0].clone(), q.shape[1].clone(), q.shape[2].clone(), k.shape[2].clone()],
                    ),
                    i => args[*i].clone(),
                })
            }
            Op::Attention { has_bias, window, softcap, .. } => {
                arity(if *has_bias { 4 } else { 3 })?;
                if let Some(w) = window {
                    check_count("attention", "window", *w)?;
                }
                if let Some(c) = softcap.filter(|c| !(*c > 0.0 && c.is_finite())) {
                    return Err(format!("`attention` needs a positive softcap, found {c:?}"));
                }
                let (q, k, v) = (args[0], args[1], args[2]);
                if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
                    return Err(format!(
                        "`attention` takes q [B, H, T, hd] and k, v [B, Hkv, S, hd], found {}, {} and {}",
                        q.shape_text(),
                        k.shape_text(),
                        v.shape_text()
                    ));
                }
                if k.shape != v.shape {
                    return Err(format!(
                        "`attention` needs k and v of one shape, found {} and {}",
                        k.shape_text(),
                        v.shape_text()
                    ));
                }
                if q.shape[0] != k.shape[0] || q.shape[3] != k.shape[3] {
                    return Err(format!(
                        "`attention` needs q and k to agree on batch and head dim, found {} and {}",
                        q.shape_text(),
                        k.shape_text()
                    ));
                }
                match (q.shape[1].as_constant(), k.shape[1].as_constant()) {
                    (Some(h), Some(hkv)) if hkv == 0 || h % hkv != 0 => {
                        return Err(format!(
                            "`attention` needs H % Hkv == 0 (MHA, GQA, MQA), found H = {h}, Hkv = {hkv}"
                        ))
                    }
                    _ => {}
                }
                if *has_bias {
                    let logits = vec![q.shape[0].clone(), q.shape[1].clone(), q.shape[2].clone(), k.shape[2].clone()];
                    let b = broadcast(&args[3].shape, &logits).map_err(|e| {
                        format!(
                            "`attention` bias {} does not broadcast to {}: {e}",
                            args[3].shape_text(),
                            shape_text(&logits)
                        )
                    })?;
                    if b != logits {
                        return Err(format!(
                            "`attention` bias {} would grow the logits {}",
                            args[3].shape_text(),
                            shape_text(&logits)
                        ));
                    }
                }
                Ok(TensorType::new(
                    q.dtype,
                    vec![q.shape[0].clone(), q.shape[1].clone(), q.shape[2].clone(), v.shape[3].clone()],
                ))
            }
            Op::Reshape { shape } => {
                arity(1)?;
                check_shape("reshape", shape)?;
                let to = TensorType::new(args[0].dtype, shape.clone());
                if to.numel() != args[0].numel() {
                    return Err(format!(
                        "cannot reshape {} ({} elements) to {} ({} elements)",
                        args[0].shape_text(),
                        args[0].numel(),
                        to.shape_text(),
                        to.numel()
                    ));
                }
                Ok(to)
            }
            Op::Transpose { perm } => {
                arity(1)?;
                let mut sorted = perm.clone();
                sorted.sort();
                if sorted != (0..args[0].rank()).collect::<Vec<_>>() {
                    return Err(format!(
                        "{perm:?} is not a permutation of the {} axes of {}",
                        args[0].rank(),
                        args[0].shape_text()
                    ));
                }
                Ok(TensorType::new(args[0].dtype, perm.iter().map(|&i| args[0].shape[i].clone()).collect()))
            }
            Op::Slice { axis, start, end } => {
                arity(1)?;
                check_axis(*axis, args[0].rank())?;
                check_bounds(start, end, &args[0].shape[*axis])?;
                let mut shape = args[0].shape.clone();
                shape[*axis] = end.sub(start);
                Ok(TensorType::new(args[0].dtype, shape))
            }
            Op::Concat { axis } => {
                if args.is_empty() {
                    return Err("`concat` needs at least one tensor".into());
                }
                check_axis(*axis, args[0].rank())?;
                let mut shape = args[0].shape.clone();
                for a in &args[1..] {
                    if a.dtype != args[0].dtype {
                        return Err(format!("`concat` needs one dtype, found {} and {}", args[0], a));
                    }
                    let same = a.rank() == shape.len()
                        && a.shape.iter().enumerate().all(|(i, d)| i == *axis || *d == shape[i]);
                    if !same {
                        return Err(format!(
                            "`concat` along axis {axis} needs the other dims equal, found {} and {}",
                            args[0].shape_text(),
                            a.shape_text()
                        ));
                    }
                    shape[*axis] = shape[*axis].add(&a.shape[*axis]);
                }
                Ok(TensorType::new(args[0].dtype, shape))
            }
            Op::Broadcast { shape } => {
                arity(1)?;
                check_shape("broadcast", shape)?;
                let b = broadcast(&args[0].shape, shape)
                    .map_err(|e| format!("cannot broadcast {} to {}: {e}", args[0].shape_text(), shape_text(shape)))?;
                if b != *shape {
                    return Err(format!("cannot broadcast {} to {}", args[0].shape_text(), shape_text(shape)));
                }
                Ok(TensorType::new(args[0].dtype, shape.clone()))
            }
            Op::Pad { axis, before, after, .. } => {
                arity(1)?;
                check_axis(*axis, args[0].rank())?;
                if *before < 0 || *after < 0 {
                    return Err(format!("`pad` takes non-negative amounts, found {before} and {after}"));
                }
                let grow =
                    before.checked_add(*after).ok_or_else(|| format!("`pad` by {before} + {after} overflows"))?;
                let mut shape = args[0].shape.clone();
                shape[*axis] = shape[*axis].add(&Dim::constant(grow));
                Ok(TensorType::new(args[0].dtype, shape))
            }
            Op::Gather { axis } => {
                arity(2)?;
                let (x, index) = (args[0], args[1]);
                check_axis(*axis, x.rank())?;
                if index.rank() != x.rank() || !matches!(index.dtype, DType::I32 | DType::I64) {
                    return Err(format!(
                        "`gather` needs integer indices of the same rank as {}, found {index}",
                        x.shape_text()
                    ));
                }
                check_index_dims("gather", x, index, *axis, true)?;
                Ok(TensorType::new(x.dtype, index.shape.clone()))
            }
            Op::ScatterAdd { axis } => {
                arity(3)?;
                let (x, index, src) = (args[0], args[1], args[2]);
                check_axis(*axis, x.rank())?;
                if index.shape != src.shape || index.rank() != x.rank() {
                    return Err(format!(
                        "`scatter_add` needs index and src of one shape and the rank of {}, found {} and {}",
                        x.shape_text(),
                        index.shape_text(),
                        src.shape_text()
                    ));
                }
                check_index_dims("scatter_add", x, index, *axis, false)?;
                Ok(x.clone())
            }
            Op::TopK { k, indices } => {
                arity(1)?;
                let x = args[0];
                let Some(last) = x.shape.last() else { return Err("`topk` needs at least one axis".into()) };
                // k < 1 is wrong for every binding of a symbolic last axis, so it is
                // rejected here; k above a symbolic axis is checked when it is bound.
                check_count("topk", "k", *k)?;
                if let Some(n) = last.as_constant() {
                    if *k > n {
                        return Err(format!("`topk` needs 1 <= k <= {n}, found k = {k}"));
                    }
                }
                let mut shape = x.shape.clone();
                *shape.last_mut().expect("checked") = Dim::constant(*k);
                Ok(TensorType::new(if *indices { DType::I32 } else { x.dtype }, shape))
            }
            Op::Embedding => {
                arity(2)?;
                let (table, ids) = (args[0], args[1]);
                if table.rank() != 2 {
                    return Err(format!("`embedding` needs a table [V, d], found {}", table.shape_text()));
                }
                if !matches!(ids.dtype, DType::I32 | DType::I64) {
                    return Err(format!("`embedding` needs integer ids, found {}", ids));
                }
                let mut shape = ids.shape.clone();
                shape.push(table.shape[1].clone());
                Ok(TensorType::new(table.dtype, shape))
            }
            Op::OneHot { n } => {
                arity(1)?;
                if !matches!(args[0].dtype, DType::I32 | DType::I64) {
                    return Err(format!("`one_hot` needs integer ids, found {}", args[0]));
                }
                check_count("one_hot", "n", *n)?;
                let mut shape = args[0].shape.clone();
                shape.push(Dim::constant(*n));
                Ok(TensorType::new(DType::F32, shape))
            }
            Op::CrossEntropy { .. } => {
                arity(2)?;
                let (logits, targets) = (args[0], args[1]);
                if !matches!(targets.dtype, DType::I32 | DType::I64) {
                    return Err(format!("`cross_entropy` needs integer targets, found {targets}"));
                }
                if logits.rank() != targets.rank() + 1 || logits.shape[..targets.rank()] != targets.shape[..] {
                    return Err(format!(
                        "`cross_entropy` needs logits [..., V] and targets [...], found {} and {}",
                        logits.shape_text(),
                        targets.shape_text()
                    ));
                }
                if logits.shape[targets.rank()].as_constant().is_some_and(|v| v < 1) {
                    return Err(format!(
                        "`cross_entropy` needs at least one class, found logits {}",
                        logits.shape_text()
                    ));
                }
                Ok(TensorType::scalar(DType::F32))
            }
            Op::Lstm { .. } => {
                arity(4)?;
                let (x, w_ih, w_hh, bias) = (args[0], args[1], args[2], args[3]);
                let fits = x.rank() == 3
                    && w_ih.rank() == 2
                    && w_hh.rank() == 2
                    && bias.rank() == 1
                    && w_ih.shape[0] == x.shape[2]
                    && w_hh.shape[0].mul(&Dim::constant(4)) == w_hh.shape[1]
                    && w_ih.shape[1] == w_hh.shape[1]
                    && bias.shape[0] == w_hh.shape[1];
                if !fits {
                    return Err(format!(
                        "`lstm` takes x [B, T, d], w_ih [d, 4h], w_hh [h, 4h] and bias [4h], found {}, {}, {} and {}",
                        x.shape_text(),
                        w_ih.shape_text(),
                        w_hh.shape_text(),
                        bias.shape_text()
                    ));
                }
                Ok(TensorType::new(x.dtype, vec![x.shape[0].clone(), x.shape[1].clone(), w_hh.shape[0].clone()]))
            }
            Op::MoeRoute { k, capacity, .. } => {
                arity(1)?;
                let logits = args[0];
                if logits.rank() != 2 {
                    return Err(format!("`moe_route` takes router logits [N, E], found {}", logits.shape_text()));
                }
                check_count_within("moe_route", "k", *k, &logits.shape[1], "E")?;
                if capacity.as_constant().is_some_and(|c| c < 0) {
                    return Err(format!("`moe_route` needs a capacity of at least 0, found {capacity}"));
                }
                Ok(TensorType::new(
                    logits.dtype,
                    vec![logits.shape[0].clone(), logits.shape[1].clone(), capacity.clone()],
                ))
            }
            Op::MoeDispatch => {
                arity(2)?;
                let (route, x) = (args[0], args[1]);
                if route.rank() != 3 || x.rank() != 2 || route.shape[0] != x.shape[0] {
                    return Err(format!(
                        "`moe_dispatch` takes a route [N, E, C] and tokens [N, d], found {} and {}",
                        route.shape_text(),
                        x.shape_text()
                    ));
                }
                Ok(TensorType::new(x.dtype, vec![route.shape[1].clone(), route.shape[2].clone(), x.shape[1].clone()]))
            }
            Op::MoeCombine => {
                arity(2)?;
                let (route, y) = (args[0], args[1]);
                if route.rank() != 3 || y.rank() != 3 || route.shape[1..] != y.shape[..2] {
                    return Err(format!(
                        "`moe_combine` takes a route [N, E, C] and expert outputs [E, C, d], found {} and {}",
                        route.shape_text(),
                        y.shape_text()
                    ));
                }
                Ok(TensorType::new(y.dtype, vec![route.shape[0].clone(), y.shape[2].clone()]))
            }
            Op::MoeBalance { k } | Op::MoeOverflow { k } => {
                arity(2)?;
                let (logits, route) = (args[0], args[1]);
                if logits.rank() != 2 || route.rank() != 3 || route.shape[..2] != logits.shape[..] {
                    return Err(format!(
                        "`{}` takes router logits [N, E] and their route [N, E, C], found {} and {}",
                        self.name(),
                        logits.shape_text(),
                        route.shape_text()
                    ));
                }
                check_count_within(&self.name(), "k", *k, &logits.shape[1], "E")?;
                Ok(TensorType::scalar(DType::F32))
            }
            Op::MoeZLoss => {
                arity(1)?;
                if args[0].rank() != 2 || !args[0].dtype.is_float() {
                    return Err(format!("`moe_zloss` takes router logits [N, E], found {}", args[0]));
                }
                Ok(TensorType::scalar(DType::F32))
            }
            Op::MoeLoad { k } => {
                arity(1)?;
                check_count("moe_load", "k", *k)?;
                if args[0].rank() != 3 {
                    return Err(format!("`moe_load` takes a route [N, E, C], found {}", args[0].shape_text()));
                }
                Ok(TensorType::new(DType::F32, vec![args[0].shape[1].clone()]))
            }
        }
    }
}
