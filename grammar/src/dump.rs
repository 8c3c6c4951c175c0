//! AST → a deterministic, readable tree (`modelc emit --stage ast`): one line per item,
//! member, parameter, statement and entry, expressions as fully parenthesised
//! S-expressions so that grouping is explicit. With a source file, each line ends in the
//! node's `@line:col`; without, the text depends on the tree alone, which is how tests
//! compare trees "spans aside".

use crate::ast::*;
use crate::diagnostic::SourceFile;
use crate::format::quote;
use std::fmt::Write;

pub fn dump(file: &File, source: Option<&SourceFile>) -> String {
    let mut d = Dumper { out: String::new(), source };
    d.line(0, "file", file.span);
    for item in &file.items {
        d.item(item);
    }
    d.out
}

struct Dumper<'a> {
    out: String,
    source: Option<&'a SourceFile>,
}

impl Dumper<'_> {
    fn line(&mut self, depth: usize, text: &str, span: Span) {
        self.out.push_str(&"  ".repeat(depth));
        self.out.push_str(text);
        if let Some(src) = self.source {
            let _ = write!(self.out, "  @{}", src.position(span.start));
        }
        self.out.push('\n');
    }

    fn docs(&mut self, depth: usize, docs: &Docs) {
        for d in docs {
            self.out.push_str(&"  ".repeat(depth));
            let _ = writeln!(self.out, "doc {}", quote(d));
        }
    }

    fn item(&mut self, item: &Item) {
        self.docs(1, &item.docs);
        match &item.kind {
            ItemKind::Use(Use::File { path, .. }) => self.line(1, &format!("use {}", quote(path)), item.span),
            ItemKind::Use(Use::Module { path, names }) => {
                let path: Vec<&str> = path.iter().map(|i| i.name.as_str()).collect();
                let names: Vec<&str> = names.iter().map(|i| i.name.as_str()).collect();
                self.line(1, &format!("use {} {{{}}}", path.join("."), names.join(", ")), item.span)
            }
            ItemKind::Const(c) => self.line(1, &konst(c), item.span),
            ItemKind::Enum(e) => {
                self.line(1, &format!("enum {}", e.name.name), item.span);
                for v in &e.variants {
                    self.docs(2, &v.docs);
                    self.line(2, &format!("variant {}", v.name.name), v.name.span);
                }
            }
            ItemKind::Block(b) => {
                let kw = match b.kind {
                    BlockKind::Block => "block",
                    BlockKind::Model => "model",
                };
                self.line(1, &format!("{kw} {}", b.name.name), item.span);
                for p in &b.params {
                    self.param(2, "param", p);
                }
                for m in &b.members {
                    self.member(2, m);
                }
            }
            ItemKind::Recipe(r) => {
                self.line(1, &format!("recipe {}", r.name.name), item.span);
                for e in &r.entries {
                    self.docs(2, &e.docs);
                    self.line(2, &format!("entry {} = {}", e.key.name, sexpr(&e.value)), e.span);
                }
            }
        }
    }

    fn param(&mut self, depth: usize, what: &str, p: &Param) {
        self.docs(depth, &p.docs);
        let default = p.default.as_ref().map(|d| format!(" = {}", sexpr(d))).unwrap_or_default();
        self.line(depth, &format!("{what} {}: {}{default}", p.name.name, ty(&p.ty)), p.span);
    }

    fn member(&mut self, depth: usize, m: &Member) {
        self.docs(depth, &m.docs);
        match &m.kind {
            MemberKind::Param { name, ty: t, init, stored } => {
                let init = init.as_ref().map(|i| format!(" = {}", sexpr(i))).unwrap_or_default();
                let stored = stored.as_ref().map(|t| format!(" stored {}", ty(t))).unwrap_or_default();
                self.line(depth, &format!("weight {}: {}{init}{stored}", name.name, ty(t)), m.span)
            }
            MemberKind::Unused(globs) => {
                let globs: Vec<String> = globs.iter().map(|(g, _)| quote(g)).collect();
                self.line(depth, &format!("unused {}", globs.join(" ")), m.span)
            }
            MemberKind::Buffer { name, value } => {
                self.line(depth, &format!("buffer {} = {}", name.name, sexpr(value)), m.span)
            }
            MemberKind::Sub { name, copies, block, args } => {
                let copies = match copies {
                    Some(Copies { kind: CopiesKind::Repeat, count }) => format!("repeat {} ", sexpr(count)),
                    Some(Copies { kind: CopiesKind::Stack, count }) => format!("stack {} ", sexpr(count)),
                    None => String::new(),
                };
                let args: Vec<String> = args.iter().map(arg).collect();
                self.line(depth, &format!("sub {} = {copies}({} {})", name.name, block.name, args.join(" ")), m.span)
            }
            MemberKind::Const(c) => self.line(depth, &konst(c), m.span),
            MemberKind::If { cond, then, otherwise } => {
                self.line(depth, &format!("if {}", sexpr(cond)), m.span);
                for t in then {
                    self.member(depth + 1, t);
                }
                match otherwise {
                    None => {}
                    Some(Else::If(inner)) => {
                        self.out.push_str(&"  ".repeat(depth));
                        self.out.push_str("else\n");
                        self.member(depth + 1, inner);
                    }
                    Some(Else::Body(body)) => {
                        self.out.push_str(&"  ".repeat(depth));
                        self.out.push_str("else\n");
                        for b in body {
                            self.member(depth + 1, b);
                        }
                    }
                }
            }
            MemberKind::Forward(f) => {
                let ret = f.ret.as_ref().map(|t| format!(" -> {}", ty(t))).unwrap_or_default();
                self.line(depth, &format!("forward{ret}"), m.span);
                for p in &f.params {
                    self.param(depth + 1, "arg", p);
                }
                for s in &f.body {
                    let text = match &s.kind {
                        StmtKind::Let { names, value } => {
                            let names: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
                            format!("let {} = {}", names.join(", "), sexpr(value))
                        }
                        StmtKind::Return(v) => format!("return {}", sexpr(v)),
                        StmtKind::AuxLoss { name, value } => format!("aux_loss {} = {}", name.name, sexpr(value)),
                        StmtKind::Metric { name, value } => format!("metric {} = {}", name.name, sexpr(value)),
                    };
                    self.line(depth + 1, &text, s.span);
                }
            }
        }
    }
}

