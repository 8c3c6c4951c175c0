//! AST + comments → canonical source text (`modelc fmt`).
//!
//! The layout is a function of the tree alone (plus where the source had blank lines and
//! comments), so formatting is idempotent. Invariants, each checked by tests:
//! - `parse(format(x))` equals `parse(x)` apart from spans;
//! - every `//` comment of the input appears in the output, in the same order;
//! - what would pass `WIDTH` columns is broken: argument lists, lists, tuples and
//!   parameter lists one element per line, operator chains before an operator, `if`
//!   expressions at their braces. Only a single long token (a string) or a `use`
//!   group can still make a longer line.
//!
//! Comments are placed by position with a cursor over the scanner's list: the ones before
//! a line-level node (item, member, statement, entry, element of a broken list) go on
//! their own lines above it, one after it on the same source line stays at its end, and
//! one inside a node that no inner line claims moves above that node.

use crate::ast::*;
use crate::diagnostic::SourceFile;
use crate::parser::Parsed;
use crate::scan::{BracketPair, Comment};
use std::collections::HashMap;

/// The line width that lists and argument lists are broken to fit.
pub const WIDTH: usize = 100;
const INDENT: usize = 2;

pub fn format(parsed: &Parsed, file: &SourceFile) -> String {
    let mut f = Formatter {
        src: &file.text,
        comments: &parsed.scan.comments,
        brackets: &parsed.scan.brackets,
        next: 0,
        widths: HashMap::new(),
    };
    let mut out = String::new();
    let mut prev_kind: Option<&ItemKind> = None;
    for (i, item) in parsed.ast.items.iter().enumerate() {
        // Items are separated by a blank line, except runs of `use` or of `const`, which
        // keep the source's choice.
        let force_blank = i > 0
            && !matches!(
                (prev_kind, &item.kind),
                (Some(ItemKind::Use(_)), ItemKind::Use(_)) | (Some(ItemKind::Const(_)), ItemKind::Const(_))
            );
        let text = f.slot(0, item.span, i == 0, force_blank, |f| f.item(item));
        out.push_str(&text);
        prev_kind = Some(&item.kind);
    }
    let rest = f.rest_comments(0, out.is_empty(), usize::MAX);
    out.push_str(&rest);
    out
}

struct Formatter<'a> {
    src: &'a str,
    comments: &'a [Comment],
    brackets: &'a [BracketPair],
    next: usize,
    widths: HashMap<*const Expr, usize>,
}

fn pad(indent: usize) -> String {
    " ".repeat(indent * INDENT)
}

impl<'a> Formatter<'a> {
    // ------------------------------------------------------------ comments and slots

    /// Whether the source has a blank line right before `pos`.
    fn blank_before(&self, pos: usize) -> bool {
        let before = &self.src[..pos.min(self.src.len())];
        let ws = before.len() - before.trim_end_matches([' ', '\t', '\r', '\n']).len();
        before[before.len() - ws..].matches('\n').count() >= 2
    }

    fn has_comment_in(&self, span: Span) -> bool {
        self.comments[self.next..].iter().take_while(|c| c.span.start < span.end).any(|c| c.span.start >= span.start)
    }

    /// Takes the comments that start before `pos`, as own-line text at `indent`,
    /// each line ending in a newline. `first` suppresses a blank line before the first.
    fn comments_before(&mut self, pos: usize, indent: usize, mut first: bool) -> String {
        let mut out = String::new();
        while let Some(c) = self.comments.get(self.next).filter(|c| c.span.start < pos) {
            if !first && self.blank_before(c.span.start) {
                out.push('\n');
            }
            out.push_str(&pad(indent));
            out.push_str(&c.text);
            out.push('\n');
            self.next += 1;
            first = false;
        }
        out
    }

    /// The comment right after `end` on the same source line, if any.
    fn trailing_comment(&mut self, end: usize) -> Option<String> {
        let c = self.comments.get(self.next)?;
        let between = self.src.get(end..c.span.start)?;
        if c.span.start >= end && !between.contains('\n') {
            self.next += 1;
            return Some(c.text.clone());
        }
        None
    }

