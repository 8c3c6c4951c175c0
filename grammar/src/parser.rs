//! Source text → AST. The scanner runs first (brackets, strings, nesting limit), then the
//! pest grammar (`model.pest`), then this file turns pest's parse tree into `ast` nodes:
//! operators are folded with a shunting-yard loop (no recursion), numbers and strings are
//! validated, and pest's failures are translated into sentences.

use crate::ast::*;
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::scan::{self, Scan};
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "../model.pest"]
struct ModelParser;

/// A parsed file: the tree, and what the scanner found (comments for the formatter).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub ast: File,
    pub scan: Scan,
}

/// Parses one file. The first error stops parsing: later errors in a file whose brackets
/// or tokens are already wrong are mostly echoes of the first.
pub fn parse(file: &SourceFile) -> Result<Parsed> {
    let scan = scan::scan(file)?;
    let mut pairs = match ModelParser::parse(Rule::file, &file.text) {
        Ok(pairs) => pairs,
        Err(_) => return Err(translate(&parse_with_detail(&file.text), file, &scan)),
    };
    let root = pairs.next().ok_or_else(|| Diagnostic::error("empty parse", Span::new(0, 0)))?;
    let ast = Builder { text: &file.text, comments: &scan.comments }.file(root)?;
    if ast.items.is_empty() {
        let end = file.text.len();
        return Err(Diagnostic::error("this file declares nothing", Span::new(end, end))
            .with_label("expected an item")
            .with_help("a `.model` file holds `use`, `const`, `enum`, `block`, `model` and `recipe` items"));
    }
    Ok(Parsed { ast, scan })
}

type Result<T> = std::result::Result<T, Diagnostic>;

/// Parses again, recording the tokens expected at the failure point for `translate`.
/// Tracking them halves parsing speed, so only failed parses pay for it. The switch is
/// process-global in pest: the lock keeps concurrent failing parses from turning it off
/// under each other (a concurrent successful parse may merely run slower).
fn parse_with_detail(text: &str) -> pest::error::Error<Rule> {
    static DETAIL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = DETAIL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    pest::set_error_detail(true);
    let result = ModelParser::parse(Rule::file, text);
    pest::set_error_detail(false);
    match result {
        Err(e) => e,
        Ok(_) => pest::error::Error::new_from_pos(
            ErrorVariant::CustomError { message: "the parser disagreed with itself".to_string() },
            pest::Position::from_start(text),
        ),
    }
}

/// Children that carry meaning: keyword tokens are checked by the grammar and dropped.
fn children<'i>(pair: Pair<'i, Rule>) -> impl Iterator<Item = Pair<'i, Rule>> {
    pair.into_inner().filter(|p| !is_keyword(p.as_rule()))
}

fn is_keyword(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::kw_use
            | Rule::kw_const
            | Rule::kw_enum
            | Rule::kw_recipe
            | Rule::kw_forward
            | Rule::kw_return
            | Rule::kw_if
            | Rule::kw_else
            | Rule::kw_buffer
            | Rule::kw_aux_loss
            | Rule::kw_metric
            | Rule::kw_stored
            | Rule::kw_unused
            | Rule::EOI
    )
}

struct Builder<'a> {
    text: &'a str,
    comments: &'a [scan::Comment],
}

