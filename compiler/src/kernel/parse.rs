//! Kernel IR text → `KernelProgram`: the inverse of `text.rs` (printing what this parses
//! gives the same text back), so a test can start from a Kernel IR fixture. Lines that
//! start with `;` are comments; errors name the line and column. The parser is
//! syntactic; `verify` checks the result.

use super::*;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

type Parsed<T> = Result<T, ParseError>;

/// Parses the text form of one program.
pub fn parse(text: &str) -> Parsed<KernelProgram> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with(';'))
        .collect();
    let mut p = Parser { lines, at: 0 };
    p.program()
}

struct Parser<'a> {
    lines: Vec<(usize, &'a str)>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn next_line(&mut self) -> Option<Cursor<'a>> {
        let (n, l) = *self.lines.get(self.at)?;
        self.at += 1;
        let trimmed = l.trim_start();
        Some(Cursor { text: l, pos: l.len() - trimmed.len(), line: n })
    }

    fn peek(&self) -> Option<&'a str> {
        self.lines.get(self.at).map(|(_, l)| l.trim())
    }

    fn end_err(&self, what: &str) -> ParseError {
        let line = self.lines.last().map_or(1, |(n, _)| n + 1);
        ParseError { line, column: 1, message: format!("the text ends inside {what}") }
    }

    fn program(&mut self) -> Parsed<KernelProgram> {
        let mut p = KernelProgram::default();
        while let Some(mut c) = self.next_line() {
            if c.eat("dim ") {
                p.dim_defs.push(c.dim_def()?);
            } else if c.eat("buffer ") {
                let id = c.id('b')?;
                if id as usize != p.buffers.len() {
                    return Err(c.err(format!("expected buffer b{}, found b{id}", p.buffers.len())));
                }
                c.expect(": ")?;
                let dtype = c.dtype()?;
                c.expect("[")?;
                let shape = c.dims_until(']')?;
                c.expect("]")?;
                let kind = if c.eat(" input ") {
                    BufferKind::Input(c.string()?)
                } else if c.eat(" param ") {
                    BufferKind::Param(c.string()?)
                } else {
                    BufferKind::Temp
                };
                c.end()?;
                p.buffers.push(Buffer { dtype, shape, kind });
            } else if c.eat("kernel ") {
                let name = c.word_text().to_string();
                c.pos += name.len();
                c.expect(" ")?;
                let scope = c.string()?;
                c.end()?;
                let body = self.kernel_body(&name)?;
                p.kernels.push(Kernel { name, scope, body });
            } else if c.eat("return ") {
                let (name, b) = c.named_buffer()?;
                p.returns.push((name, b));
            } else if c.eat("update ") {
                let (name, b) = c.named_buffer()?;
                p.updates.push((name, b));
            } else {
                return Err(c.err(format!(
                    "expected `dim`, `buffer`, `kernel`, `return` or `update`, found `{}`",
                    c.word_text()
                )));
            }
        }
        Ok(p)
    }

    fn kernel_body(&mut self, name: &str) -> Parsed<KernelBody> {
        let mut nests = Vec::new();
        loop {
            match self.peek() {
                Some(l) if l.starts_with("loop") => {
                    let mut c = self.next_line().ok_or_else(|| self.end_err("a kernel"))?;
                    c.expect("loop ")?;
                    let parallel = c.loops_until('{')?;
                    c.expect("{")?;
                    c.end()?;
                    let body = self.block()?;
                    nests.push(LoopNest { parallel, body });
                }
                Some(l) if l.starts_with("gemm ") && nests.is_empty() => {
                    let mut c = self.next_line().ok_or_else(|| self.end_err("a kernel"))?;
                    let g = self.gemm(&mut c)?;
                    return Ok(KernelBody::Call(Call::Gemm(Box::new(g))));
                }
                Some(l) if l.starts_with("call ") && nests.is_empty() => {
                    let mut c = self.next_line().ok_or_else(|| self.end_err("a kernel"))?;
                    return Ok(KernelBody::Call(c.routine_call()?));
                }
                _ if !nests.is_empty() => return Ok(KernelBody::Loops(nests)),
                _ => return Err(self.end_err(&format!("kernel {name} (no `loop`, `gemm` or `call`)"))),
            }
        }
    }

    fn gemm(&mut self, c: &mut Cursor<'a>) -> Parsed<Gemm> {
        c.expect("gemm ")?;
        let dtype = c.dtype()?;
        c.expect(" batch [")?;
        let batch = c.dims_until(']')?;
        c.expect("] m ")?;
        let m = c.dim_until(' ')?;
        c.expect(" n ")?;
        let n = c.dim_until(' ')?;
        c.expect(" k ")?;
        let k = c.dim_until(' ')?;
        c.expect(" a ")?;
        let a = c.view()?;
        c.expect(" b ")?;
        let b = c.view()?;
        c.expect(" at ")?;
        let mut vars = Vec::new();
        loop {
            if c.eat("_") {
                vars.push(None);
            } else {
                vars.push(Some(Var(c.id('i')?)));
            }
            if !c.eat(", ") {
                break;
            }
        }
        c.expect(" acc ")?;
        let acc = Temp(c.id('t')?);
        c.expect(" {")?;
        c.end()?;
        let epilogue = self.block()?;
        Ok(Gemm { dtype, batch, m, n, k, a, b, vars, acc, epilogue })
    }

    /// Statements up to the closing `}` line (consumed).
    fn block(&mut self) -> Parsed<Vec<Stmt>> {
        let mut out = Vec::new();
        loop {
            let mut c = self.next_line().ok_or_else(|| self.end_err("a block (no closing `}`)"))?;
            if c.rest() == "}" {
                return Ok(out);
            }
            out.push(self.stmt(&mut c)?);
        }
    }

    fn stmt(&mut self, c: &mut Cursor<'a>) -> Parsed<Stmt> {
        if c.eat("for ") {
            let over = c.loops_until('{')?;
            c.expect("{")?;
            c.end()?;
            return Ok(Stmt::For { over, body: self.block()? });
        }
        if c.eat("store ") {
            let buf = BufId(c.id('b')?);
            c.expect("[")?;
            let index = c.indices_until(']')?;
            c.expect("] = ")?;
            let value = Temp(c.id('t')?);
            c.end()?;
            return Ok(Stmt::Store { buf, index, value });
        }
        if c.eat("check ") {
            let value = Temp(c.id('t')?);
            c.expect(" < ")?;
            let below = c.dim_until(' ')?;
            c.expect(" ")?;
            let what = c.string()?;
            c.end()?;
            return Ok(Stmt::Check { value, below, what });
        }
        let temp = Temp(c.id('t')?);
        c.expect(": ")?;
        let dtype = c.dtype()?;
        c.expect(" = ")?;
        for combine in [Combine::Sum, Combine::Max, Combine::Min] {
            // `max t1, t2` is the binary op; a reduction names its loops (`max i3 < 64 {`).
            let head = format!("{} i", combine.name());
            let is_loop =
                c.rest().starts_with(&head) && c.rest()[head.len()..].starts_with(|ch: char| ch.is_ascii_digit());
            if is_loop && c.eat(&format!("{} ", combine.name())) {
                let over = c.loops_until('{')?;
                c.expect("{")?;
                c.end()?;
                let mut body = Vec::new();
                loop {
                    let mut l = self.next_line().ok_or_else(|| self.end_err("a reduction"))?;
                    if l.eat("} -> ") {
                        let value = Temp(l.id('t')?);
                        l.end()?;
                        return Ok(Stmt::Reduce { temp, dtype, combine, over, body, value });
                    }
                    body.push(self.stmt(&mut l)?);
                }
            }
        }
        let value = c.expr()?;
        c.end()?;
        Ok(Stmt::Let { temp, dtype, value })
    }
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, message: impl Into<String>) -> ParseError {
        let column = self.text[..self.pos.min(self.text.len())].chars().count() + 1;
        ParseError { line: self.line, column, message: message.into() }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
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
            Ok(())
        } else {
            Err(self.err(format!("expected `{s}`, found `{}`", self.word_text())))
        }
    }

    fn end(&self) -> Parsed<()> {
        if self.rest().trim().is_empty() {
            Ok(())
        } else {
            Err(self.err(format!("unexpected `{}` at the end of the line", self.rest().trim())))
        }
    }

    fn word_text(&self) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        if end == 0 {
            "end of line"
        } else {
            &rest[..end]
        }
    }

    fn uint(&mut self) -> Parsed<u64> {
        let digits = self.rest().chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(self.err(format!("expected a number, found `{}`", self.word_text())));
        }
        let s = &self.rest()[..digits];
        let v = s.parse().map_err(|_| self.err(format!("{s} is out of range")))?;
        self.pos += digits;
        Ok(v)
    }

    fn int(&mut self) -> Parsed<i64> {
        let neg = self.eat("-");
        let v = i64::try_from(self.uint()?).map_err(|_| self.err("the number is out of range"))?;
        Ok(if neg { -v } else { v })
    }

    fn id(&mut self, prefix: char) -> Parsed<u32> {
        if !self.eat(&prefix.to_string()) {
            return Err(self.err(format!("expected `{prefix}N`, found `{}`", self.word_text())));
        }
        u32::try_from(self.uint()?).map_err(|_| self.err("the number is out of range"))
    }

    fn string(&mut self) -> Parsed<String> {
        let start = self.pos;
        let parsed: Result<String, _> = {
            let rest = self.rest();
            // Debug-quoted, as `{:?}` printed it: find the closing quote, honouring escapes.
            let mut end = None;
            let mut escaped = false;
            for (i, ch) in rest.char_indices().skip(1) {
                match (escaped, ch) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            match (rest.starts_with('"'), end) {
                (true, Some(e)) => {
                    self.pos += e + 1;
                    serde_json::from_str(&rest[..=e]).map_err(|e| e.to_string())
                }
                _ => Err("expected a quoted string".to_string()),
            }
        };
        parsed.map_err(|m| {
            self.pos = start;
            self.err(m)
        })
    }

    fn dtype(&mut self) -> Parsed<DType> {
        let len = self.rest().chars().take_while(|c| c.is_ascii_alphanumeric()).count();
        let name = &self.rest()[..len];
        let d = DType::parse(name).ok_or_else(|| self.err(format!("expected a dtype, found `{name}`")))?;
        self.pos += len;
        Ok(d)
    }

    fn float(&mut self) -> Parsed<f64> {
        let len = self.rest().find(|c: char| c.is_whitespace() || c == ',' || c == ')').unwrap_or(self.rest().len());
        let s = &self.rest()[..len];
        let v = s.parse::<f64>().map_err(|_| self.err(format!("expected a number, found `{s}`")))?;
        self.pos += len;
        Ok(v)
    }

    fn boolean(&mut self) -> Parsed<bool> {
        if self.eat("true") {
            Ok(true)
        } else if self.eat("false") {
            Ok(false)
        } else {
            Err(self.err(format!("expected `true` or `false`, found `{}`", self.word_text())))
        }
    }

    /// A dim as `Dim` prints it (`B*T`, `2*T-1`, `4096`), ending before `stop`.
    fn dim_until(&mut self, stop: char) -> Parsed<Dim> {
        let len = self.rest().find(stop).unwrap_or(self.rest().len());
        let s = &self.rest()[..len];
        let d = parse_dim(s).map_err(|m| self.err(m))?;
        self.pos += len;
        Ok(d)
    }

    fn dims_until(&mut self, stop: char) -> Parsed<Vec<Dim>> {
        let len = self.rest().find(stop).unwrap_or(self.rest().len());
        let s = &self.rest()[..len];
        let dims = if s.trim().is_empty() {
            Vec::new()
        } else {
            s.split(", ").map(parse_dim).collect::<Result<Vec<_>, _>>().map_err(|m| self.err(m))?
        };
        self.pos += len;
        Ok(dims)
    }

    /// `i0 < B, i1 < 64 ` up to `stop`.
    fn loops_until(&mut self, stop: char) -> Parsed<Vec<(Var, Dim)>> {
        let mut out = Vec::new();
        if self.rest().trim_start().starts_with(stop) {
            self.pos += self.rest().len() - self.rest().trim_start().len();
            return Ok(out);
        }
        while !self.rest().starts_with(stop) {
            let v = Var(self.id('i')?);
            self.expect(" < ")?;
            let len = self.rest().find([',', stop]).unwrap_or(self.rest().len());
            let s = self.rest()[..len].trim_end();
            let d = parse_dim(s).map_err(|m| self.err(m))?;
            self.pos += s.len();
            out.push((v, d));
            if !self.eat(", ") {
                self.eat(" ");
                break;
            }
        }
        Ok(out)
    }

    fn size(&mut self) -> Parsed<Dim> {
        if self.eat("{") {
            let d = self.dim_until('}')?;
            self.expect("}")?;
            Ok(d)
        } else {
            Ok(Dim::constant(self.int()?))
        }
    }

    fn index(&mut self) -> Parsed<Index> {
        if self.eat("(") {
            let a = self.index()?;
            let out = if self.eat(" + ") {
                Index::Add(Box::new(a), Box::new(self.index()?))
            } else if self.eat(" * ") {
                Index::Mul(Box::new(a), self.size()?)
            } else if self.eat(" / ") {
                Index::Div(Box::new(a), self.size()?)
            } else if self.eat(" % ") {
                Index::Rem(Box::new(a), self.size()?)
            } else {
                return Err(self.err(format!("expected `+`, `*`, `/` or `%`, found `{}`", self.word_text())));
            };
            self.expect(")")?;
            return Ok(out);
        }
        if self.rest().starts_with('i') {
            return Ok(Index::Var(Var(self.id('i')?)));
        }
        if self.rest().starts_with('t') {
            return Ok(Index::Temp(Temp(self.id('t')?)));
        }
        if self.eat("{") {
            let d = self.dim_until('}')?;
            self.expect("}")?;
            return Ok(Index::Dim(d));
        }
        Ok(Index::Const(self.int()?))
    }

    fn indices_until(&mut self, stop: char) -> Parsed<Vec<Index>> {
        let mut out = Vec::new();
        while !self.rest().starts_with(stop) {
            out.push(self.index()?);
            if !self.eat(", ") {
                break;
            }
        }
        Ok(out)
    }

    fn temp(&mut self) -> Parsed<Temp> {
        Ok(Temp(self.id('t')?))
    }

    fn expr(&mut self) -> Parsed<Expr> {
        if self.eat("const ") {
            return Ok(Expr::Const(self.float()?));
        }
        if self.eat("load ") {
            let buf = BufId(self.id('b')?);
            self.expect("[")?;
            let index = self.indices_until(']')?;
            self.expect("]")?;
            let default = if self.eat(" or ") { Some(self.float()?) } else { None };
            return Ok(Expr::Load { buf, index, default });
        }
        if self.eat("index ") {
            return Ok(Expr::Index(self.index()?));
        }
        if self.eat("select ") {
            let c = self.temp()?;
            self.expect(", ")?;
            let x = self.temp()?;
            self.expect(", ")?;
            return Ok(Expr::Select(c, x, self.temp()?));
        }
        if self.eat("cast ") {
            let to = self.dtype()?;
            self.expect(" ")?;
            return Ok(Expr::Cast(to, self.temp()?));
        }
        if self.eat("training") {
            return Ok(Expr::Training);
        }
        for (word, normal) in [("uniform ", false), ("normal ", true)] {
            if self.eat(word) {
                self.expect("0x")?;
                let len = self.rest().chars().take_while(|c| c.is_ascii_hexdigit()).count();
                let stream =
                    u64::from_str_radix(&self.rest()[..len], 16).map_err(|_| self.err("expected a hex stream"))?;
                self.pos += len;
                self.expect(" ")?;
                return Ok(Expr::Random { normal, stream, counter: self.index()? });
            }
        }
        let word = self.word_text();
        if let Some(u) = crate::graph::parse::UNARY.iter().find(|u| u.name() == word) {
            self.pos += word.len();
            self.expect(" ")?;
            return Ok(Expr::Unary(*u, self.temp()?));
        }
        if let Some(b) = crate::graph::parse::BINARY.iter().find(|b| b.name() == word) {
            self.pos += word.len();
            self.expect(" ")?;
            let x = self.temp()?;
            self.expect(", ")?;
            return Ok(Expr::Binary(*b, x, self.temp()?));
        }
        Err(self.err(format!("expected an operation, found `{word}`")))
    }

    fn view(&mut self) -> Parsed<View> {
        let buf = BufId(self.id('b')?);
        self.expect("(offset ")?;
        let offset = self.dim_until(',')?;
        self.expect(", batch [")?;
        let batch_strides = self.dims_until(']')?;
        self.expect("], rows ")?;
        let row_stride = self.dim_until(',')?;
        self.expect(", cols ")?;
        let col_stride = self.dim_until(')')?;
        self.expect(")")?;
        Ok(View { buf, offset, batch_strides, row_stride, col_stride })
    }

    fn named_buffer(&mut self) -> Parsed<(String, BufId)> {
        let len = self.rest().find(" = ").ok_or_else(|| self.err("expected `NAME = bN`"))?;
        let name = self.rest()[..len].to_string();
        self.pos += len;
        self.expect(" = ")?;
        let b = BufId(self.id('b')?);
        self.end()?;
        Ok((name, b))
    }

    fn key(&mut self, key: &str) -> bool {
        self.eat(&format!(" {key}="))
    }

    fn routine_call(&mut self) -> Parsed<Call> {
        self.expect("call ")?;
        let word = self.word_text().to_string();
        let name: String = word.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        self.pos += name.len();
        let routine = match name.as_str() {
            "attention" | "attention_grad" => {
                let wrt = if name == "attention_grad" {
                    self.expect(" wrt=")?;
                    let w = self.word_text();
                    let i = crate::graph::op::ATTENTION_ARGS
                        .iter()
                        .position(|a| *a == w)
                        .ok_or_else(|| self.err(format!("`wrt` is q, k, v or scores, found `{w}`")))?;
                    self.pos += w.len();
                    Some(i)
                } else {
                    None
                };
                self.expect(" causal=")?;
                let causal = self.boolean()?;
                self.expect(" scale=")?;
                let scale = self.float()?;
                self.expect(" bias=")?;
                let has_bias = self.boolean()?;
                let window = if self.key("window") { Some(self.int()?) } else { None };
                let softcap = if self.key("softcap") { Some(self.float()?) } else { None };
                match wrt {
                    Some(wrt) => Routine::AttentionGrad { wrt, causal, window, softcap, scale, has_bias },
                    None => Routine::Attention { causal, window, softcap, scale, has_bias },
                }
            }
            "scatter_add" | "cumsum" => {
                self.expect(" axis=")?;
                let axis = self.uint()? as usize;
                if name == "cumsum" {
                    Routine::Cumsum { axis }
                } else {
                    Routine::ScatterAdd { axis }
                }
            }
            "topk_values" | "topk_indices" | "moe_balance" | "moe_load" | "moe_overflow" => {
                self.expect(" k=")?;
                let k = self.int()?;
                match name.as_str() {
                    "topk_values" => Routine::TopK { k, indices: false },
                    "topk_indices" => Routine::TopK { k, indices: true },
                    "moe_balance" => Routine::MoeBalance { k },
                    "moe_load" => Routine::MoeLoad { k },
                    _ => Routine::MoeOverflow { k },
                }
            }
            "lstm" => {
                self.expect(" reverse=")?;
                Routine::Lstm { reverse: self.boolean()? }
            }
            "moe_route" => {
                self.expect(" k=")?;
                let k = self.int()?;
                self.expect(" capacity={")?;
                let capacity = self.dim_until('}')?;
                self.expect("}")?;
                Routine::MoeRoute { k, capacity }
            }
            "moe_dispatch" => Routine::MoeDispatch,
            "moe_combine" => Routine::MoeCombine,
            "moe_zloss" => Routine::MoeZLoss,
            other => return Err(self.err(format!("unknown library routine `{other}`"))),
        };
        self.expect(" (")?;
        let mut args = Vec::new();
        while !self.rest().starts_with(')') {
            args.push(BufId(self.id('b')?));
            if !self.eat(", ") {
                break;
            }
        }
        self.expect(") -> ")?;
        let out = BufId(self.id('b')?);
        self.end()?;
        Ok(Call::Routine { routine, args, out })
    }

    fn dim_def(&mut self) -> Parsed<DimDef> {
        let len = self.rest().find(" = ceil(").ok_or_else(|| self.err("expected `NAME = ceil(...)`"))?;
        let name = self.rest()[..len].to_string();
        self.pos += len;
        self.expect(" = ceil(")?;
        let capacity = self.float()?;
        self.expect(" * ")?;
        let k = self.int()?;
        self.expect(" * ")?;
        let end = self.rest().rfind(" / ").ok_or_else(|| self.err("expected ` / `"))?;
        let tokens = parse_dim(&self.rest()[..end]).map_err(|m| self.err(m))?;
        self.pos += end;
        self.expect(" / ")?;
        let experts = self.dim_until(')')?;
        self.expect(")")?;
        self.end()?;
        Ok(DimDef { name, capacity, k, tokens, experts })
    }
}

/// A polynomial as `Dim` prints it: terms `[-]N`, `[-][N*]S*S...` joined by `+`/`-`.
pub fn parse_dim(s: &str) -> Result<Dim, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("expected a dim".into());
    }
    let mut total = Dim::constant(0);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let mut sign = 1i64;
        if bytes[i] == b'+' {
            i += 1;
        } else if bytes[i] == b'-' {
            sign = -1;
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'+' && !(bytes[i] == b'-' && i > start) {
            i += 1;
        }
        let term = &s[start..i];
        let mut value = Dim::constant(sign);
        for factor in term.split('*') {
            let f = if factor.chars().all(|c| c.is_ascii_digit()) && !factor.is_empty() {
                Dim::constant(factor.parse::<i64>().map_err(|_| format!("{factor} is out of range"))?)
            } else if factor.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && factor.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                Dim::symbol(factor)
            } else {
                return Err(format!("`{s}` is not a dim"));
            };
            value = value.mul(&f);
        }
        total = total.add(&value);
    }
    Ok(total)
}
