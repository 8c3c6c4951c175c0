//! The `Op` predicates against what the rest of the compiler does with each op: one sample
//! of every variant (with argument types its shape rule accepts), and for each predicate a
//! property another stage can refute — leaves take no operands, elementwise ops keep the
//! broadcast shape, layout ops do no arithmetic, `has_gradient` is what autodiff derives,
//! `batched` is the shape rule with one more leading axis.

mod common;

use common::*;
use modelc_compiler::autodiff::differentiate;
use modelc_compiler::graph::dim::Dim;
use modelc_compiler::graph::op::{broadcast, Binary, Op, Reduce, Unary};
use modelc_compiler::graph::types::{DType, TensorType};
use modelc_compiler::graph::{Graph, ValueId};

fn t(dtype: DType, dims: &[i64]) -> TensorType {
    TensorType::new(dtype, dims.iter().map(|&d| Dim::constant(d)).collect())
}

fn f(dims: &[i64]) -> TensorType {
    t(DType::F32, dims)
}

fn dims(d: &[i64]) -> Vec<Dim> {
    d.iter().map(|&d| Dim::constant(d)).collect()
}

/// The variant's position in the enum. The match is exhaustive, so a new variant does not
/// compile until it has a sample below.
fn variant(op: &Op) -> usize {
    match op {
        Op::Input { .. } => 0,
        Op::Param { .. } => 1,
        Op::Buffer { .. } => 2,
        Op::Scalar { .. } => 3,
        Op::Arange { .. } => 4,
        Op::Unary(_) => 5,
        Op::Binary(_) => 6,
        Op::Where => 7,
        Op::Softcap { .. } => 8,
        Op::Cast { .. } => 9,
        Op::Dropout { .. } => 10,
        Op::Noise { .. } => 11,
        Op::Reduce { .. } => 12,
        Op::Softmax { .. } => 13,
        Op::LogSoftmax { .. } => 14,
        Op::MatMul => 15,
        Op::Attention { .. } => 16,
        Op::AttentionGrad { .. } => 38,
        Op::Reshape { .. } => 17,
        Op::Transpose { .. } => 18,
        Op::Slice { .. } => 19,
        Op::Concat { .. } => 20,
        Op::Broadcast { .. } => 21,
        Op::Pad { .. } => 22,
        Op::Embedding => 23,
        Op::Gather { .. } => 24,
        Op::ScatterAdd { .. } => 25,
        Op::TopK { .. } => 26,
        Op::OneHot { .. } => 27,
        Op::Cumsum { .. } => 28,
        Op::CrossEntropy { .. } => 29,
        Op::Lstm { .. } => 30,
        Op::MoeRoute { .. } => 31,
        Op::MoeDispatch => 32,
        Op::MoeCombine => 33,
        Op::MoeBalance { .. } => 34,
        Op::MoeZLoss => 35,
        Op::MoeLoad { .. } => 36,
        Op::MoeOverflow { .. } => 37,
    }
}

const VARIANTS: usize = 39;

