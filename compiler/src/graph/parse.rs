//! Graph IR text → `Graph`: the inverse of `impl Display for Graph`, so tests and pass
//! fixtures can start mid-pipeline. Printing what this parses gives the same text back
//! (every float attribute prints in a form that parses to the same bits). Lines that
//! start with `;` are comments (fixture headers); errors name the line and column.
//!
//! The parser is syntactic: it checks that nodes are numbered in order, not that the
//! types fit their ops or that arguments come before their use (`verify` does).

use super::dim::Dim;
use super::op::{Binary, Op, Reduce, Unary};
use super::types::{DType, TensorType};
use super::{DimDef, Graph, Node, ValueId};
use std::fmt;

/// Where the text stops making sense, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Every unary, binary and reduction kind, for finding one by its name. The tests check
/// these lists against the enums.
pub(crate) const UNARY: [Unary; 16] = [
    Unary::Neg,
    Unary::Exp,
    Unary::Log,
    Unary::Sqrt,
    Unary::Rsqrt,
    Unary::Tanh,
    Unary::Erf,
    Unary::Sigmoid,
    Unary::Sin,
    Unary::Cos,
    Unary::Abs,
    Unary::Relu,
    Unary::Gelu,
    Unary::GeluTanh,
    Unary::Silu,
    Unary::Not,
];

pub(crate) const BINARY: [Binary; 16] = [
    Binary::Add,
    Binary::Sub,
    Binary::Mul,
    Binary::Div,
    Binary::Rem,
    Binary::Pow,
    Binary::Min,
    Binary::Max,
    Binary::Eq,
    Binary::Ne,
    Binary::Lt,
    Binary::Le,
    Binary::Gt,
    Binary::Ge,
    Binary::And,
    Binary::Or,
];

pub(crate) const REDUCE: [Reduce; 6] =
    [Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::Min, Reduce::Var, Reduce::LogSumExp];

/// The names of the ops that are not unary, binary or reductions, for did-you-mean.
const OTHER_OPS: &[&str] = &[
    "input",
    "param",
    "buffer",
    "scalar",
    "arange",
    "where",
    "softcap",
    "cast",
    "dropout",
    "noise",
    "softmax",
    "log_softmax",
    "matmul",
    "attention",
    "attention_grad",
    "reshape",
    "transpose",
    "slice",
    "concat",
    "broadcast",
    "pad",
    "embedding",
    "gather",
    "scatter_add",
    "topk_values",
    "topk_indices",
    "one_hot",
    "cumsum",
    "cross_entropy",
    "lstm",
    "moe_route",
    "moe_dispatch",
    "moe_combine",
    "moe_balance",
    "moe_zloss",
    "moe_load",
    "moe_overflow",
];

/// Parses the text form of a graph.
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    let mut g = Graph::default();
    let mut returned = false;
    let mut last_line = 0;
    for (i, line) in text.lines().enumerate() {
        last_line = i + 1;
        let mut c = Cursor { text: line, pos: 0, line: i + 1 };
        if line.trim().is_empty() || line.trim_start().starts_with(';') {
            continue;
        }
        if returned {
            return Err(c.err("nothing but comments may follow `return`"));
        }
        if c.eat("dim ") {
            g.dim_defs.push(c.dim_def()?);
        } else if line.starts_with('%') {
            let node = c.node(g.nodes.len())?;
            g.nodes.push(node);
        } else if c.eat("aux_loss ") {
            g.aux_losses.push(c.named_value()?);
        } else if c.eat("metric ") {
            g.metrics.push(c.named_value()?);
        } else if c.eat("grad ") {
            g.grads.push(c.named_value()?);
        } else if c.eat("update ") {
            g.updates.push(c.named_value()?);
        } else if c.eat("group ") {
            let mut parts = vec![vec![c.value()?]];
            loop {
                if c.eat(", ") {
                    let v = c.value()?;
                    if let Some(part) = parts.last_mut() {
                        part.push(v);
                    }
                } else if c.eat(" | ") {
                    parts.push(vec![c.value()?]);
                } else {
                    break;
                }
            }
            c.end()?;
            g.groups.push(super::Group { parts });
        } else if c.eat("return") {
            if c.eat(" ") && !c.at_end() {
                g.outputs.push(c.value()?);
                while c.eat(", ") {
                    g.outputs.push(c.value()?);
                }
            }
            c.end()?;
            returned = true;
        } else {
            return Err(c.err(format!(
                "expected a node `%N: ...`, `dim`, `aux_loss`, `metric`, `grad`, `update`, `group` or `return`, found `{}`",
                c.word()
            )));
        }
    }
    if !returned {
        return Err(ParseError { line: last_line + 1, column: 1, message: "missing `return` line".into() });
    }
    Ok(g)
}