    /// One line-level node: its leading comments, a blank line if the source had one
    /// (or `force_blank`), the node's text from `render`, comments inside it that nothing
    /// placed, and a trailing comment. Returns text ending in a newline.
    fn slot(
        &mut self,
        indent: usize,
        span: Span,
        first: bool,
        force_blank: bool,
        render: impl FnOnce(&mut Self) -> String,
    ) -> String {
        let mut out = String::new();
        let lead_start = self.comments.get(self.next).filter(|c| c.span.start < span.start).map(|c| c.span.start);
        if !first && (force_blank || self.blank_before(lead_start.unwrap_or(span.start))) {
            out.push('\n');
        }
        out.push_str(&self.comments_before(span.start, indent, true));
        if lead_start.is_some() && self.blank_before(span.start) {
            out.push('\n');
        }
        let body = render(self);
        // Comments inside the node that no inner line claimed move above it.
        out.push_str(&self.comments_before(span.end, indent, true));
        out.push_str(&pad(indent));
        out.push_str(&body);
        if let Some(c) = self.trailing_comment(span.end) {
            out.push(' ');
            out.push_str(&c);
        }
        out.push('\n');
        out
    }

    /// Comments left before `end` (the closing brace of a container), at `indent`.
    fn rest_comments(&mut self, indent: usize, first: bool, end: usize) -> String {
        self.comments_before(end, indent, first)
    }

    fn docs(&self, docs: &Docs, indent: usize) -> String {
        let mut out = String::new();
        for d in docs {
            if d.is_empty() {
                out.push_str("///\n");
            } else {
                out.push_str("/// ");
                out.push_str(d);
                out.push('\n');
            }
            out.push_str(&pad(indent));
        }
        out
    }

    // ------------------------------------------------------------ items

    fn item(&mut self, item: &Item) -> String {
        let mut out = self.docs(&item.docs, 0);
        let body = match &item.kind {
            ItemKind::Use(u) => self.use_item(u),
            ItemKind::Const(c) => self.const_decl(c, 0, 0),
            ItemKind::Enum(e) => self.enum_item(e, item.span),
            ItemKind::Block(b) => self.block_item(b, item.span),
            ItemKind::Recipe(r) => self.recipe(r, item.span),
        };
        out.push_str(&body);
        out
    }

    fn use_item(&mut self, u: &Use) -> String {
        match u {
            Use::File { path, .. } => format!("use {}", quote(path)),
            Use::Module { path, names } => {
                let path: Vec<&str> = path.iter().map(|i| i.name.as_str()).collect();
                let names: Vec<&str> = names.iter().map(|i| i.name.as_str()).collect();
                match names.as_slice() {
                    [one] => format!("use {}.{one}", path.join(".")),
                    _ => format!("use {}.{{{}}}", path.join("."), names.join(", ")),
                }
            }
        }
    }

    fn const_decl(&mut self, c: &Const, indent: usize, col: usize) -> String {
        let mut head = format!("const {}", c.name.name);
        if let Some(ty) = &c.ty {
            head.push_str(": ");
            head.push_str(&self.ty(ty));
        }
        head.push_str(" = ");
        let value = self.expr(&c.value, indent, col + head.len());
        head + &value
    }

    fn enum_item(&mut self, e: &EnumDef, span: Span) -> String {
        let head = format!("enum {} {{", e.name.name);
        let flat: Vec<&str> = e.variants.iter().map(|v| v.name.name.as_str()).collect();
        let flat = format!("{head} {} }}", flat.join(", "));
        let documented = e.variants.iter().any(|v| !v.docs.is_empty());
        if e.variants.is_empty() && !self.has_comment_in(span) {
            return format!("enum {} {{}}", e.name.name);
        }
        if !documented && !self.has_comment_in(span) && flat.len() <= WIDTH {
            return flat;
        }
        let mut out = head + "\n";
        for (i, v) in e.variants.iter().enumerate() {
            let vspan = v.name.span;
            out.push_str(&self.slot(1, vspan, i == 0, false, |f| format!("{}{},", f.docs(&v.docs, 1), v.name.name)));
        }
        out.push_str(&self.rest_comments(1, e.variants.is_empty(), span.end));
        out + "}"
    }