/// One op of every variant (some twice, where an attribute changes the result type), with
/// argument types its shape rule accepts. Leaves carry their result type as the only entry.
fn samples() -> Vec<(Op, Vec<TensorType>)> {
    let i32s = |d: &[i64]| t(DType::I32, d);
    vec![
        (Op::Input { name: "x".into() }, vec![]),
        (Op::Param { name: "w".into() }, vec![]),
        (Op::Buffer { name: "b".into() }, vec![]),
        (Op::Scalar { value: 2.0 }, vec![]),
        (Op::Arange { n: Dim::constant(4) }, vec![]),
        (Op::Unary(Unary::Tanh), vec![f(&[2, 3])]),
        (Op::Binary(Binary::Mul), vec![f(&[2, 3]), f(&[1, 3])]),
        (Op::Binary(Binary::Lt), vec![f(&[2, 3]), f(&[2, 3])]),
        (Op::Where, vec![t(DType::Bool, &[2, 3]), f(&[2, 3]), f(&[2, 3])]),
        (Op::Softcap { cap: 5.0 }, vec![f(&[2, 3])]),
        (Op::Cast { to: DType::BF16 }, vec![f(&[2, 3])]),
        (Op::Dropout { p: 0.1, key: 0 }, vec![f(&[2, 3])]),
        (Op::Noise { std: 0.1, key: 0 }, vec![f(&[2, 3])]),
        (Op::Reduce { kind: Reduce::Sum, axes: vec![1], keepdim: false }, vec![f(&[2, 3])]),
        (Op::Reduce { kind: Reduce::Var, axes: vec![0], keepdim: true }, vec![f(&[2, 3])]),
        (Op::Softmax { axis: 1 }, vec![f(&[2, 3])]),
        (Op::LogSoftmax { axis: 0 }, vec![f(&[2, 3])]),
        (Op::MatMul, vec![f(&[2, 3]), f(&[3, 4])]),
        (
            Op::Attention { causal: true, window: Some(2), softcap: None, scale: 0.5, has_bias: false },
            vec![f(&[1, 2, 3, 4]), f(&[1, 1, 3, 4]), f(&[1, 1, 3, 4])],
        ),
        (
            Op::AttentionGrad { wrt: 1, causal: true, window: Some(2), softcap: None, scale: 0.5, has_bias: false },
            vec![f(&[1, 2, 3, 4]), f(&[1, 1, 3, 4]), f(&[1, 1, 3, 4]), f(&[1, 2, 3, 4])],
        ),
        (Op::Reshape { shape: dims(&[3, 2]) }, vec![f(&[2, 3])]),
        (Op::Transpose { perm: vec![1, 0] }, vec![f(&[2, 3])]),
        (Op::Slice { axis: 1, start: Dim::constant(1), end: Dim::constant(3) }, vec![f(&[2, 3])]),
        (Op::Concat { axis: 1 }, vec![f(&[2, 3]), f(&[2, 1])]),
        (Op::Broadcast { shape: dims(&[4, 2, 3]) }, vec![f(&[2, 3])]),
        (Op::Pad { axis: 1, before: 1, after: 2, value: 0.0 }, vec![f(&[2, 3])]),
        (Op::Embedding, vec![f(&[5, 3]), i32s(&[2, 4])]),
        (Op::Gather { axis: 1 }, vec![f(&[2, 3]), i32s(&[2, 2])]),
        (Op::ScatterAdd { axis: 1 }, vec![f(&[2, 3]), i32s(&[2, 2]), f(&[2, 2])]),
        (Op::TopK { k: 2, indices: false }, vec![f(&[2, 3])]),
        (Op::TopK { k: 2, indices: true }, vec![f(&[2, 3])]),
        (Op::OneHot { n: 5 }, vec![i32s(&[2, 3])]),
        (Op::Cumsum { axis: 1 }, vec![f(&[2, 3])]),
        (Op::CrossEntropy { ignore: -100 }, vec![f(&[4, 5]), i32s(&[4])]),
        (Op::Lstm { reverse: false }, vec![f(&[1, 3, 2]), f(&[2, 8]), f(&[2, 8]), f(&[8])]),
        (Op::MoeRoute { k: 1, capacity: Dim::constant(4) }, vec![f(&[4, 2])]),
        (Op::MoeDispatch, vec![f(&[4, 2, 4]), f(&[4, 3])]),
        (Op::MoeCombine, vec![f(&[4, 2, 4]), f(&[2, 4, 3])]),
        (Op::MoeBalance { k: 1 }, vec![f(&[4, 2]), f(&[4, 2, 4])]),
        (Op::MoeZLoss, vec![f(&[4, 2])]),
        (Op::MoeLoad { k: 1 }, vec![f(&[4, 2, 4])]),
        (Op::MoeOverflow { k: 1 }, vec![f(&[4, 2]), f(&[4, 2, 4])]),
    ]
}

/// The sample's result type: a leaf's is declared (its only entry), the others come from
/// the shape rule, which must accept the sample.
fn result(op: &Op, args: &[TensorType]) -> TensorType {
    match op {
        Op::Input { .. } | Op::Param { .. } | Op::Buffer { .. } => f(&[2, 3]),
        _ => op.infer(&args.iter().collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{}: {e}", op.name())),
    }
}

#[test]
fn every_variant_has_a_sample_its_shape_rule_accepts() {
    let mut seen = [false; VARIANTS];
    for (op, args) in samples() {
        seen[variant(&op)] = true;
        result(&op, &args);
    }
    let missing: Vec<usize> = (0..VARIANTS).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "variants without a sample: {missing:?}");
}

#[test]
fn leaves_are_the_ops_without_operands() {
    for (op, args) in samples() {
        if op.is_leaf() {
            assert!(args.is_empty(), "{} is a leaf but the sample has operands", op.name());
        } else {
            assert!(!args.is_empty(), "{} takes operands but is not a leaf", op.name());
            // With none, its shape rule refuses (a leaf's type comes from elsewhere).
            assert!(op.infer(&[]).is_err(), "{} accepts no operands", op.name());
        }
        assert!(!op.is_external() || op.is_leaf(), "{}: an external value is a leaf", op.name());
    }
}