/// One line being read.
struct Cursor<'a> {
    text: &'a str,
    /// Byte offset.
    pos: usize,
    line: usize,
}

type Parsed<T> = Result<T, ParseError>;

impl<'a> Cursor<'a> {
    fn err(&self, message: impl Into<String>) -> ParseError {
        ParseError { line: self.line, column: self.text[..self.pos].chars().count() + 1, message: message.into() }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos == self.text.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// The next whitespace-separated word, for messages.
    fn word(&self) -> &'a str {
        let rest = self.rest();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        if end == 0 {
            "end of line"
        } else {
            &rest[..end]
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, s: &str) -> Parsed<()> {
        if self.eat(s) {
            return Ok(());
        }
        let found = if self.at_end() { "end of line".to_string() } else { format!("`{}`", self.word()) };
        Err(self.err(format!("expected `{}`, found {found}", s.trim())))
    }

    fn end(&self) -> Parsed<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.err(format!("unexpected `{}` at the end of the line", self.rest())))
        }
    }

    /// Takes the longest prefix whose characters satisfy `ok`.
    fn take(&mut self, ok: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|ch: char| !ok(ch)).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    fn ident(&mut self) -> Parsed<&'a str> {
        match self.peek() {
            Some(ch) if ch.is_ascii_alphabetic() || ch == '_' => {
                Ok(self.take(|ch| ch.is_ascii_alphanumeric() || ch == '_'))
            }
            _ => Err(self.err(format!("expected a name, found `{}`", self.word()))),
        }
    }

    fn int(&mut self) -> Parsed<i64> {
        let start = self.pos;
        self.eat("-");
        self.take(|ch| ch.is_ascii_digit());
        let text = &self.text[start..self.pos];
        text.parse().map_err(|_| {
            self.pos = start;
            self.err(format!("expected an integer, found `{}`", self.word()))
        })
    }

    fn uint(&mut self) -> Parsed<usize> {
        let start = self.pos;
        let text = self.take(|ch| ch.is_ascii_digit());
        text.parse().map_err(|_| {
            self.pos = start;
            self.err(format!("expected a number, found `{}`", self.word()))
        })
    }

    /// A float as `{:?}` prints it (`0.25`, `1e-5`, `-inf`, `NaN`), or a whole number.
    fn float(&mut self) -> Parsed<f64> {
        let start = self.pos;
        let text = self.take(|ch| !ch.is_whitespace());
        text.parse().map_err(|_| {
            self.pos = start;
            self.err(format!("expected a number, found `{text}`"))
        })
    }

    fn boolean(&mut self) -> Parsed<bool> {
        if self.eat("true") {
            Ok(true)
        } else if self.eat("false") {
            Ok(false)
        } else {
            Err(self.err(format!("expected `true` or `false`, found `{}`", self.word())))
        }
    }

    /// `%N`.
    fn value(&mut self) -> Parsed<ValueId> {
        self.expect("%")?;
        let n = self.uint()?;
        u32::try_from(n).map(ValueId).map_err(|_| self.err(format!("%{n} is out of range")))
    }

    /// A polynomial in symbols, as `Dim` prints it: `B*T`, `2*T-1`, `4096`. Coefficients
    /// are summed with checked arithmetic, so no text overflows `Dim`'s `i64`s.
    fn dim(&mut self) -> Parsed<Dim> {
        let start = self.pos;
        let overflow = |c: &mut Self| {
            c.pos = start;
            c.err("the dim's coefficients overflow 64 bits")
        };
        let mut terms: std::collections::BTreeMap<Vec<String>, i64> = Default::default();
        let mut negative = self.eat("-");
        loop {
            let (mut coefficient, mut symbols) = (1i64, Vec::new());
            loop {
                match self.peek() {
                    Some(ch) if ch.is_ascii_digit() => {
                        let n = self.int()?;
                        coefficient = coefficient.checked_mul(n).ok_or_else(|| overflow(self))?;
                    }
                    Some(ch) if ch.is_ascii_alphabetic() || ch == '_' => symbols.push(self.ident()?.to_string()),
                    _ => {
                        return Err(self.err(format!("expected a dim (a number or a symbol), found `{}`", self.word())))
                    }
                }
                if !self.eat("*") {
                    break;
                }
            }
            symbols.sort();
            let signed = if negative { coefficient.checked_neg() } else { Some(coefficient) };
            let entry = terms.entry(symbols).or_insert(0);
            *entry = signed.and_then(|c| entry.checked_add(c)).ok_or_else(|| overflow(self))?;
            if self.eat("+") {
                negative = false;
            } else if self.eat("-") {
                negative = true;
            } else {
                break;
            }
        }
        // Distinct monomials, each times its coefficient: nothing here can overflow.
        Ok(terms.into_iter().fold(Dim::constant(0), |total, (symbols, c)| {
            let monomial = symbols.iter().fold(Dim::constant(1), |m, s| m.mul(&Dim::symbol(s)));
            total.add(&monomial.mul(&Dim::constant(c)))
        }))
    }

    /// `[a, b, ...]` of items read by `item`.
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Parsed<T>) -> Parsed<Vec<T>> {
        self.expect("[")?;
        let mut out = Vec::new();
        if self.eat("]") {
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            if self.eat("]") {
                return Ok(out);
            }
            self.expect(",")?;
            self.expect(" ")?;
        }
    }

    fn dims(&mut self) -> Parsed<Vec<Dim>> {
        self.list(|c| c.dim())
    }

    fn tensor_type(&mut self) -> Parsed<TensorType> {
        let dtype = self.tensor_dtype()?;
        Ok(TensorType::new(dtype, self.dims()?))
    }

    fn key(&mut self) -> Parsed<u64> {
        let start = self.pos;
        let text = self.take(|ch| ch.is_ascii_digit());
        text.parse().map_err(|_| {
            self.pos = start;
            self.err(format!("expected a key (a number), found `{}`", self.word()))
        })
    }

    /// A string as `{:?}` prints it: quoted, with Rust's escapes.
    fn string(&mut self) -> Parsed<String> {
        self.expect("\"")?;
        let mut out = String::new();
        loop {
            let Some(ch) = self.peek() else { return Err(self.err("unterminated string")) };
            self.pos += ch.len_utf8();
            match ch {
                '"' => return Ok(out),
                '\\' => out.push(self.escape()?),
                _ => out.push(ch),
            }
        }
    }

    fn escape(&mut self) -> Parsed<char> {
        let Some(ch) = self.peek() else { return Err(self.err("unterminated string")) };
        self.pos += ch.len_utf8();
        Ok(match ch {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            '0' => '\0',
            '\\' | '"' | '\'' => ch,
            'u' => {
                self.expect("{")?;
                let hex = self.take(|c| c.is_ascii_hexdigit());
                let code = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
                let code = code.ok_or_else(|| self.err(format!("`\\u{{{hex}}}` is not a character")))?;
                self.expect("}")?;
                code
            }
            other => return Err(self.err(format!("unknown escape `\\{other}`"))),
        })
    }

    /// ` key=` then a value read by `item`.
    fn attr<T>(&mut self, key: &str, item: impl FnOnce(&mut Self) -> Parsed<T>) -> Parsed<T> {
        self.expect(&format!(" {key}="))?;
        item(self)
    }

    /// `C0 = ceil(1.25 * 2 * B*T / 8)`.
    fn dim_def(&mut self) -> Parsed<DimDef> {
        let name = self.ident()?.to_string();
        self.expect(" = ceil(")?;
        let start = self.pos;
        let capacity = self.take(|ch| ch != ' ');
        let capacity = capacity.parse().map_err(|_| {
            self.pos = start;
            self.err(format!("expected a capacity factor, found `{capacity}`"))
        })?;
        self.expect(" * ")?;
        let k = self.int()?;
        self.expect(" * ")?;
        let tokens = self.dim()?;
        self.expect(" / ")?;
        let experts = self.dim()?;
        self.expect(")")?;
        self.end()?;
        Ok(DimDef { name, capacity, k, tokens, experts })
    }

    /// `NAME = %N` after `grad`, `metric`, `aux_loss`, `update`.
    fn named_value(&mut self) -> Parsed<(String, ValueId)> {
        let Some(at) = self.rest().find(" = %") else {
            return Err(self.err("expected `NAME = %N`"));
        };
        let name = self.rest()[..at].to_string();
        if name.is_empty() {
            return Err(self.err("expected a name before `=`"));
        }
        self.pos += at + 3;
        let v = self.value()?;
        self.end()?;
        Ok((name, v))
    }

    /// `%i: TYPE = NAME ARGS ATTRS  // SCOPE`, the node numbered `index`.
    fn node(&mut self, index: usize) -> Parsed<Node> {
        self.expect("%")?;
        let start = self.pos;
        let n = self.uint()?;
        if n != index {
            self.pos = start;
            return Err(self.err(format!("expected %{index}: nodes are numbered in order from %0")));
        }
        self.expect(":")?;
        self.expect(" ")?;
        let ty = self.tensor_type()?;
        self.expect(" = ")?;
        let name_at = self.pos;
        let name = self.take(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        let mut args = Vec::new();
        if self.eat(" %") {
            self.pos -= 1;
            args.push(self.value()?);
            while self.eat(", ") {
                args.push(self.value()?);
            }
        }
        let op = self.op(name, name_at, args.len())?;
        let mut scope = String::new();
        if self.eat("  // ") {
            scope = self.rest().to_string();
            self.pos = self.text.len();
            if scope.is_empty() || scope.trim() != scope {
                return Err(self.err("a scope is a name without surrounding spaces"));
            }
        }
        self.end()?;
        Ok(Node { op, args, ty, scope })
    }

    /// The op `name` and its attributes (after the arguments), the inverse of `Op::name`
    /// and `Op::attrs`. `n_args` tells `attention` whether it has a bias.
    fn op(&mut self, name: &str, name_at: usize, n_args: usize) -> Parsed<Op> {
        let reduce = REDUCE.iter().find(|r| r.name() == name);
        // `max` and `min` are both binary ops and reductions; a reduction has axes.
        if let (Some(&kind), true) = (reduce, self.rest().starts_with(" axes=")) {
            let axes = self.attr("axes", |c| c.list(|c| c.uint()))?;
            let keepdim = self.attr("keepdim", |c| c.boolean())?;
            return Ok(Op::Reduce { kind, axes, keepdim });
        }
        if let Some(&u) = UNARY.iter().find(|u| u.name() == name) {
            return Ok(Op::Unary(u));
        }
        if let Some(&b) = BINARY.iter().find(|b| b.name() == name) {
            return Ok(Op::Binary(b));
        }
        let axis = |c: &mut Self| c.attr("axis", |c| c.uint());
        let int = |c: &mut Self, key: &str| c.attr(key, |c| c.int());
        let float = |c: &mut Self, key: &str| c.attr(key, |c| c.float());
        Ok(match name {
            "input" | "param" | "buffer" => {
                self.expect(" ")?;
                let leaf = self.string()?;
                match name {
                    "input" => Op::Input { name: leaf },
                    "param" => Op::Param { name: leaf },
                    _ => Op::Buffer { name: leaf },
                }
            }
            "scalar" => {
                self.expect(" ")?;
                Op::Scalar { value: self.float()? }
            }
            "arange" => Op::Arange { n: self.attr("n", |c| c.dim())? },
            "where" => Op::Where,
            "softcap" => Op::Softcap { cap: float(self, "cap")? },
            "cast" => {
                let to = self.attr("to", |c| c.tensor_dtype())?;
                Op::Cast { to }
            }
            "dropout" => Op::Dropout { p: float(self, "p")?, key: self.attr("key", |c| c.key())? },
            "noise" => Op::Noise { std: float(self, "std")?, key: self.attr("key", |c| c.key())? },
            "softmax" => Op::Softmax { axis: axis(self)? },
            "log_softmax" => Op::LogSoftmax { axis: axis(self)? },
            "cumsum" => Op::Cumsum { axis: axis(self)? },
            "concat" => Op::Concat { axis: axis(self)? },
            "gather" => Op::Gather { axis: axis(self)? },
            "scatter_add" => Op::ScatterAdd { axis: axis(self)? },
            "matmul" => Op::MatMul,
            "attention" | "attention_grad" => {
                let wrt = if name == "attention_grad" {
                    let start = self.pos;
                    let word = self.attr("wrt", |c| Ok(c.take(|ch| ch.is_ascii_alphanumeric()).to_string()))?;
                    let i = super::op::ATTENTION_ARGS.iter().position(|a| *a == word).ok_or_else(|| {
                        self.pos = start;
                        self.err(format!("`wrt` is q, k, v or scores, found `{word}`"))
                    })?;
                    Some(i)
                } else {
                    None
                };
                let causal = self.attr("causal", |c| c.boolean())?;
                let scale = float(self, "scale")?;
                let window = if self.rest().starts_with(" window=") { Some(int(self, "window")?) } else { None };
                let softcap = if self.rest().starts_with(" softcap=") { Some(float(self, "softcap")?) } else { None };
                match wrt {
                    Some(wrt) => Op::AttentionGrad { wrt, causal, window, softcap, scale, has_bias: n_args == 5 },
                    None => Op::Attention { causal, window, softcap, scale, has_bias: n_args == 4 },
                }
            }
            "reshape" | "broadcast" => {
                self.expect(" ")?;
                let shape = self.dims()?;
                if name == "reshape" {
                    Op::Reshape { shape }
                } else {
                    Op::Broadcast { shape }
                }
            }
            "transpose" => Op::Transpose { perm: self.attr("perm", |c| c.list(|c| c.uint()))? },
            "slice" => {
                let axis = axis(self)?;
                self.expect(" ")?;
                let start = self.dim()?;
                self.expect("..")?;
                Op::Slice { axis, start, end: self.dim()? }
            }
            "pad" => Op::Pad {
                axis: axis(self)?,
                before: int(self, "before")?,
                after: int(self, "after")?,
                value: float(self, "value")?,
            },
            "embedding" => Op::Embedding,
            "topk_values" | "topk_indices" => Op::TopK { k: int(self, "k")?, indices: name == "topk_indices" },
            "one_hot" => Op::OneHot { n: int(self, "n")? },
            "cross_entropy" => Op::CrossEntropy { ignore: int(self, "ignore")? },
            "lstm" => Op::Lstm { reverse: self.attr("reverse", |c| c.boolean())? },
            "moe_route" => Op::MoeRoute { k: int(self, "k")?, capacity: self.attr("capacity", |c| c.dim())? },
            "moe_dispatch" => Op::MoeDispatch,
            "moe_combine" => Op::MoeCombine,
            "moe_balance" => Op::MoeBalance { k: int(self, "k")? },
            "moe_zloss" => Op::MoeZLoss,
            "moe_load" => Op::MoeLoad { k: int(self, "k")? },
            "moe_overflow" => Op::MoeOverflow { k: int(self, "k")? },
            _ => {
                self.pos = name_at;
                let known = UNARY
                    .iter()
                    .map(|u| u.name())
                    .chain(BINARY.iter().map(|b| b.name()))
                    .chain(REDUCE.iter().map(|r| r.name()))
                    .chain(OTHER_OPS.iter().copied());
                let hint = match crate::error::suggest(name, known) {
                    Some(s) => format!("; did you mean `{s}`?"),
                    None => String::new(),
                };
                return Err(self.err(format!("unknown op `{name}`{hint}")));
            }
        })
    }

    fn tensor_dtype(&mut self) -> Parsed<DType> {
        let start = self.pos;
        let name = self.ident()?;
        DType::parse(name).ok_or_else(|| {
            self.pos = start;
            self.err(format!("unknown dtype `{name}` (f32, f16, bf16, i32, i64, bool)"))
        })
    }
}

#[cfg(test)]
mod tests;
