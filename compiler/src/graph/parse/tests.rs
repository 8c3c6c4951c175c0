//! The text form's round trip on a sample of every op variant (and every unary, binary
//! and reduction kind), whole graphs, and errors that name their line and column.

use super::*;

/// The sample after `op` in a chain that starts at `Op::Input` and visits every variant
/// once. The match is exhaustive: a new `Op` variant does not compile until it has an arm
/// here; give it a sample in the chain, and `every_op_parses_back` fails until the parser
/// reads what `Op::name` and `Op::attrs` print for it.
fn next_sample(op: &Op) -> Option<Op> {
    let sym = |s: &str| Dim::symbol(s);
    Some(match op {
        Op::Input { .. } => Op::Param { name: "blocks.0.w \"quoted\" \\ é\t\u{7f}".into() },
        Op::Param { .. } => Op::Buffer { name: "inv_freq".into() },
        Op::Buffer { .. } => Op::Scalar { value: -0.0 },
        Op::Scalar { .. } => Op::Arange { n: sym("T").add(&Dim::constant(1)) },
        Op::Arange { .. } => Op::Unary(Unary::Neg),
        Op::Unary(_) => Op::Binary(Binary::Max),
        Op::Binary(_) => Op::Where,
        Op::Where => Op::Softcap { cap: 30.0 },
        Op::Softcap { .. } => Op::Cast { to: DType::BF16 },
        Op::Cast { .. } => Op::Dropout { p: 0.1, key: u64::MAX },
        Op::Dropout { .. } => Op::Noise { std: 1e-2, key: 7 },
        Op::Noise { .. } => Op::Reduce { kind: Reduce::Max, axes: vec![0, 2], keepdim: true },
        Op::Reduce { .. } => Op::Softmax { axis: 3 },
        Op::Softmax { .. } => Op::LogSoftmax { axis: 1 },
        Op::LogSoftmax { .. } => Op::MatMul,
        Op::MatMul => {
            Op::Attention { causal: true, window: Some(4096), softcap: Some(50.0), scale: 0.125, has_bias: true }
        }
        Op::Attention { .. } => Op::AttentionGrad {
            wrt: 3,
            causal: true,
            window: Some(128),
            softcap: Some(30.0),
            scale: 0.125,
            has_bias: true,
        },
        Op::AttentionGrad { .. } => Op::Reshape { shape: vec![sym("B").mul(&sym("T")), Dim::constant(-1)] },
        Op::Reshape { .. } => Op::Transpose { perm: vec![0, 2, 1, 3] },
        Op::Transpose { .. } => {
            Op::Slice { axis: 2, start: sym("T").sub(&Dim::constant(1)), end: sym("T").mul(&Dim::constant(2)) }
        }
        Op::Slice { .. } => Op::Concat { axis: 2 },
        Op::Concat { .. } => Op::Broadcast { shape: vec![] },
        Op::Broadcast { .. } => Op::Pad { axis: 0, before: 0, after: 1, value: f64::NEG_INFINITY },
        Op::Pad { .. } => Op::Embedding,
        Op::Embedding => Op::Gather { axis: 1 },
        Op::Gather { .. } => Op::ScatterAdd { axis: 1 },
        Op::ScatterAdd { .. } => Op::TopK { k: 2, indices: false },
        Op::TopK { indices: false, .. } => Op::TopK { k: 2, indices: true },
        Op::TopK { indices: true, .. } => Op::OneHot { n: 257 },
        Op::OneHot { .. } => Op::Cumsum { axis: 0 },
        Op::Cumsum { .. } => Op::CrossEntropy { ignore: -100 },
        Op::CrossEntropy { .. } => Op::Lstm { reverse: true },
        Op::Lstm { .. } => Op::MoeRoute { k: 2, capacity: sym("C0") },
        Op::MoeRoute { .. } => Op::MoeDispatch,
        Op::MoeDispatch => Op::MoeCombine,
        Op::MoeCombine => Op::MoeBalance { k: 2 },
        Op::MoeBalance { .. } => Op::MoeZLoss,
        Op::MoeZLoss => Op::MoeLoad { k: 1 },
        Op::MoeLoad { .. } => Op::MoeOverflow { k: 2 },
        Op::MoeOverflow { .. } => return None,
    })
}