#[test]
fn elementwise_ops_keep_the_broadcast_shape_and_layout_ops_do_no_arithmetic() {
    for (op, args) in samples() {
        let out = result(&op, &args);
        let refs: Vec<&TensorType> = args.iter().collect();
        if op.is_elementwise() {
            let shape = args.iter().try_fold(Vec::new(), |acc, a| broadcast(&acc, &a.shape)).expect("broadcasts");
            assert_eq!(out.shape, shape, "{}", op.name());
        }
        if op.is_layout() || op.is_view() {
            assert_eq!(op.cost(&refs, &out).flops, Dim::constant(0), "{} moves data only", op.name());
            assert_eq!(out.dtype, args[0].dtype, "{} keeps the dtype", op.name());
        }
        if op.is_view() {
            assert_eq!(out.numel(), args[0].numel(), "{} is the same elements", op.name());
        }
        if op.is_reduction() {
            assert!(out.rank() <= args[0].rank(), "{} folds axes away", op.name());
        }
        if op.is_contraction() {
            assert!(op.cost(&refs, &out).flops.as_constant() > out.numel().as_constant(), "{}", op.name());
        }
        // A random op is named by its stream, which its attributes print.
        assert_eq!(op.is_random(), op.attrs().contains(" key="), "{}", op.name());
        let families = [op.is_leaf(), op.is_elementwise(), op.is_layout(), op.is_contraction()];
        assert!(families.iter().filter(|b| **b).count() <= 1, "{} is in several families", op.name());
    }
}

/// Builds `sum(cast(op(args), f32))` over parameters (float operands) and inputs (the
/// others), and differentiates it.
fn differentiate_sample(op: &Op, args: &[TensorType]) -> Result<Graph, String> {
    let mut g = Graph::default();
    let ids: Vec<ValueId> = args
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            let leaf = if ty.dtype.is_float() {
                Op::Param { name: format!("p{i}") }
            } else {
                Op::Input { name: format!("i{i}") }
            };
            g.push(leaf, Vec::new(), ty.clone(), "")
        })
        .collect();
    let out_ty = result(op, args);
    let out = g.push(op.clone(), ids, out_ty.clone(), "op");
    let cast = g.push(Op::Cast { to: DType::F32 }, vec![out], TensorType::new(DType::F32, out_ty.shape.clone()), "");
    let all = Op::Reduce { kind: Reduce::Sum, axes: (0..out_ty.rank()).collect(), keepdim: false };
    let loss = g.push(all, vec![cast], TensorType::scalar(DType::F32), "");
    g.outputs = vec![loss];
    differentiate(g)
}

#[test]
fn has_gradient_is_what_autodiff_derives() {
    for (op, args) in samples() {
        if op.is_leaf() {
            continue;
        }
        let derived = differentiate_sample(&op, &args);
        assert_eq!(derived.is_ok(), op.has_gradient(), "{}: {:?}", op.name(), derived.err());
    }
}

/// `batched` is the shape rule with a leading copy axis: operands get the axis in front
/// (and, where they broadcast, unit axes up to the result's rank, as `stack` lifting
/// aligns them), and the result is the per-copy result with the axis in front.
#[test]
fn batched_ops_give_the_per_copy_result_with_a_leading_axis() {
    let n = Dim::constant(3);
    let mut batched = 0;
    for (op, args) in samples() {
        let Some(lifted) = op.batched(&n) else { continue };
        batched += 1;
        let out = result(&op, &args);
        let broadcasts = op.is_elementwise() || matches!(op, Op::MatMul | Op::Broadcast { .. });
        let lifted_args: Vec<TensorType> = args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if matches!(op, Op::Embedding) && i == 0 {
                    return a.clone();
                }
                let units = if broadcasts { out.rank().saturating_sub(a.rank()) } else { 0 };
                let mut shape = vec![n.clone()];
                shape.extend(std::iter::repeat_n(Dim::constant(1), units));
                shape.extend(a.shape.iter().cloned());
                TensorType::new(a.dtype, shape)
            })
            .collect();
        let got =
            lifted.infer(&lifted_args.iter().collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{}: {e}", op.name()));
        let mut want = vec![n.clone()];
        want.extend(out.shape.iter().cloned());
        assert_eq!(got, TensorType::new(out.dtype, want), "{}", op.name());
    }
    assert!(batched >= 15, "only {batched} samples have a batching rule");
}