    fn block_item(&mut self, b: &BlockDef, span: Span) -> String {
        let keyword = match b.kind {
            BlockKind::Block => "block",
            BlockKind::Model => "model",
        };
        let mut out = format!("{keyword} {}", b.name.name);
        if !b.params.is_empty() {
            let col = out.len();
            out.push_str(&self.params(&b.params, 0, col, 2));
        }
        out.push_str(" {");
        out.push_str(&self.members(&b.members, 1, span.end));
        out.push('}');
        out
    }

    /// `(a: int, b: int = 2)`, broken one per line when too long, documented or commented.
    /// `tail` is the width of what follows on the line (` {` or ` -> ...`).
    fn params(&mut self, params: &[Param], indent: usize, col: usize, tail: usize) -> String {
        let flat: Vec<String> = params.iter().map(|p| self.param_flat(p)).collect();
        let flat = format!("({})", flat.join(", "));
        let span = Span::new(params.first().map_or(0, |p| p.span.start), params.last().map_or(0, |p| p.span.end));
        let documented = params.iter().any(|p| !p.docs.is_empty());
        if !documented && !self.has_comment_in(span) && col + flat.len() + tail <= WIDTH {
            return flat;
        }
        let mut out = String::from("(\n");
        for (i, p) in params.iter().enumerate() {
            out.push_str(&self.slot(indent + 1, p.span, i == 0, false, |f| {
                let mut s = f.docs(&p.docs, indent + 1);
                s.push_str(&f.param_broken(p, indent + 1));
                s.push(',');
                s
            }));
        }
        out + &pad(indent) + ")"
    }

    fn param_flat(&self, p: &Param) -> String {
        let mut s = format!("{}: {}", p.name.name, self.ty(&p.ty));
        if let Some(d) = &p.default {
            s.push_str(" = ");
            s.push_str(&flat(d));
        }
        s
    }

    fn param_broken(&mut self, p: &Param, indent: usize) -> String {
        let mut s = format!("{}: {}", p.name.name, self.ty(&p.ty));
        if let Some(d) = &p.default {
            s.push_str(" = ");
            let col = indent * INDENT + s.len();
            s.push_str(&self.expr(d, indent, col));
        }
        s
    }

    // ------------------------------------------------------------ members

    /// A `{ ... }` body of members at `indent`; returns text from after `{` through the
    /// indentation before `}`.
    fn members(&mut self, members: &[Member], indent: usize, end: usize) -> String {
        if members.is_empty() && !self.has_comment_in(Span::new(0, end)) {
            return String::new();
        }
        let widths = align_widths(members, aligned_name, |m| m.span, self);
        let mut out = String::from("\n");
        for (i, m) in members.iter().enumerate() {
            let width = widths[i];
            out.push_str(&self.slot(indent, m.span, i == 0, false, |f| {
                let mut s = f.docs(&m.docs, indent);
                s.push_str(&f.member(m, indent, width));
                s
            }));
        }
        out.push_str(&self.rest_comments(indent, members.is_empty(), end));
        out + &pad(indent - 1)
    }

    fn member(&mut self, m: &Member, indent: usize, width: usize) -> String {
        let col = indent * INDENT;
        match &m.kind {
            MemberKind::Param { name, ty, init, stored } => {
                let mut s = format!("{}: {}", name.name, self.ty(ty));
                if let Some(init) = init {
                    s.push_str(" = ");
                    let c = col + s.len();
                    s.push_str(&self.expr(init, indent, c));
                }
                if let Some(stored) = stored {
                    s.push_str(&format!(" stored {}", self.ty(stored)));
                }
                s
            }
            MemberKind::Unused(globs) => {
                let globs: Vec<String> = globs.iter().map(|(g, _)| quote(g)).collect();
                format!("unused {}", globs.join(", "))
            }
            MemberKind::Buffer { name, value } => {
                let head = format!("{:width$} = buffer ", name.name);
                let c = col + head.len();
                head + &self.expr(value, indent, c)
            }
            MemberKind::Sub { name, copies, block, args } => {
                let mut head = format!("{:width$} = ", name.name);
                if let Some(copies) = copies {
                    let kw = match copies.kind {
                        CopiesKind::Repeat => "repeat",
                        CopiesKind::Stack => "stack",
                    };
                    head.push_str(&format!("{kw}({}) ", flat(&copies.count)));
                }
                head.push_str(&block.name);
                let c = col + head.len();
                let span = Span::new(block.span.start, m.span.end);
                head + &self.args(args, span, indent, c)
            }
            MemberKind::Const(c) => self.const_decl(c, indent, col),
            MemberKind::If { cond, then, otherwise } => self.if_member(cond, then, otherwise.as_ref(), m.span, indent),
            MemberKind::Forward(fwd) => self.forward(fwd, m.span, indent),
        }
    }