fn samples() -> Vec<Op> {
    let mut out = vec![Op::Input { name: "tokens".into() }];
    while let Some(next) = next_sample(out.last().expect("non-empty")) {
        out.push(next);
    }
    out.extend(UNARY.iter().map(|&u| Op::Unary(u)));
    out.extend(BINARY.iter().map(|&b| Op::Binary(b)));
    out.extend(REDUCE.iter().map(|&kind| Op::Reduce { kind, axes: vec![1], keepdim: false }));
    // Attention without its optional attributes and bias.
    out.push(Op::Attention { causal: false, window: None, softcap: None, scale: 1.0, has_bias: false });
    out.push(Op::AttentionGrad { wrt: 1, causal: false, window: None, softcap: None, scale: 1.0, has_bias: false });
    out
}

/// A one-node graph holding `op`, with as many arguments as its text form needs to be read
/// back (only `attention` and its gradient read their arity).
fn one_node(op: Op) -> Graph {
    let n_args = match op {
        Op::Attention { has_bias, .. } => 3 + usize::from(has_bias),
        Op::AttentionGrad { has_bias, .. } => 4 + usize::from(has_bias),
        _ => 1,
    };
    let node = Node {
        op,
        args: (0..n_args as u32).map(ValueId).collect(),
        ty: TensorType::new(DType::F32, vec![Dim::symbol("B"), Dim::constant(4)]),
        scope: "blocks.0.attn".into(),
    };
    Graph { nodes: vec![node], outputs: vec![ValueId(0)], ..Graph::default() }
}

#[test]
fn every_op_parses_back() {
    let samples = samples();
    // Every name the parser knows has a sample, so the chain above is complete.
    let known: Vec<String> = UNARY
        .iter()
        .map(|u| u.name().to_string())
        .chain(BINARY.iter().map(|b| b.name().to_string()))
        .chain(REDUCE.iter().map(|r| r.name().to_string()))
        .chain(OTHER_OPS.iter().map(|s| s.to_string()))
        .collect();
    for name in &known {
        assert!(samples.iter().any(|op| op.name() == *name), "no sample of `{name}`");
    }
    for op in samples {
        assert!(known.contains(&op.name()), "`{}` is missing from the parser's names", op.name());
        let text = one_node(op.clone()).to_string();
        let parsed = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.nodes[0].op, op, "{text}");
        assert_eq!(parsed.to_string(), text);
    }
}

/// The kinds of unary, binary and reduction ops, by exhaustive chains like `next_sample`.
fn next_unary(u: Unary) -> Option<Unary> {
    use Unary::*;
    Some(match u {
        Neg => Exp,
        Exp => Log,
        Log => Sqrt,
        Sqrt => Rsqrt,
        Rsqrt => Tanh,
        Tanh => Erf,
        Erf => Sigmoid,
        Sigmoid => Sin,
        Sin => Cos,
        Cos => Abs,
        Abs => Relu,
        Relu => Gelu,
        Gelu => GeluTanh,
        GeluTanh => Silu,
        Silu => Not,
        Not => return None,
    })
}

fn next_binary(b: Binary) -> Option<Binary> {
    use Binary::*;
    Some(match b {
        Add => Sub,
        Sub => Mul,
        Mul => Div,
        Div => Rem,
        Rem => Pow,
        Pow => Min,
        Min => Max,
        Max => Eq,
        Eq => Ne,
        Ne => Lt,
        Lt => Le,
        Le => Gt,
        Gt => Ge,
        Ge => And,
        And => Or,
        Or => return None,
    })
}

fn next_reduce(r: Reduce) -> Option<Reduce> {
    use Reduce::*;
    Some(match r {
        Sum => Mean,
        Mean => Max,
        Max => Min,
        Min => Var,
        Var => LogSumExp,
        LogSumExp => return None,
    })
}

fn chain<T: Copy>(first: T, next: fn(T) -> Option<T>) -> Vec<T> {
    let mut out = vec![first];
    while let Some(n) = next(*out.last().expect("non-empty")) {
        out.push(n);
    }
    out
}

#[test]
fn the_name_lists_hold_every_kind() {
    assert_eq!(chain(Unary::Neg, next_unary), UNARY.to_vec());
    assert_eq!(chain(Binary::Add, next_binary), BINARY.to_vec());
    assert_eq!(chain(Reduce::Sum, next_reduce), REDUCE.to_vec());
}

#[test]
fn scalars_parse_back_to_the_same_bits() {
    let values = [
        0.0,
        -0.0,
        1.0,
        -3.0,
        1e-5,
        0.1 + 0.2,
        1e15,
        2f64.powi(60),
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        half::bf16::from_f64(0.1).to_f64(),
    ];
    for value in values {
        let text = one_node(Op::Scalar { value }).to_string();
        let parsed = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let Op::Scalar { value: back } = parsed.nodes[0].op else { panic!("{text}: not a scalar") };
        assert_eq!(back.to_bits(), value.to_bits(), "{text}");
        assert_eq!(parsed.to_string(), text);
    }
}