/// A stacked call whose copies look up one shared table: the ids carry the copy axis and
/// the lookup keeps it leading (it used to gain a unit axis and fail the return type).
#[test]
fn stacked_copies_look_up_a_shared_table() {
    let graph = compile(
        "t.model",
        "block E() {\n  forward(ids: i32[T]) -> [T, 4] {\n    table = cast(reshape(arange(32), [8, 4]), f32)\n    return embedding(table, ids)\n  }\n}\n\nmodel M() {\n  experts = stack(2) E()\n\n  forward(ids: i32[2, T]) -> [2, T, 4] {\n    return experts(ids)\n  }\n}\n",
        None,
    );
    let out = graph.ty(graph.outputs[0]);
    assert_eq!(out.shape_text(), "[2, T, 4]");
}

/// Integer attributes wrong for every value a symbolic dim may take are shape errors, not
/// panics at run time: the shape rule sees the op as a pass or a test builds it.
#[test]
fn shape_rules_reject_attributes_no_binding_can_fit() {
    let sym = |dims: &[&str]| -> TensorType {
        TensorType::new(
            DType::F32,
            dims.iter().map(|d| d.parse().map_or_else(|_| Dim::symbol(d), Dim::constant)).collect(),
        )
    };
    let t_len = Dim::symbol("T");
    let cases: Vec<(Op, Vec<TensorType>)> = vec![
        (Op::TopK { k: -1, indices: false }, vec![sym(&["B", "T"])]),
        (Op::TopK { k: 0, indices: true }, vec![sym(&["B", "T"])]),
        (Op::MoeRoute { k: 0, capacity: Dim::symbol("N") }, vec![sym(&["N", "E"])]),
        (Op::MoeRoute { k: 3, capacity: Dim::constant(4) }, vec![sym(&["N", "2"])]),
        (Op::MoeRoute { k: 1, capacity: Dim::constant(-4) }, vec![sym(&["N", "2"])]),
        (Op::MoeBalance { k: 0 }, vec![sym(&["N", "E"]), sym(&["N", "E", "C"])]),
        (Op::MoeLoad { k: -2 }, vec![sym(&["N", "E", "C"])]),
        (Op::MoeZLoss, vec![sym(&["N"])]),
        (Op::OneHot { n: 0 }, vec![t(DType::I32, &[2])]),
        (
            Op::Attention { causal: true, window: Some(0), softcap: None, scale: 1.0, has_bias: false },
            vec![sym(&["B", "H", "T", "4"]); 3],
        ),
        (Op::Reduce { kind: Reduce::Sum, axes: vec![1, 1], keepdim: false }, vec![sym(&["B", "T"])]),
        (Op::Slice { axis: 1, start: Dim::constant(0), end: t_len.add(&Dim::constant(1)) }, vec![sym(&["B", "T"])]),
        (Op::Slice { axis: 1, start: Dim::constant(3), end: Dim::constant(2) }, vec![sym(&["B", "T"])]),
        (Op::Slice { axis: 1, start: Dim::constant(-1), end: t_len.clone() }, vec![sym(&["B", "T"])]),
        (Op::Reshape { shape: vec![Dim::constant(-2), Dim::constant(-3)] }, vec![f(&[2, 3])]),
        (Op::Broadcast { shape: vec![Dim::constant(-1), Dim::constant(3)] }, vec![f(&[1, 3])]),
        (Op::Arange { n: Dim::constant(-3) }, vec![]),
        (Op::Pad { axis: 0, before: i64::MAX, after: 1, value: 0.0 }, vec![f(&[2])]),
        (Op::Gather { axis: 1 }, vec![f(&[2, 3]), t(DType::I32, &[5, 3])]),
        (Op::ScatterAdd { axis: 1 }, vec![f(&[1, 3]), t(DType::I32, &[2, 3]), f(&[2, 3])]),
        (Op::Dropout { p: 1.0, key: 0 }, vec![f(&[2])]),
        (Op::Softcap { cap: 0.0 }, vec![f(&[2])]),
        (Op::CrossEntropy { ignore: -100 }, vec![f(&[4, 0]), t(DType::I32, &[4])]),
    ];
    for (op, args) in cases {
        let refs: Vec<&TensorType> = args.iter().collect();
        assert!(op.infer(&refs).is_err(), "{} {} accepted {:?}", op.name(), op.attrs(), args);
    }
    // What depends on the binding is left to the run: `k` may fit a symbolic axis.
    assert!(Op::TopK { k: 5, indices: false }.infer(&[&sym(&["B", "T"])]).is_ok());
    assert!(Op::Gather { axis: 1 }.infer(&[&f(&[1, 3]), &t(DType::I32, &[5, 3])]).is_ok());
}
