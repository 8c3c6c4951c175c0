//! Compile-time evaluation of expressions: block arguments and defaults, constants,
//! dims, `if` conditions and recipe entries. Integers are exact (`/` on two integers
//! floors, overflow is an error); names resolve to locals, then to the module's items.
//! In a recipe, a bare unknown name is a `Symbol` (`causal_lm`) and a call of one a
//! `Call` (`adamw(lr: 3e-4)`): their meaning belongs to the runtime.

use super::value::Value;
use crate::error::{suggest, Error, FileId};
use crate::modules::{ItemRef, Program};
use modelc_grammar::ast::{BinaryOp, Expr, ExprKind, ItemKind, Span, UnaryOp};
use modelc_grammar::Diagnostic;
use std::cell::RefCell;
use std::collections::HashMap;

/// Shared across scopes: constants are evaluated once, and a constant that needs itself
/// is an error rather than a stack overflow.
#[derive(Default)]
pub struct Consts {
    cache: RefCell<HashMap<ItemRef, Value>>,
    evaluating: RefCell<Vec<ItemRef>>,
}

/// Where names are looked up: a module, local bindings, and whether this is a recipe.
pub struct Scope<'a> {
    pub program: &'a Program,
    pub consts: &'a Consts,
    pub module: usize,
    pub locals: Vec<(String, Value)>,
    pub recipe: bool,
}