    fn if_member(
        &mut self,
        cond: &Expr,
        then: &[Member],
        otherwise: Option<&Else>,
        span: Span,
        indent: usize,
    ) -> String {
        let mut out = format!("if {} {{", self.expr(cond, indent, indent * INDENT + 3));
        // The `}` closing the `then` body: the brace pair opened right after the condition.
        let then_end =
            self.brackets.iter().find(|b| b.kind == b'{' && b.open >= cond.span.end).map_or(span.end, |b| b.close);
        out.push_str(&self.members(then, indent + 1, then_end));
        out.push('}');
        match otherwise {
            None => {}
            Some(Else::If(m)) => {
                if let MemberKind::If { cond, then, otherwise } = &m.kind {
                    out.push_str(" else ");
                    out.push_str(&self.if_member(cond, then, otherwise.as_ref(), m.span, indent));
                }
            }
            Some(Else::Body(body)) => {
                out.push_str(" else {");
                out.push_str(&self.members(body, indent + 1, span.end));
                out.push('}');
            }
        }
        out
    }

    fn forward(&mut self, fwd: &Forward, span: Span, indent: usize) -> String {
        let ret = fwd.ret.as_ref().map(|t| format!(" -> {}", self.ty(t))).unwrap_or_default();
        let mut out = String::from("forward");
        let col = indent * INDENT + out.len();
        out.push_str(&self.params(&fwd.params, indent, col, ret.len() + 2));
        out.push_str(&ret);
        out.push_str(" {");
        if fwd.body.is_empty() && !self.has_comment_in(span) {
            return out + "}";
        }
        out.push('\n');
        for (i, s) in fwd.body.iter().enumerate() {
            out.push_str(&self.slot(indent + 1, s.span, i == 0, false, |f| f.stmt(s, indent + 1)));
        }
        out.push_str(&self.rest_comments(indent + 1, fwd.body.is_empty(), span.end));
        out + &pad(indent) + "}"
    }

    fn stmt(&mut self, s: &Stmt, indent: usize) -> String {
        let head = match &s.kind {
            StmtKind::Let { names, .. } => {
                let names: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
                format!("{} = ", names.join(", "))
            }
            StmtKind::Return(_) => "return ".to_string(),
            StmtKind::AuxLoss { name, .. } => format!("aux_loss {} = ", name.name),
            StmtKind::Metric { name, .. } => format!("metric {} = ", name.name),
        };
        let value = match &s.kind {
            StmtKind::Let { value, .. }
            | StmtKind::Return(value)
            | StmtKind::AuxLoss { value, .. }
            | StmtKind::Metric { value, .. } => value,
        };
        let col = indent * INDENT + head.len();
        head.clone() + &self.expr(value, indent, col)
    }

    fn recipe(&mut self, r: &Recipe, span: Span) -> String {
        let mut out = format!("recipe {} {{", r.name.name);
        if r.entries.is_empty() && !self.has_comment_in(span) {
            return out + "}";
        }
        out.push('\n');
        let widths = align_widths(&r.entries, |e| Some(e.key.name.len()), |e| e.span, self);
        for (i, e) in r.entries.iter().enumerate() {
            let width = widths[i];
            out.push_str(&self.slot(1, e.span, i == 0, false, |f| {
                let mut s = f.docs(&e.docs, 1);
                let head = format!("{:width$} = ", e.key.name);
                let col = INDENT + head.len();
                s.push_str(&head);
                s.push_str(&f.expr(&e.value, 1, col));
                s
            }));
        }
        out.push_str(&self.rest_comments(1, r.entries.is_empty(), span.end));
        out + "}"
    }

    // ------------------------------------------------------------ types and expressions

    fn ty(&self, t: &Type) -> String {
        t.render(&flat)
    }