fn konst(c: &Const) -> String {
    let t = c.ty.as_ref().map(|t| format!(": {}", ty(t))).unwrap_or_default();
    format!("const {}{t} = {}", c.name.name, sexpr(&c.value))
}

fn ty(t: &Type) -> String {
    t.render(&sexpr)
}

fn arg(a: &Arg) -> String {
    match &a.name {
        Some(n) => format!("{}:{}", n.name, sexpr(&a.value)),
        None => sexpr(&a.value),
    }
}

/// An expression as a fully parenthesised S-expression.
pub fn sexpr(e: &Expr) -> String {
    let list = |head: &str, items: &[Expr]| {
        let items: Vec<String> = items.iter().map(sexpr).collect();
        if items.is_empty() {
            format!("({head})")
        } else {
            format!("({head} {})", items.join(" "))
        }
    };
    match &e.kind {
        ExprKind::Int { text, .. } | ExprKind::Float { text, .. } => text.clone(),
        ExprKind::Str(s) => quote(s),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::None => "none".to_string(),
        ExprKind::Name(n) => n.name.clone(),
        ExprKind::Field { base, name } => format!("(. {} {})", sexpr(base), name.name),
        ExprKind::Call { callee, args } => {
            let args: Vec<String> = args.iter().map(arg).collect();
            if args.is_empty() {
                format!("(call {})", sexpr(callee))
            } else {
                format!("(call {} {})", sexpr(callee), args.join(" "))
            }
        }
        ExprKind::Unary { op, operand } => {
            let op = match op {
                UnaryOp::Neg => "neg",
                UnaryOp::Not => "not",
            };
            format!("({op} {})", sexpr(operand))
        }
        ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", op.symbol(), sexpr(lhs), sexpr(rhs)),
        ExprKind::Tuple(items) => list("tuple", items),
        ExprKind::List(items) => list("list", items),
        ExprKind::If { cond, then, otherwise } => {
            format!("(if {} {} {})", sexpr(cond), sexpr(then), sexpr(otherwise))
        }
    }
}