impl Builder<'_> {
    /// A node's span, ending at its last token: pest's spans can run on over the
    /// whitespace and comments that an empty optional tail skipped.
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        let (start, mut end) = (s.start(), s.end());
        loop {
            end = start + self.text[start..end].trim_end().len();
            let i = self.comments.partition_point(|c| c.span.end < end);
            match self.comments.get(i) {
                Some(c) if c.span.end == end && c.span.start >= start => end = c.span.start,
                _ => break,
            }
        }
        Span::new(start, end)
    }

    fn file(&self, pair: Pair<Rule>) -> Result<File> {
        let sp = self.span(&pair);
        let items = children(pair).map(|p| self.item(p)).collect::<Result<_>>()?;
        Ok(File { items, span: sp })
    }

    fn docs(&self, pair: Pair<Rule>) -> Docs {
        pair.into_inner()
            .map(|d| {
                let body = &d.as_str()[3..];
                body.strip_prefix(' ').unwrap_or(body).trim_end().to_string()
            })
            .collect()
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident { name: pair.as_str().to_string(), span: self.span(&pair) }
    }

    fn item(&self, pair: Pair<Rule>) -> Result<Item> {
        let sp = self.span(&pair);
        let mut it = pair.into_inner();
        let docs = self.docs(it.next().expect("grammar: item starts with docs"));
        let inner = it.next().expect("grammar: item has a body");
        let kind = match inner.as_rule() {
            Rule::use_item => ItemKind::Use(self.use_item(inner)?),
            Rule::const_item => ItemKind::Const(self.const_item(inner)?),
            Rule::enum_item => ItemKind::Enum(self.enum_item(inner)),
            Rule::block_item => ItemKind::Block(self.block_item(inner)?),
            Rule::recipe_item => ItemKind::Recipe(self.recipe_item(inner)?),
            r => unreachable!("grammar: unexpected item rule {r:?}"),
        };
        Ok(Item { docs, kind, span: sp })
    }

    fn use_item(&self, pair: Pair<Rule>) -> Result<Use> {
        let inner = children(pair).next().expect("grammar: use has a target");
        if inner.as_rule() == Rule::string {
            let sp = self.span(&inner);
            return Ok(Use::File { path: self.string(inner)?, span: sp });
        }
        let sp = self.span(&inner);
        let mut path = Vec::new();
        let mut group = None;
        for p in inner.into_inner() {
            match p.as_rule() {
                Rule::ident => path.push(self.ident(p)),
                _ => group = Some(p.into_inner().map(|i| self.ident(i)).collect::<Vec<_>>()),
            }
        }
        let names = match group {
            Some(names) => names,
            None if path.len() >= 2 => vec![path.pop().expect("len checked")],
            None => {
                return Err(Diagnostic::error("`use` needs a module and the names to import from it", sp)
                    .with_label("this is only a module")
                    .with_help("write `use std.nn.Linear` or `use std.nn.{Linear, RMSNorm}`"))
            }
        };
        Ok(Use::Module { path, names })
    }

    fn const_item(&self, pair: Pair<Rule>) -> Result<Const> {
        let mut it = children(pair);
        let name = self.ident(it.next().expect("grammar: const name"));
        let mut ty = None;
        let mut value = None;
        for p in it {
            match p.as_rule() {
                Rule::ty => ty = Some(self.ty(p)?),
                _ => value = Some(self.expr(p)?),
            }
        }
        Ok(Const { name, ty, value: value.expect("grammar: const value") })
    }

    fn enum_item(&self, pair: Pair<Rule>) -> EnumDef {
        let mut it = children(pair);
        let name = self.ident(it.next().expect("grammar: enum name"));
        let variants = it
            .map(|v| {
                let mut vi = v.into_inner();
                let docs = self.docs(vi.next().expect("grammar: variant docs"));
                Variant { docs, name: self.ident(vi.next().expect("grammar: variant name")) }
            })
            .collect();
        EnumDef { name, variants }
    }

    fn block_item(&self, pair: Pair<Rule>) -> Result<BlockDef> {
        let mut it = children(pair);
        let kind = match it.next().expect("grammar: block keyword").as_rule() {
            Rule::kw_model => BlockKind::Model,
            _ => BlockKind::Block,
        };
        let name = self.ident(it.next().expect("grammar: block name"));
        let mut params = Vec::new();
        let mut members = Vec::new();
        for p in it {
            match p.as_rule() {
                Rule::params => params = self.params(p)?,
                _ => members.push(self.member(p)?),
            }
        }
        Ok(BlockDef { kind, name, params, members })
    }

    fn params(&self, pair: Pair<Rule>) -> Result<Vec<Param>> {
        pair.into_inner().map(|p| self.param(p)).collect()
    }

    fn param(&self, pair: Pair<Rule>) -> Result<Param> {
        let sp = self.span(&pair);
        let mut it = pair.into_inner();
        let docs = self.docs(it.next().expect("grammar: param docs"));
        let name = self.ident(it.next().expect("grammar: param name"));
        let ty = self.ty(it.next().expect("grammar: param type"))?;
        let default = it.next().map(|e| self.expr(e)).transpose()?;
        Ok(Param { docs, name, ty, default, span: sp })
    }

    fn recipe_item(&self, pair: Pair<Rule>) -> Result<Recipe> {
        let mut it = children(pair);
        let name = self.ident(it.next().expect("grammar: recipe name"));
        let entries = it
            .map(|e| {
                let sp = self.span(&e);
                let mut ei = e.into_inner();
                let docs = self.docs(ei.next().expect("grammar: entry docs"));
                let key = self.ident(ei.next().expect("grammar: entry key"));
                let value = self.recipe_value(ei.next().expect("grammar: entry value"))?;
                Ok(Entry { docs, key, value, span: sp })
            })
            .collect::<Result<_>>()?;
        Ok(Recipe { name, entries })
    }

    fn recipe_value(&self, pair: Pair<Rule>) -> Result<Expr> {
        let mut it = pair.into_inner();
        let mut acc = self.expr(it.next().expect("grammar: recipe value"))?;
        while let (Some(op), Some(rhs)) = (it.next(), it.next()) {
            let op = match op.into_inner().next().map(|k| k.as_rule()) {
                Some(Rule::kw_then) => BinaryOp::Then,
                _ => BinaryOp::From,
            };
            let rhs = self.expr(rhs)?;
            let sp = acc.span.to(rhs.span);
            acc = Expr { kind: ExprKind::Binary { op, lhs: Box::new(acc), rhs: Box::new(rhs) }, span: sp };
        }
        Ok(acc)
    }

    fn member(&self, pair: Pair<Rule>) -> Result<Member> {
        let sp = self.span(&pair);
        let mut it = pair.into_inner();
        let docs = self.docs(it.next().expect("grammar: member docs"));
        let inner = it.next().expect("grammar: member body");
        let kind = self.member_kind(inner)?;
        Ok(Member { docs, kind, span: sp })
    }

    fn member_kind(&self, inner: Pair<Rule>) -> Result<MemberKind> {
        Ok(match inner.as_rule() {
            Rule::forward_def => MemberKind::Forward(self.forward(inner)?),
            Rule::const_item => MemberKind::Const(self.const_item(inner)?),
            Rule::if_member => self.if_member(inner)?,
            Rule::param_decl => {
                let mut it = inner.into_inner();
                let name = self.ident(it.next().expect("grammar: param name"));
                let ty = self.ty(it.next().expect("grammar: param type"))?;
                let (mut init, mut stored) = (None, None);
                for p in it {
                    if p.as_rule() == Rule::stored {
                        let shape = children(p).next().expect("grammar: stored shape");
                        let span = self.span(&shape);
                        stored = Some(Type {
                            kind: TypeKind::Tensor { dtype: None, dims: self.dims(shape)? },
                            optional: false,
                            span,
                        });
                    } else {
                        init = Some(self.expr(p)?);
                    }
                }
                MemberKind::Param { name, ty, init, stored }
            }
            Rule::unused_decl => MemberKind::Unused(
                children(inner).map(|p| Ok((self.string(p.clone())?, self.span(&p)))).collect::<Result<_>>()?,
            ),
            Rule::buffer_decl => {
                let mut it = children(inner);
                let name = self.ident(it.next().expect("grammar: buffer name"));
                let value = self.expr(it.next().expect("grammar: buffer value"))?;
                MemberKind::Buffer { name, value }
            }
            Rule::sub_decl => {
                let mut it = inner.into_inner();
                let name = self.ident(it.next().expect("grammar: sub-block name"));
                let mut next = it.next().expect("grammar: sub-block body");
                let mut copies = None;
                if next.as_rule() == Rule::multiplicity {
                    let mut mi = next.into_inner();
                    let kind = match mi.next().map(|k| k.as_rule()) {
                        Some(Rule::kw_repeat) => CopiesKind::Repeat,
                        _ => CopiesKind::Stack,
                    };
                    let count = self.expr(mi.next().expect("grammar: copy count"))?;
                    copies = Some(Copies { kind, count });
                    next = it.next().expect("grammar: sub-block name");
                }
                let block = self.ident(next);
                let args = self.call_args(it.next().expect("grammar: sub-block args"))?;
                MemberKind::Sub { name, copies, block, args }
            }
            r => unreachable!("grammar: unexpected member rule {r:?}"),
        })
    }

    fn if_member(&self, pair: Pair<Rule>) -> Result<MemberKind> {
        let mut it = children(pair);
        let cond = self.expr(it.next().expect("grammar: if condition"))?;
        let then = self.member_body(it.next().expect("grammar: if body"))?;
        let otherwise = match it.next() {
            None => None,
            Some(p) if p.as_rule() == Rule::if_member => {
                let sp = self.span(&p);
                Some(Else::If(Box::new(Member { docs: Vec::new(), kind: self.if_member(p)?, span: sp })))
            }
            Some(p) => Some(Else::Body(self.member_body(p)?)),
        };
        Ok(MemberKind::If { cond, then, otherwise })
    }

    fn member_body(&self, pair: Pair<Rule>) -> Result<Vec<Member>> {
        pair.into_inner().map(|m| self.member(m)).collect()
    }

    fn forward(&self, pair: Pair<Rule>) -> Result<Forward> {
        let mut params = Vec::new();
        let mut ret = None;
        let mut body = Vec::new();
        for p in children(pair) {
            match p.as_rule() {
                Rule::params => params = self.params(p)?,
                Rule::ty => ret = Some(self.ty(p)?),
                _ => body.push(self.stmt(p)?),
            }
        }
        Ok(Forward { params, ret, body })
    }

    fn stmt(&self, pair: Pair<Rule>) -> Result<Stmt> {
        let sp = self.span(&pair);
        let inner = pair.into_inner().next().expect("grammar: statement body");
        let rule = inner.as_rule();
        let mut it = children(inner).peekable();
        let kind = match rule {
            Rule::return_stmt => StmtKind::Return(self.expr(it.next().expect("grammar: return value"))?),
            Rule::aux_stmt | Rule::metric_stmt => {
                let name = self.ident(it.next().expect("grammar: name"));
                let value = self.expr(it.next().expect("grammar: value"))?;
                if rule == Rule::aux_stmt {
                    StmtKind::AuxLoss { name, value }
                } else {
                    StmtKind::Metric { name, value }
                }
            }
            _ => {
                let mut names = Vec::new();
                while it.peek().is_some_and(|p| p.as_rule() == Rule::ident) {
                    names.push(self.ident(it.next().expect("peeked")));
                }
                let value = self.expr(it.next().expect("grammar: let value"))?;
                StmtKind::Let { names, value }
            }
        };
        Ok(Stmt { kind, span: sp })
    }

    fn ty(&self, pair: Pair<Rule>) -> Result<Type> {
        let sp = self.span(&pair);
        let mut it = pair.into_inner();
        let inner = it.next().expect("grammar: type body");
        let optional = it.next().is_some();
        let kind = match inner.as_rule() {
            Rule::named_ty => TypeKind::Named(self.ident(inner.into_inner().next().expect("grammar: type name"))),
            Rule::tuple_ty => TypeKind::Tuple(inner.into_inner().map(|t| self.ty(t)).collect::<Result<_>>()?),
            _ => {
                let mut dtype = None;
                let mut dims = Vec::new();
                for p in inner.into_inner() {
                    match p.as_rule() {
                        Rule::ident => dtype = Some(self.ident(p)),
                        _ => dims = self.dims(p)?,
                    }
                }
                TypeKind::Tensor { dtype, dims }
            }
        };
        Ok(Type { kind, optional, span: sp })
    }

    /// The dims of a `shape`: `[B, T, d]`, `[..., d]`.
    fn dims(&self, shape: Pair<Rule>) -> Result<Vec<Dim>> {
        shape
            .into_inner()
            .map(|d| {
                let d = d.into_inner().next().expect("grammar: dim body");
                Ok(match d.as_rule() {
                    Rule::ellipsis => Dim::Ellipsis(self.span(&d)),
                    _ => Dim::Expr(self.expr(d)?),
                })
            })
            .collect()
    }

    /// Folds `operand (infix operand)*` by precedence with explicit stacks, so operator
    /// chains of any length use constant native stack.
    fn expr(&self, pair: Pair<Rule>) -> Result<Expr> {
        enum Pending {
            Unary(UnaryOp, usize),
            Binary(BinaryOp, Span),
        }
        fn prec(p: &Pending) -> Prec {
            match p {
                Pending::Unary(op, _) => op.prec(),
                Pending::Binary(op, _) => op.prec(),
            }
        }
        fn reduce(values: &mut Vec<Expr>, op: Pending) {
            let rhs = values.pop().expect("shunting-yard: operand");
            let expr = match op {
                Pending::Unary(op, start) => {
                    let sp = Span::new(start, rhs.span.end);
                    Expr { kind: ExprKind::Unary { op, operand: Box::new(rhs) }, span: sp }
                }
                Pending::Binary(op, _) => {
                    let lhs = values.pop().expect("shunting-yard: left operand");
                    let sp = lhs.span.to(rhs.span);
                    Expr { kind: ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span: sp }
                }
            };
            values.push(expr);
        }

        let mut values: Vec<Expr> = Vec::new();
        let mut ops: Vec<Pending> = Vec::new();
        for part in pair.into_inner() {
            if part.as_rule() == Rule::operand {
                let mut primary = None;
                for p in part.into_inner() {
                    match p.as_rule() {
                        Rule::prefix => {
                            let start = self.span(&p).start;
                            let op = match p.into_inner().next().map(|o| o.as_rule()) {
                                Some(Rule::neg) => UnaryOp::Neg,
                                _ => UnaryOp::Not,
                            };
                            ops.push(Pending::Unary(op, start));
                        }
                        Rule::primary => primary = Some(self.primary(p)?),
                        _ => {
                            let base = primary.take().expect("grammar: postfix follows a primary");
                            primary = Some(self.postfix(base, p)?);
                        }
                    }
                }
                values.push(primary.expect("grammar: operand has a primary"));
                continue;
            }
            let sp = self.span(&part);
            let op = match part.into_inner().next().map(|o| o.as_rule()) {
                Some(Rule::pow) => BinaryOp::Pow,
                Some(Rule::mul) => BinaryOp::Mul,
                Some(Rule::div) => BinaryOp::Div,
                Some(Rule::rem) => BinaryOp::Rem,
                Some(Rule::matmul) => BinaryOp::MatMul,
                Some(Rule::add) => BinaryOp::Add,
                Some(Rule::sub) => BinaryOp::Sub,
                Some(Rule::eq) => BinaryOp::Eq,
                Some(Rule::ne) => BinaryOp::Ne,
                Some(Rule::le) => BinaryOp::Le,
                Some(Rule::ge) => BinaryOp::Ge,
                Some(Rule::lt) => BinaryOp::Lt,
                Some(Rule::gt) => BinaryOp::Gt,
                Some(Rule::and_op) => BinaryOp::And,
                _ => BinaryOp::Or,
            };
            while let Some(top) = ops.last() {
                let (tp, p) = (prec(top), op.prec());
                if tp == p && op.assoc() == Assoc::None {
                    let first = match top {
                        Pending::Binary(_, s) => *s,
                        Pending::Unary(_, s) => Span::new(*s, *s + 1),
                    };
                    return Err(Diagnostic::error("comparisons cannot be chained", sp)
                        .with_label("second comparison")
                        .with_secondary(first, "first comparison")
                        .with_help("compare twice and join with `and`, as in `a < b and b < c`"));
                }
                if tp > p || (tp == p && op.assoc() == Assoc::Left) {
                    let top = ops.pop().expect("peeked");
                    reduce(&mut values, top);
                } else {
                    break;
                }
            }
            ops.push(Pending::Binary(op, sp));
        }
        while let Some(top) = ops.pop() {
            reduce(&mut values, top);
        }
        Ok(values.pop().expect("grammar: expression has an operand"))
    }

    fn postfix(&self, base: Expr, pair: Pair<Rule>) -> Result<Expr> {
        let inner = pair.into_inner().next().expect("grammar: postfix body");
        let end = self.span(&inner).end;
        let sp = Span::new(base.span.start, end);
        Ok(match inner.as_rule() {
            Rule::call_args => {
                Expr { kind: ExprKind::Call { callee: Box::new(base), args: self.call_args(inner)? }, span: sp }
            }
            _ => {
                let name = self.ident(inner.into_inner().next().expect("grammar: field name"));
                Expr { kind: ExprKind::Field { base: Box::new(base), name }, span: sp }
            }
        })
    }

    fn call_args(&self, pair: Pair<Rule>) -> Result<Vec<Arg>> {
        pair.into_inner()
            .map(|a| {
                let sp = self.span(&a);
                let mut it: Vec<Pair<Rule>> = a.into_inner().collect();
                let value = self.expr(it.pop().expect("grammar: argument value"))?;
                let name = it.pop().map(|n| self.ident(n));
                Ok(Arg { name, value, span: sp })
            })
            .collect()
    }

    fn primary(&self, pair: Pair<Rule>) -> Result<Expr> {
        let inner = pair.into_inner().next().expect("grammar: primary body");
        let sp = self.span(&inner);
        let kind = match inner.as_rule() {
            Rule::number => return self.number(inner),
            Rule::string => ExprKind::Str(self.string(inner)?),
            Rule::kw_true => ExprKind::Bool(true),
            Rule::kw_false => ExprKind::Bool(false),
            Rule::kw_none => ExprKind::None,
            Rule::ident => ExprKind::Name(self.ident(inner)),
            Rule::list => ExprKind::List(inner.into_inner().map(|e| self.expr(e)).collect::<Result<_>>()?),
            Rule::paren => {
                let mut elems = Vec::new();
                let mut trailing_comma = false;
                for p in inner.into_inner() {
                    match p.as_rule() {
                        Rule::trailing_comma => trailing_comma = true,
                        _ => elems.push(self.expr(p)?),
                    }
                }
                if elems.len() == 1 && !trailing_comma {
                    return Ok(elems.pop().expect("len checked"));
                }
                ExprKind::Tuple(elems)
            }
            Rule::if_expr => {
                let mut it = children(inner);
                let cond = self.expr(it.next().expect("grammar: if condition"))?;
                let then = self.expr(it.next().expect("grammar: if value"))?;
                let other = it.next().expect("grammar: else value");
                let otherwise = if other.as_rule() == Rule::if_expr {
                    // Rewrap so that `primary` handles the nested `if` uniformly.
                    self.if_chain(other)?
                } else {
                    self.expr(other)?
                };
                ExprKind::If { cond: Box::new(cond), then: Box::new(then), otherwise: Box::new(otherwise) }
            }
            r => unreachable!("grammar: unexpected primary rule {r:?}"),
        };
        Ok(Expr { kind, span: sp })
    }

    fn if_chain(&self, pair: Pair<Rule>) -> Result<Expr> {
        let sp = self.span(&pair);
        let mut it = children(pair);
        let cond = self.expr(it.next().expect("grammar: if condition"))?;
        let then = self.expr(it.next().expect("grammar: if value"))?;
        let other = it.next().expect("grammar: else value");
        let otherwise = if other.as_rule() == Rule::if_expr { self.if_chain(other)? } else { self.expr(other)? };
        Ok(Expr {
            kind: ExprKind::If { cond: Box::new(cond), then: Box::new(then), otherwise: Box::new(otherwise) },
            span: sp,
        })
    }

    fn number(&self, pair: Pair<Rule>) -> Result<Expr> {
        let sp = self.span(&pair);
        let text = pair.as_str();
        let kind = parse_number(text).map_err(|help| {
            Diagnostic::error(format!("malformed number `{text}`"), sp).with_label("not a number").with_help(help)
        })?;
        Ok(Expr { kind, span: sp })
    }

    fn string(&self, pair: Pair<Rule>) -> Result<String> {
        let body = pair.into_inner().next().expect("grammar: string body");
        let start = self.span(&body).start;
        let raw = body.as_str();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let (j, e) = chars.next().expect("grammar: an escape has a character");
            out.push(match e {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '0' => '\0',
                '\\' => '\\',
                '"' => '"',
                _ => {
                    let esc = Span::new(start + i, start + j + e.len_utf8());
                    return Err(Diagnostic::error(format!("unknown escape `\\{e}` in a string"), esc)
                        .with_label("unknown escape")
                        .with_help("the escapes are `\\n`, `\\t`, `\\r`, `\\0`, `\\\\` and `\\\"`"));
                }
            });
        }
        Ok(out)
    }
}