    /// An expression starting at column `col`: flat if it fits and holds no comment,
    /// otherwise with its outermost lists broken one element per line.
    fn expr(&mut self, e: &Expr, indent: usize, col: usize) -> String {
        let mut out = Out { text: String::new(), col };
        self.write_expr(e, indent, &mut out);
        out.text
    }

    /// Whether `e` can be written flat from `col`. A comment inside forces a break only
    /// where breaking gives it a line of its own (the elements of a call, list or tuple);
    /// elsewhere it moves above the statement whatever the layout, so it must not sway
    /// the layout, or the second formatting would undo the first.
    fn fits(&mut self, e: &Expr, col: usize) -> bool {
        let has_slots = matches!(e.kind, ExprKind::Call { .. } | ExprKind::List(_) | ExprKind::Tuple(_));
        col + self.width(e) <= WIDTH && !(has_slots && self.has_comment_in(e.span))
    }

    fn write_expr(&mut self, e: &Expr, indent: usize, out: &mut Out) {
        if self.fits(e, out.col) {
            out.push(&flat(e));
            return;
        }
        match &e.kind {
            ExprKind::Call { callee, args } => {
                self.write_operand(callee, Prec::Postfix, indent, out);
                let span = Span::new(callee.span.end, e.span.end);
                let col = out.col;
                out.push(&self.args(args, span, indent, col));
            }
            ExprKind::List(items) => out.push(&self.seq("[", "]", items, e.span, indent)),
            ExprKind::Tuple(items) => out.push(&self.seq("(", ")", items, e.span, indent)),
            ExprKind::Binary { op, lhs, rhs } => {
                if needs_parens_left(lhs, *op) {
                    out.push("(");
                    self.write_expr(lhs, indent, out);
                    out.push(")");
                } else {
                    self.write_expr(lhs, indent, out);
                }
                // Too long for one line: the operator starts a continuation line, so a
                // chain gets as many operands per line as fit.
                out.push(&format!("\n{}{} ", pad(indent + 1), op.symbol()));
                if needs_parens_right(rhs, *op) {
                    out.push("(");
                    self.write_expr(rhs, indent, out);
                    out.push(")");
                } else {
                    self.write_expr(rhs, indent, out);
                }
            }
            ExprKind::Unary { op, operand } => {
                out.push(unary_symbol(*op));
                self.write_operand(operand, op.prec(), indent, out);
            }
            ExprKind::Field { base, name } => {
                self.write_operand(base, Prec::Postfix, indent, out);
                out.push(".");
                out.push(&name.name);
            }
            ExprKind::If { .. } => self.write_if_broken(e, indent, out),
            _ => out.push(&flat(e)),
        }
    }

    /// An `if` too long for one line: every branch of the `else if` chain on its own lines.
    fn write_if_broken(&mut self, e: &Expr, indent: usize, out: &mut Out) {
        let ExprKind::If { cond, then, otherwise } = &e.kind else {
            return self.write_expr(e, indent, out);
        };
        let inner = pad(indent + 1);
        out.push("if ");
        self.write_expr(cond, indent, out);
        out.push(&format!(" {{\n{inner}"));
        self.write_expr(then, indent + 1, out);
        out.push(&format!("\n{}}} else ", pad(indent)));
        if matches!(otherwise.kind, ExprKind::If { .. }) {
            self.write_if_broken(otherwise, indent, out);
        } else {
            out.push(&format!("{{\n{inner}"));
            self.write_expr(otherwise, indent + 1, out);
            out.push(&format!("\n{}}}", pad(indent)));
        }
    }

    /// An operand that must bind at least as tightly as `prec`, parenthesised if not.
    fn write_operand(&mut self, e: &Expr, prec: Prec, indent: usize, out: &mut Out) {
        if e.prec() < prec {
            out.push("(");
            self.write_expr(e, indent, out);
            out.push(")");
        } else {
            self.write_expr(e, indent, out);
        }
    }