impl<'a> Scope<'a> {
    pub fn new(program: &'a Program, consts: &'a Consts, module: usize) -> Scope<'a> {
        Scope { program, consts, module, locals: Vec::new(), recipe: false }
    }

    pub fn file(&self) -> FileId {
        self.program.file_of(self.module)
    }

    pub fn error(&self, diag: Diagnostic) -> Error {
        Error::new(self.file(), diag)
    }

    pub fn bind(&mut self, name: &str, value: Value) {
        self.locals.push((name.to_string(), value));
    }

    pub fn local(&self, name: &str) -> Option<&Value> {
        self.locals.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Every name visible here, for "did you mean".
    pub fn visible_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.locals.iter().map(|(n, _)| n.clone()).collect();
        names.extend(self.program.modules[self.module].names.keys().cloned());
        names
    }

    pub fn unknown_name(&self, name: &str, span: Span) -> Error {
        let names = self.visible_names();
        let mut d = Diagnostic::error(format!("unknown name `{name}`"), span).with_label("not found in this scope");
        if let Some(s) = suggest(name, names.iter().map(String::as_str)) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        self.error(d)
    }

    pub fn eval(&self, e: &Expr) -> Result<Value, Error> {
        match &e.kind {
            ExprKind::Int { value, .. } => Ok(Value::Int(*value)),
            ExprKind::Float { value, .. } => Ok(Value::Float(*value)),
            ExprKind::Str(s) => Ok(Value::Str(s.clone())),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::None => Ok(Value::None),
            ExprKind::Name(n) => self.lookup(&n.name, n.span),
            ExprKind::Field { base, name } => match self.eval(base)? {
                Value::EnumType(r) => self.variant(r, &name.name, name.span),
                other => Err(self.error(
                    Diagnostic::error(format!("`.{}` on {} at compile time", name.name, other.kind()), name.span)
                        .with_label("no such field")
                        .with_help("at compile time, `.` selects an enum variant, as in `Norm.pre`"),
                )),
            },
            ExprKind::Call { callee, args } => {
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push((a.name.as_ref().map(|n| n.name.clone()), self.eval(&a.value)?));
                }
                match self.eval(callee)? {
                    Value::Block(block) if self.recipe => Ok(Value::Instance { block, args: values }),
                    Value::Symbol(name) if self.recipe => Ok(Value::Call { name, args: values }),
                    other => Err(self.error(
                        Diagnostic::error(format!("cannot call {} at compile time", other.kind()), callee.span)
                            .with_label("needs a value known before the model runs")
                            .with_help("sub-blocks are declared as members (`x = Block(..)`) and called in `forward`"),
                    )),
                }
            }
            ExprKind::Unary { op, operand } => {
                // A chain of prefix operators is applied innermost first, without recursion.
                let mut ops = vec![(*op, operand.span)];
                let mut inner = operand.as_ref();
                while let ExprKind::Unary { op, operand } = &inner.kind {
                    ops.push((*op, operand.span));
                    inner = operand;
                }
                let mut v = self.eval(inner)?;
                for (op, span) in ops.into_iter().rev() {
                    v = self.apply_unary(op, v, span)?;
                }
                Ok(v)
            }
            ExprKind::Binary { op: BinaryOp::Pow, .. } => {
                // `a ** b ** c` nests to the right: fold the right spine from its end.
                let mut bases = Vec::new();
                let mut cur = e;
                while let ExprKind::Binary { op: BinaryOp::Pow, lhs, rhs } = &cur.kind {
                    bases.push((lhs.as_ref(), cur.span, rhs.span));
                    cur = rhs;
                }
                let mut v = self.eval(cur)?;
                for (base, span, rhs_span) in bases.into_iter().rev() {
                    let b = self.eval(base)?;
                    v = self.apply_binary(BinaryOp::Pow, b, v, span, rhs_span)?;
                }
                Ok(v)
            }
            ExprKind::Binary { op, lhs, rhs } if !matches!(op, BinaryOp::And | BinaryOp::Or) => {
                // `a + b - c ...` nests to the left: walk the left spine, then fold forwards.
                let mut rest = vec![(*op, rhs.as_ref(), e.span)];
                let mut cur = lhs.as_ref();
                while let ExprKind::Binary { op, lhs, rhs } = &cur.kind {
                    if matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Pow) {
                        break;
                    }
                    rest.push((*op, rhs.as_ref(), cur.span));
                    cur = lhs;
                }
                let mut v = self.eval(cur)?;
                for (op, rhs, span) in rest.into_iter().rev() {
                    let r = self.eval(rhs)?;
                    v = self.apply_binary(op, v, r, span, rhs.span)?;
                }
                Ok(v)
            }
            ExprKind::Binary { op, lhs, rhs } => self.binary(*op, lhs, rhs, e.span),
            ExprKind::Tuple(items) => Ok(Value::Tuple(items.iter().map(|i| self.eval(i)).collect::<Result<_, _>>()?)),
            ExprKind::List(items) => Ok(Value::List(items.iter().map(|i| self.eval(i)).collect::<Result<_, _>>()?)),
            ExprKind::If { cond, then, otherwise } => {
                if self.condition(cond)? {
                    self.eval(then)
                } else {
                    self.eval(otherwise)
                }
            }
        }
    }

    fn apply_unary(&self, op: UnaryOp, v: Value, span: Span) -> Result<Value, Error> {
        match (op, v) {
            (UnaryOp::Neg, Value::Int(i)) => i.checked_neg().map(Value::Int).ok_or_else(|| self.overflow(span)),
            (UnaryOp::Neg, Value::Float(x)) => Ok(Value::Float(-x)),
            (UnaryOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            (op, v) => {
                Err(self.type_error(format!("`{}` does not apply to {} (`{v}`)", op.symbol().trim(), v.kind()), span))
            }
        }
    }

    /// A compile-time `bool`, with a clear error for anything else.
    pub fn condition(&self, cond: &Expr) -> Result<bool, Error> {
        match self.eval(cond)? {
            Value::Bool(b) => Ok(b),
            v => Err(self.type_error(format!("a condition must be a `bool`, found {} (`{v}`)", v.kind()), cond.span)),
        }
    }

    /// A compile-time integer (a dim, a copy count).
    pub fn int(&self, e: &Expr, what: &str) -> Result<i64, Error> {
        match self.eval(e)? {
            Value::Int(i) => Ok(i),
            v => Err(self.type_error(format!("{what} must be an `int`, found {} (`{v}`)", v.kind()), e.span)),
        }
    }

    fn lookup(&self, name: &str, span: Span) -> Result<Value, Error> {
        if let Some(v) = self.local(name) {
            return Ok(v.clone());
        }
        if let Some(&r) = self.program.modules[self.module].names.get(name) {
            return match &self.program.item(r).kind {
                ItemKind::Const(_) => self.constant(r, span),
                ItemKind::Enum(_) => Ok(Value::EnumType(r)),
                ItemKind::Block(_) => Ok(Value::Block(r)),
                ItemKind::Recipe(_) | ItemKind::Use(_) => {
                    Err(self.type_error(format!("`{name}` is a recipe, not a value"), span))
                }
            };
        }
        if self.recipe {
            return Ok(Value::Symbol(name.to_string()));
        }
        Err(self.unknown_name(name, span))
    }

    fn constant(&self, r: ItemRef, span: Span) -> Result<Value, Error> {
        if let Some(v) = self.consts.cache.borrow().get(&r) {
            return Ok(v.clone());
        }
        if self.consts.evaluating.borrow().contains(&r) {
            return Err(self.error(
                Diagnostic::error("this constant depends on itself", span).with_label("used while it is being defined"),
            ));
        }
        let ItemKind::Const(c) = &self.program.item(r).kind else { unreachable!("constant() is called on constants") };
        self.consts.evaluating.borrow_mut().push(r);
        let scope = Scope::new(self.program, self.consts, r.module);
        let value = scope.eval(&c.value).and_then(|v| scope.check_const_type(c, v));
        self.consts.evaluating.borrow_mut().pop();
        let value = value?;
        self.consts.cache.borrow_mut().insert(r, value.clone());
        Ok(value)
    }

    /// A `const NAME: ty = ...` value must have its declared type (`int` widens to `float`).
    pub fn check_const_type(&self, c: &modelc_grammar::ast::Const, v: Value) -> Result<Value, Error> {
        let Some(ty) = &c.ty else { return Ok(v) };
        let modelc_grammar::ast::TypeKind::Named(name) = &ty.kind else {
            return Err(
                self.type_error("a constant's type is `int`, `float`, `bool`, `str` or an enum".into(), ty.span)
            );
        };
        let ok = match (&v, name.name.as_str()) {
            (Value::None, _) if ty.optional => true,
            (Value::Int(_), "int") | (Value::Float(_), "float") | (Value::Bool(_), "bool") | (Value::Str(_), "str") => {
                true
            }
            (Value::Int(i), "float") => return Ok(Value::Float(*i as f64)),
            (Value::Variant { enum_name, .. }, n) => enum_name == n,
            _ => false,
        };
        if ok {
            Ok(v)
        } else {
            Err(self.type_error(
                format!("`{}` is declared `{}`, but its value is {} `{v}`", c.name.name, name.name, v.kind()),
                c.value.span,
            ))
        }
    }

    fn variant(&self, r: ItemRef, name: &str, span: Span) -> Result<Value, Error> {
        let ItemKind::Enum(def) = &self.program.item(r).kind else { unreachable!("EnumType refers to an enum") };
        if def.variants.iter().any(|v| v.name.name == name) {
            return Ok(Value::Variant { enum_name: def.name.name.clone(), variant: name.to_string() });
        }
        let mut d = Diagnostic::error(format!("`{}` has no variant `{name}`", def.name.name), span)
            .with_label("unknown variant");
        let variants: Vec<&str> = def.variants.iter().map(|v| v.name.name.as_str()).collect();
        d = d.with_help(match suggest(name, variants.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("the variants are {}", variants.join(", ")),
        });
        Err(self.error(d))
    }

    fn overflow(&self, span: Span) -> Error {
        self.error(Diagnostic::error("integer overflow at compile time", span).with_label("too large for 64 bits"))
    }

    pub fn type_error(&self, message: String, span: Span) -> Error {
        self.error(Diagnostic::error(message, span).with_label("here"))
    }

    fn binary(&self, op: BinaryOp, lhs: &Expr, rhs: &Expr, span: Span) -> Result<Value, Error> {
        use Value::Bool;
        // `and`/`or` short-circuit, so `x == none or x > 0` works on an optional.
        if matches!(op, BinaryOp::And | BinaryOp::Or) {
            let l = self.condition(lhs)?;
            return match (op, l) {
                (BinaryOp::And, false) => Ok(Bool(false)),
                (BinaryOp::Or, true) => Ok(Bool(true)),
                _ => self.condition(rhs).map(Bool),
            };
        }
        let (l, r) = (self.eval(lhs)?, self.eval(rhs)?);
        self.apply_binary(op, l, r, span, rhs.span)
    }

    /// A binary operator on two evaluated values (`and`/`or` included, without
    /// short-circuit). `rhs_span` locates a division by zero.
    pub fn apply_binary(&self, op: BinaryOp, l: Value, r: Value, span: Span, rhs_span: Span) -> Result<Value, Error> {
        use Value::{Bool, Float, Int};
        if let (BinaryOp::And | BinaryOp::Or, Bool(a), Bool(b)) = (op, &l, &r) {
            return Ok(Bool(if op == BinaryOp::And { *a && *b } else { *a || *b }));
        }
        if matches!(op, BinaryOp::Then | BinaryOp::From) && self.recipe {
            return Ok(Value::Call { name: op.symbol().to_string(), args: vec![(None, l), (None, r)] });
        }
        let num = |v: &Value| match v {
            Int(i) => Some(*i as f64),
            Float(x) => Some(*x),
            _ => None,
        };
        let mismatch = || {
            self.type_error(
                format!("`{}` does not apply to {} (`{l}`) and {} (`{r}`)", op.symbol(), l.kind(), r.kind()),
                span,
            )
        };
        Ok(match op {
            BinaryOp::Eq | BinaryOp::Ne => {
                let equal = match (num(&l), num(&r)) {
                    (Some(a), Some(b)) => a == b,
                    _ => l == r,
                };
                Bool(equal == (op == BinaryOp::Eq))
            }
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
                let (Some(a), Some(b)) = (num(&l), num(&r)) else { return Err(mismatch()) };
                Bool(match op {
                    BinaryOp::Lt => a < b,
                    BinaryOp::Le => a <= b,
                    BinaryOp::Gt => a > b,
                    _ => a >= b,
                })
            }
            _ => match (&l, &r) {
                (Int(a), Int(b)) => {
                    let (a, b) = (*a, *b);
                    let exact = match op {
                        BinaryOp::Add => a.checked_add(b),
                        BinaryOp::Sub => a.checked_sub(b),
                        BinaryOp::Mul => a.checked_mul(b),
                        BinaryOp::Div | BinaryOp::Rem if b == 0 => {
                            return Err(self.error(
                                Diagnostic::error("division by zero at compile time", rhs_span).with_label("is 0"),
                            ))
                        }
                        // Python's rules: `/` floors, `%` takes the divisor's sign.
                        BinaryOp::Div => Some(crate::elab::forward::floor_div(a, b)),
                        BinaryOp::Rem => Some(a - b * crate::elab::forward::floor_div(a, b)),
                        BinaryOp::Pow if b < 0 => return Ok(Float((a as f64).powf(b as f64))),
                        BinaryOp::Pow => u32::try_from(b).ok().and_then(|b| a.checked_pow(b)),
                        _ => return Err(mismatch()),
                    };
                    Int(exact.ok_or_else(|| self.overflow(span))?)
                }
                _ => {
                    let (Some(a), Some(b)) = (num(&l), num(&r)) else { return Err(mismatch()) };
                    if matches!(op, BinaryOp::Div | BinaryOp::Rem) && b == 0.0 {
                        return Err(self.error(
                            Diagnostic::error("division by zero at compile time", rhs_span).with_label("is 0"),
                        ));
                    }
                    Float(match op {
                        BinaryOp::Add => a + b,
                        BinaryOp::Sub => a - b,
                        BinaryOp::Mul => a * b,
                        BinaryOp::Div => a / b,
                        BinaryOp::Rem => a - b * (a / b).floor(),
                        BinaryOp::Pow => a.powf(b),
                        _ => return Err(mismatch()),
                    })
                }
            },
        })
    }
}