/// Validates a greedily scanned number: `42`, `50_257`, `0.02`, `3e-4`, `1.5E+3`.
/// Returns a hint on failure.
pub fn parse_number(text: &str) -> std::result::Result<ExprKind, String> {
    const HINT: &str = "numbers are written like `42`, `50_257`, `0.02` or `3e-4`";
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let digits = |s: &str| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_digit() || c == '_')
    };
    let (int_part, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    if !digits(int_part) || frac.is_some_and(|f| !digits(f)) {
        return Err(HINT.to_string());
    }
    if let Some(exp) = exponent {
        let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        if !digits(unsigned) {
            return Err("an exponent needs digits after the `e`, as in `1e-5`".to_string());
        }
    }
    let clean: String = text.chars().filter(|&c| c != '_').collect();
    if frac.is_none() && exponent.is_none() {
        return clean
            .parse::<i64>()
            .map(|value| ExprKind::Int { value, text: text.to_string() })
            .map_err(|_| format!("integers must be at most {}", i64::MAX));
    }
    match clean.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(ExprKind::Float { value, text: text.to_string() }),
        _ => Err("this number is too large for a 64-bit float".to_string()),
    }
}

// ---------------------------------------------------------------- error translation

/// Turns pest's failure into a sentence: what was expected, in words, and what was found.
fn translate(err: &pest::error::Error<Rule>, file: &SourceFile, scan: &Scan) -> Diagnostic {
    let rule_pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    // pest reports where the failing rule started; its token attempts may have got
    // further, and the furthest point is where the user's text went wrong.
    let attempts = err.parse_attempts();
    let mut token_pos = attempts.as_ref().map_or(0, |a| a.max_position);
    // Except past a reserved word: the lookahead that rejects it as a name reads on.
    if reserved_word(&file.text, token_span(&file.text, rule_pos.min(file.text.len()))).is_some() {
        token_pos = rule_pos;
    }
    let pos = rule_pos.max(token_pos).min(file.text.len());
    let text = &file.text;
    // A doc comment with nothing after it to document: where the parse stopped, or the
    // last line before that point.
    let before = text[..pos].trim_end();
    let last_line = before.rfind('\n').map_or(0, |n| n + 1);
    let dangling_doc = if text[rule_pos..].starts_with("///") {
        Some(rule_pos)
    } else {
        let line = text[last_line..before.len()].trim_start();
        (line.starts_with("///") && !line.starts_with("////")).then(|| before.len() - line.len())
    };
    if let Some(at) = dangling_doc {
        return Diagnostic::error(
            "a `///` doc comment must come right before an item or a field",
            token_span(text, at),
        )
        .with_label("nothing here for it to document")
        .with_help("use `//` for a plain comment");
    }

    let found_span = token_span(text, pos);
    let found = describe(text, found_span);
    let positives: Vec<Rule> = match &err.variant {
        // Rules expected at an earlier point than the tokens say nothing about `pos`.
        ErrorVariant::ParsingError { .. } if token_pos > rule_pos => Vec::new(),
        ErrorVariant::ParsingError { positives, .. } => positives.clone(),
        ErrorVariant::CustomError { message } => {
            return Diagnostic::error(format!("cannot parse this file: {message}"), found_span)
        }
    };
    let mut tokens: Vec<String> = attempts
        .map(|a| {
            a.expected_tokens()
                .into_iter()
                .map(|t| t.to_string())
                // `ParsingToken` is not exported; its text tells literals from ranges.
                .filter(|t| t != "BUILTIN_RULE" && !(t.chars().count() == 4 && t.get(1..3) == Some("..")))
                .collect()
        })
        .unwrap_or_default();
    tokens.sort();
    tokens.dedup();
    let has = |t: &str| tokens.iter().any(|x| x == t);
    let has_rule = |r: Rule| positives.contains(&r);

    // Whole-construct expectations read better than their first tokens.
    if has("recipe") && has("block") {
        return Diagnostic::error(format!("expected an item, found {found}"), found_span)
            .with_label("not an item")
            .with_help("a file holds `use`, `const`, `enum`, `block`, `model` and `recipe` items");
    }
    if has("forward") {
        let mut d = Diagnostic::error(format!("expected a block member or `}}`, found {found}"), found_span)
            .with_label("not a member")
            .with_help("members are parameters `w: [d, d] = normal(0.02)`, sub-blocks `x = Block(..)`, `x = buffer ..`, `const`, `if` and `forward(..) { .. }`");
        if let Some(k) = reserved_word(text, found_span) {
            d = d.with_help(format!("`{k}` is a reserved word and cannot name a member"));
        }
        return d;
    }
    if has("return") && has("aux_loss") {
        return Diagnostic::error(format!("expected a statement or `}}`, found {found}"), found_span)
            .with_label("not a statement")
            .with_help(
                "statements are `x = ..`, `a, b = ..`, `return ..`, `aux_loss name = ..` and `metric name = ..`",
            );
    }

    let mut expected: Vec<String> = Vec::new();
    let starts_expr = has("-") && (has("[") || has("\"")) || has_rule(Rule::primary) || has_rule(Rule::expr);
    let continues_expr = has("*") || has("+") || has("==");
    if starts_expr {
        expected.push("an expression".to_string());
    } else if has_rule(Rule::ident) || has_rule(Rule::word) || has_rule(Rule::named_ty) {
        expected.push("a name".to_string());
    }
    if has_rule(Rule::ty) || has_rule(Rule::tensor_ty) {
        expected.push("a type such as `int` or `[B, T, d]`".to_string());
    }
    const EXPR_TOKENS: &[&str] = &[
        "**", "*", "/", "%", "@", "+", "-", "==", "!=", "<=", ">=", "<", ">", "and", "or", "not", "(", "[", "\"", ".",
        "if", "true", "false", "none", "///", "...",
    ];
    let mut closers = Vec::new();
    for t in &tokens {
        // Whitespace, comments and `:` after a name in a call are always possible; naming
        // them only hides the useful alternatives.
        let named_arg_colon = t == ":" && continues_expr;
        if EXPR_TOKENS.contains(&t.as_str())
            || t.trim().is_empty()
            || t.starts_with("//")
            || named_arg_colon
            || t == "_"
        {
            continue;
        }
        if [")", "]", "}"].contains(&t.as_str()) {
            closers.push(t.clone());
        }
        expected.push(format!("`{t}`"));
    }
    if has_rule(Rule::EOI) {
        expected.push("end of file".to_string());
    }
    if continues_expr {
        expected.push("an operator".to_string());
    }
    if expected.is_empty() {
        return Diagnostic::error(format!("unexpected {found}"), found_span).with_label("unexpected here");
    }

    let mut diag;
    // Name the bracket that an expected closer would close.
    let open = closers.iter().find_map(|c| {
        let kind = match c.as_str() {
            ")" => b'(',
            "]" => b'[',
            _ => b'{',
        };
        scan.brackets
            .iter()
            .filter(|b| b.kind == kind && b.open < pos && pos <= b.close)
            .max_by_key(|b| b.open)
            .map(|b| (c.clone(), *b))
    });
    if let Some((closer, pair)) = open {
        let others: Vec<&String> = expected.iter().filter(|e| **e != format!("`{closer}`")).collect();
        diag = Diagnostic::error(
            format!(
                "expected `{closer}` to close the `{}` opened at {}, found {found}",
                pair.kind as char,
                file.position(pair.open)
            ),
            found_span,
        )
        .with_label(format!("expected `{closer}` here"))
        .with_secondary(Span::new(pair.open, pair.open + 1), "opened here");
        if !others.is_empty() {
            diag = diag.with_help(format!("or continue with {}", join_or(&others)));
        }
    } else {
        let refs: Vec<&String> = expected.iter().collect();
        diag = Diagnostic::error(format!("expected {}, found {found}", join_or(&refs)), found_span)
            .with_label(format!("expected {}", join_or(&refs)));
    }
    if let Some(k) = reserved_word(text, found_span) {
        if expected.iter().any(|e| e == "a name") {
            diag = diag.with_help(format!("`{k}` is a reserved word; choose another name"));
        }
    }
    diag
}