    /// The width of `flat(e)` in characters, memoised so that breaking a long operator
    /// chain level by level stays linear.
    fn width(&mut self, e: &Expr) -> usize {
        let key = e as *const Expr;
        if let Some(&w) = self.widths.get(&key) {
            return w;
        }
        let w = match &e.kind {
            ExprKind::Int { text, .. } | ExprKind::Float { text, .. } => text.chars().count(),
            ExprKind::Str(s) => quote(s).chars().count(),
            ExprKind::Bool(b) => b.to_string().len(),
            ExprKind::None => 4,
            ExprKind::Name(n) => n.name.chars().count(),
            ExprKind::Field { base, name } => self.operand_width(base, Prec::Postfix) + 1 + name.name.chars().count(),
            ExprKind::Call { callee, args } => {
                let mut w = self.operand_width(callee, Prec::Postfix) + 2 + 2 * args.len().saturating_sub(1);
                for a in args {
                    w += a.name.as_ref().map_or(0, |n| n.name.chars().count() + 2) + self.width(&a.value);
                }
                w
            }
            ExprKind::Unary { op, operand } => unary_symbol(*op).len() + self.operand_width(operand, op.prec()),
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.width(lhs) + if needs_parens_left(lhs, *op) { 2 } else { 0 };
                let r = self.width(rhs) + if needs_parens_right(rhs, *op) { 2 } else { 0 };
                l + op.symbol().len() + 2 + r
            }
            ExprKind::Tuple(items) if items.len() == 1 => self.width(&items[0]) + 3,
            ExprKind::Tuple(items) | ExprKind::List(items) => {
                2 + 2 * items.len().saturating_sub(1) + items.iter().map(|i| self.width(i)).sum::<usize>()
            }
            ExprKind::If { cond, then, otherwise } => {
                let other = if matches!(otherwise.kind, ExprKind::If { .. }) { 0 } else { 4 };
                "if  {  } else ".len() + self.width(cond) + self.width(then) + self.width(otherwise) + other
            }
        };
        self.widths.insert(key, w);
        w
    }

    fn operand_width(&mut self, e: &Expr, prec: Prec) -> usize {
        self.width(e) + if e.prec() < prec { 2 } else { 0 }
    }

    fn args(&mut self, args: &[Arg], span: Span, indent: usize, col: usize) -> String {
        let width = 2
            + 2 * args.len().saturating_sub(1)
            + args
                .iter()
                .map(|a| a.name.as_ref().map_or(0, |n| n.name.chars().count() + 2) + self.width(&a.value))
                .sum::<usize>();
        if col + width <= WIDTH && !self.has_comment_in(span) {
            let flat_args: Vec<String> = args.iter().map(flat_arg).collect();
            return format!("({})", flat_args.join(", "));
        }
        let mut out = String::from("(\n");
        for (i, a) in args.iter().enumerate() {
            out.push_str(&self.slot(indent + 1, a.span, i == 0, false, |f| {
                let head = a.name.as_ref().map(|n| format!("{}: ", n.name)).unwrap_or_default();
                let c = (indent + 1) * INDENT + head.len();
                head.clone() + &f.expr(&a.value, indent + 1, c) + ","
            }));
        }
        out.push_str(&self.rest_comments(indent + 1, args.is_empty(), span.end));
        out + &pad(indent) + ")"
    }

    fn seq(&mut self, open: &str, close: &str, items: &[Expr], span: Span, indent: usize) -> String {
        let mut out = format!("{open}\n");
        for (i, item) in items.iter().enumerate() {
            out.push_str(
                &self.slot(indent + 1, item.span, i == 0, false, |f| {
                    f.expr(item, indent + 1, (indent + 1) * INDENT) + ","
                }),
            );
        }
        out.push_str(&self.rest_comments(indent + 1, items.is_empty(), span.end));
        out + &pad(indent) + close
    }
}

/// Text being built, with the column where the next character goes.
struct Out {
    text: String,
    col: usize,
}

impl Out {
    fn push(&mut self, s: &str) {
        match s.rfind('\n') {
            Some(i) => self.col = s[i + 1..].chars().count(),
            None => self.col += s.chars().count(),
        }
        self.text.push_str(s);
    }
}