#[test]
fn a_whole_graph_parses_back() {
    let text = "\
dim C0 = ceil(1.25 * 2 * B*T / 8)
%0: i32[B, T] = input \"tokens\"
%1: f32[256, 64] = param \"embed.weight\"
%2: f32[B, T, 64] = embedding %1, %0  // embed
%3: f32[B*T, 8] = reshape %2 [B*T, 8]  // blocks.0.moe
%4: f32[B*T, 8, C0] = moe_route %3 k=2 capacity=C0  // blocks.0.moe
%5: f32[] = moe_zloss %3  // blocks.0.moe
%6: f32[8] = moe_load %4 k=2  // blocks.0.moe
%7: f32[] = sum %2 axes=[0, 1, 2] keepdim=false
aux_loss blocks.0.moe.zloss = %5
metric blocks.0.moe.load = %6
grad embed.weight = %1
update embed.weight = %1
return %7, %2
";
    let g = parse(text).expect("parses");
    assert_eq!(g.to_string(), text);
    assert_eq!(g.dim_defs.len(), 1);
    assert_eq!((g.aux_losses.len(), g.metrics.len(), g.grads.len(), g.updates.len()), (1, 1, 1, 1));
    // Comments and blank lines are skipped; an empty `return` is a graph without outputs.
    let g = parse("; pass: dce\n\n%0: f32[] = scalar 1\nreturn \n").expect("parses");
    assert_eq!(g.to_string(), "%0: f32[] = scalar 1\nreturn \n");
}

#[test]
fn errors_name_line_and_column() {
    let cases = [
        ("%0: f32[] = scalar 1\n%2: f32[] = scalar 1\nreturn %0\n", 2, 2, "expected %1"),
        ("%0: f33[] = scalar 1\nreturn %0\n", 1, 5, "unknown dtype `f33`"),
        ("%0: f32[4] = matmull %1, %2\nreturn %0\n", 1, 14, "did you mean `matmul`?"),
        ("%0: f32[4] = softmax %1 axis=x\nreturn %0\n", 1, 30, "expected a number"),
        ("%0: f32[B, ] = scalar 1\nreturn %0\n", 1, 12, "expected a dim"),
        ("%0: f32[] = scalar 1 extra\nreturn %0\n", 1, 21, "unexpected ` extra`"),
        ("%0: f32[] = input \"x\nreturn %0\n", 1, 21, "unterminated string"),
        ("%0: f32[] = scalar 1\n", 2, 1, "missing `return`"),
        ("%0: f32[] = scalar 1\nreturn %0\n%1: f32[] = scalar 1\n", 3, 1, "follow `return`"),
        ("%0: f32[] = scalar 1\ngrad w %0\nreturn %0\n", 2, 6, "expected `NAME = %N`"),
        ("node\nreturn\n", 1, 1, "expected a node"),
        ("dim C0 = ceil(x * 2 * T / 8)\nreturn\n", 1, 15, "capacity factor"),
    ];
    for (text, line, column, message) in cases {
        let e = parse(text).expect_err(text);
        assert_eq!((e.line, e.column), (line, column), "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
}

/// A tiny deterministic generator for the mutation test.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// Mangled text is an error, never a panic: characters deleted, inserted, swapped for
/// digits (huge numbers), and whole lines repeated.
#[test]
fn mangled_text_never_panics() {
    let text = samples().into_iter().map(|op| one_node(op).to_string().replace("return %0\n", "")).collect::<String>();
    let text = format!("dim C0 = ceil(1.25 * 2 * B*T / 8)\n{text}grad w = %0\nreturn %0\n");
    let alphabet: Vec<char> = "%:=[]{}(),. -*+/\\\"0123456789BTaxisperm_éf32\n".chars().collect();
    let mut rng = Lcg(7);
    for _ in 0..3000 {
        let mut chars: Vec<char> = text.chars().collect();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(chars.len());
            match rng.below(4) {
                0 => {
                    chars.remove(at);
                }
                1 => chars.insert(at, alphabet[rng.below(alphabet.len())]),
                2 => chars.splice(at..at, "99999999999999999999".chars()).for_each(drop),
                _ => chars.splice(at..at, "*9223372036854775807+9223372036854775807".chars()).for_each(drop),
            }
        }
        let mangled: String = chars.into_iter().collect();
        let _ = parse(&mangled);
    }
    // Overflowing coefficients are a located error.
    let e =
        parse("%0: f32[9223372036854775807*T+9223372036854775807*T] = input \"x\"\nreturn %0\n").expect_err("overflow");
    assert!(e.message.contains("overflow"), "{e}");
}