fn join_or(items: &[&String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(|s| s.as_str()).collect();
            format!("{} or {last}", init.join(", "))
        }
    }
}

const RESERVED: &[&str] = &[
    "use", "const", "enum", "block", "model", "recipe", "forward", "return", "if", "else", "true", "false", "none",
    "and", "or", "not", "then", "from",
];

fn reserved_word(text: &str, span: Span) -> Option<&str> {
    let word = &text[span.start..span.end];
    RESERVED.contains(&word).then_some(word)
}

/// The extent of the token at `pos`: a word, a number, a string's first line, one or two
/// punctuation characters, or nothing at end of file.
fn token_span(text: &str, pos: usize) -> Span {
    let rest = &text[pos..];
    let Some(c) = rest.chars().next() else {
        return Span::new(pos, pos);
    };
    let len = if c.is_alphanumeric() || c == '_' {
        rest.find(|ch: char| !(ch.is_alphanumeric() || ch == '_')).unwrap_or(rest.len())
    } else if c == '"' {
        rest[1..].find(['"', '\n']).map_or(rest.len(), |n| n + 2).min(rest.find('\n').unwrap_or(rest.len()))
    } else if rest.starts_with("//") {
        rest.find('\n').unwrap_or(rest.len())
    } else if ["**", "==", "!=", "<=", ">=", "->"].iter().any(|op| rest.starts_with(op)) {
        2
    } else {
        c.len_utf8()
    };
    Span::new(pos, pos + len)
}

fn describe(text: &str, span: Span) -> String {
    if span.start >= text.len() {
        return "end of file".to_string();
    }
    let tok = &text[span.start..span.end];
    match tok.chars().next() {
        Some('"') => "a string".to_string(),
        Some(c) if c.is_control() => format!("the character U+{:04X}", c as u32),
        _ => format!("`{tok}`"),
    }
}