/// For runs of aligned lines (recipe entries, sub-block members) not separated by a blank
/// line: the width to pad names to, per element (0 where the element is not aligned).
fn align_widths<T>(
    items: &[T],
    name_len: impl Fn(&T) -> Option<usize>,
    span: impl Fn(&T) -> Span,
    f: &Formatter,
) -> Vec<usize> {
    let mut widths = vec![0; items.len()];
    let mut i = 0;
    while i < items.len() {
        if name_len(&items[i]).is_none() {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < items.len()
            && name_len(&items[j]).is_some()
            && !f.blank_between(span(&items[j - 1]).end, span(&items[j]).start)
        {
            j += 1;
        }
        let w = items[i..j].iter().filter_map(&name_len).max().unwrap_or(0);
        widths[i..j].iter_mut().for_each(|x| *x = w);
        i = j;
    }
    widths
}

impl Formatter<'_> {
    /// Whether a blank line separates two neighbouring elements: one before the first
    /// own-line comment of the second element's group, or before the element itself.
    /// Blank lines between that group's comments do not count: comments moved out of an
    /// element keep theirs, and must not change the layout the second time round.
    fn blank_between(&self, prev_end: usize, start: usize) -> bool {
        let first_own_line = self
            .comments
            .iter()
            .filter(|c| c.span.start >= prev_end && c.span.end <= start)
            .find(|c| self.src[prev_end..c.span.start].contains('\n'))
            .map_or(start, |c| c.span.start);
        self.blank_before(first_own_line)
    }
}

/// Members whose `=` lines up with their neighbours'.
fn aligned_name(m: &Member) -> Option<usize> {
    match &m.kind {
        MemberKind::Sub { name, .. } | MemberKind::Buffer { name, .. } => Some(name.name.len()),
        _ => None,
    }
}

fn unary_symbol(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Neg => "-",
        UnaryOp::Not => "not ",
    }
}

fn needs_parens_left(child: &Expr, op: BinaryOp) -> bool {
    child.prec() < op.prec() || (child.prec() == op.prec() && op.assoc() != Assoc::Left)
}

/// A prefix `-` on the right never needs parentheses: it binds tighter than everything
/// but `**`, and a following `**` in the parent would itself be parenthesised.
fn needs_parens_right(child: &Expr, op: BinaryOp) -> bool {
    if matches!(child.kind, ExprKind::Unary { op: UnaryOp::Neg, .. }) {
        return false;
    }
    child.prec() < op.prec() || (child.prec() == op.prec() && op.assoc() != Assoc::Right)
}

pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn flat_arg(a: &Arg) -> String {
    match &a.name {
        Some(n) => format!("{}: {}", n.name, flat(&a.value)),
        None => flat(&a.value),
    }
}

fn flat_operand(e: &Expr, prec: Prec) -> String {
    if e.prec() < prec {
        format!("({})", flat(e))
    } else {
        flat(e)
    }
}

/// An expression on one line with the fewest parentheses that keep its tree.
pub fn flat(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int { text, .. } | ExprKind::Float { text, .. } => text.clone(),
        ExprKind::Str(s) => quote(s),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::None => "none".to_string(),
        ExprKind::Name(n) => n.name.clone(),
        ExprKind::Field { base, name } => format!("{}.{}", flat_operand(base, Prec::Postfix), name.name),
        ExprKind::Call { callee, args } => {
            let args: Vec<String> = args.iter().map(flat_arg).collect();
            format!("{}({})", flat_operand(callee, Prec::Postfix), args.join(", "))
        }
        ExprKind::Unary { op, operand } => format!("{}{}", unary_symbol(*op), flat_operand(operand, op.prec())),
        ExprKind::Binary { op, lhs, rhs } => {
            let l = if needs_parens_left(lhs, *op) { format!("({})", flat(lhs)) } else { flat(lhs) };
            let r = if needs_parens_right(rhs, *op) { format!("({})", flat(rhs)) } else { flat(rhs) };
            format!("{l} {} {r}", op.symbol())
        }
        ExprKind::Tuple(items) if items.len() == 1 => format!("({},)", flat(&items[0])),
        ExprKind::Tuple(items) => format!("({})", items.iter().map(flat).collect::<Vec<_>>().join(", ")),
        ExprKind::List(items) => format!("[{}]", items.iter().map(flat).collect::<Vec<_>>().join(", ")),
        ExprKind::If { cond, then, otherwise } => {
            let other = if matches!(otherwise.kind, ExprKind::If { .. }) {
                flat(otherwise)
            } else {
                format!("{{ {} }}", flat(otherwise))
            };
            format!("if {} {{ {} }} else {other}", flat(cond), flat(then))
        }
    }
}
