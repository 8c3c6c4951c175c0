//! Block + compile-time arguments → an instance tree: every learned parameter with its
//! concrete shape and hierarchical name, every sub-block, `repeat`/`stack` copy counts.
//! This is the "what exists" half of elaboration (parameter counts, checkpoint names);
//! `forward` is elaborated into the Graph IR from it. Nothing here is per element:
//! a `repeat(32)` layer is instantiated once and counted 32 times.

use super::eval::{Consts, Scope};
use super::value::Value;
use crate::error::{suggest, Error, FileId};
use crate::modules::{ItemRef, Program};
use modelc_grammar::ast::{self, CopiesKind, Dim, Else, Expr, ExprKind, ItemKind, MemberKind, Span, TypeKind};
use modelc_grammar::Diagnostic;
use std::collections::HashMap;

/// Initialisers a parameter may name, with how many arguments each takes.
pub const INITIALISERS: &[(&str, std::ops::RangeInclusive<usize>)] = &[
    ("zeros", 0..=0),
    ("ones", 0..=0),
    ("normal", 1..=1),
    ("uniform", 2..=2),
    ("xavier", 0..=0),
    ("kaiming", 0..=0),
    ("scaled_normal", 2..=2),
    ("constant", 1..=1),
];

pub const DTYPES: &[&str] = &["f32", "f16", "bf16", "i32", "i64", "bool"];

#[derive(Clone, Debug)]
pub struct Instance {
    pub block: ItemRef,
    pub block_name: String,
    pub docs: Vec<String>,
    /// Every parameter's final value, in declaration order.
    pub args: Vec<(String, Value)>,
    /// What `forward` sees at compile time: the parameters, then the `const`s of the
    /// branches taken, in order.
    pub statics: Vec<(String, Value)>,
    pub members: Vec<Member>,
    /// Set on the root by a recipe's `adapter = ptuning(..)`; `None` everywhere else.
    pub prompt: Option<PromptSite>,
}

/// P-tuning's place in a model: the root's call of member `after` (its token embedding,
/// `[B, T, d]`) gets member `encoder`'s `[tokens, d]` virtual tokens in front, so the
/// layers see `tokens + T` positions; the root's output drops those positions again.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptSite {
    pub after: String,
    pub encoder: String,
    pub tokens: i64,
}

#[derive(Clone, Debug)]
pub enum Member {
    Weight(Weight),
    Buffer {
        name: String,
    },
    Sub(Sub),
    /// A glob of imported checkpoint tensors this block leaves out (`unused "pooler.*"`).
    Unused(String),
}

#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub dtype: Option<String>,
    pub shape: Vec<i64>,
    pub init: modelc_runtime::init::Init,
    /// The layout PyTorch-style checkpoints use: `stored[i]` is the declared axis that
    /// their axis `i` holds (`[1, 0]` for a `Linear` weight).
    pub stored: Option<Vec<usize>>,
    pub docs: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Sub {
    pub name: String,
    pub copies: Option<(CopiesKind, i64)>,
    pub instance: Instance,
    pub docs: Vec<String>,
}

impl Weight {
    /// The number of elements; saturates (a count past `u64` is absurd, not a panic).
    pub fn count(&self) -> u64 {
        self.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))
    }
}

impl Sub {
    pub fn multiplier(&self) -> u64 {
        self.copies.map_or(1, |(_, n)| n as u64)
    }
}

impl Instance {
    /// Learned parameters, counted exactly.
    pub fn param_count(&self) -> u64 {
        self.members
            .iter()
            .map(|m| match m {
                Member::Weight(w) => w.count(),
                Member::Buffer { .. } | Member::Unused(_) => 0,
                Member::Sub(s) => s.multiplier().saturating_mul(s.instance.param_count()),
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Every parameter's checkpoint name and shape: `blocks.3.attn.wq.weight`, with a
    /// `stack`'s leading copy dim. Visits `repeat` copies one by one.
    pub fn for_each_param(&self, prefix: &str, lead: &[i64], f: &mut dyn FnMut(&str, &[i64])) {
        self.for_each_weight(prefix, lead, &mut |name, shape, _| f(name, shape));
    }

    /// The `unused` globs of this block and every block below, prefixed with the block's
    /// path (`pooler.*`; inside `repeat` copies, `layer.3.extra.*`).
    pub fn unused_globs(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.members {
            match m {
                Member::Unused(g) => out.push(join(prefix, g)),
                Member::Sub(s) => match s.copies {
                    Some((CopiesKind::Repeat, n)) => {
                        for i in 0..n {
                            out.extend(s.instance.unused_globs(&join(&join(prefix, &s.name), &i.to_string())));
                        }
                    }
                    _ => out.extend(s.instance.unused_globs(&join(prefix, &s.name))),
                },
                Member::Weight(_) | Member::Buffer { .. } => {}
            }
        }
        out
    }

    /// `for_each_param` with each parameter's declaration (its initialiser).
    pub fn for_each_weight(&self, prefix: &str, lead: &[i64], f: &mut dyn FnMut(&str, &[i64], &Weight)) {
        self.walk_weights(prefix, prefix, lead, &mut |name, _, shape, w| f(name, shape, w));
    }

    /// Each parameter under a `stack` with the name it would have without the stacks:
    /// `(blocks.0.mlp.experts.wup.weight, blocks.0.mlp.wup.weight, 1)`, the last item
    /// the number of leading copy axes. Upcycling fills experts from a dense block by it.
    pub fn stacked_params(&self) -> Vec<(String, String, usize)> {
        let mut out = Vec::new();
        self.walk_weights("", "", &[], &mut |name, unstacked, shape, w| {
            let axes = shape.len() - w.shape.len();
            if axes > 0 {
                out.push((name.to_string(), unstacked.to_string(), axes));
            }
        });
        out
    }

    /// Visits every weight with its checkpoint name and the name without `stack` segments.
    fn walk_weights(&self, prefix: &str, unstacked: &str, lead: &[i64], f: &mut WeightVisitor) {
        for m in &self.members {
            match m {
                Member::Weight(w) => {
                    let shape: Vec<i64> = lead.iter().chain(&w.shape).copied().collect();
                    f(&join(prefix, &w.name), &join(unstacked, &w.name), &shape, w);
                }
                Member::Buffer { .. } | Member::Unused(_) => {}
                Member::Sub(s) => {
                    let (named, unstacked_named) = (join(prefix, &s.name), join(unstacked, &s.name));
                    match s.copies {
                        Some((CopiesKind::Repeat, n)) => {
                            for i in 0..n {
                                let (p, u) = (join(&named, &i.to_string()), join(&unstacked_named, &i.to_string()));
                                s.instance.walk_weights(&p, &u, lead, f);
                            }
                        }
                        Some((CopiesKind::Stack, n)) => {
                            let lead: Vec<i64> = lead.iter().copied().chain([n]).collect();
                            s.instance.walk_weights(&named, unstacked, &lead, f);
                        }
                        None => s.instance.walk_weights(&named, &unstacked_named, lead, f),
                    }
                }
            }
        }
    }
}

/// Called with a weight's checkpoint name, its name without `stack` segments, its shape
/// (with the stacks' copy axes first) and its declaration.
type WeightVisitor<'a> = dyn FnMut(&str, &str, &[i64], &Weight) + 'a;

/// The permutation from a weight's declared dims to its `stored` dims, matched by their
/// written form (values cannot tell the axes of a square matrix apart).
fn stored_layout(declared: &ast::Type, stored: &ast::Type) -> Result<Vec<usize>, Diagnostic> {
    let texts = |t: &ast::Type| -> Vec<String> {
        match &t.kind {
            TypeKind::Tensor { dims, .. } => dims
                .iter()
                .map(|d| match d {
                    ast::Dim::Expr(e) => modelc_grammar::format::flat(e),
                    ast::Dim::Ellipsis(_) => "...".to_string(),
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let (want, have) = (texts(declared), texts(stored));
    let mut used = vec![false; want.len()];
    let mut perm = Vec::with_capacity(have.len());
    for h in &have {
        match (0..want.len()).find(|&i| !used[i] && want[i] == *h) {
            Some(i) if h != "..." => {
                used[i] = true;
                perm.push(i);
            }
            _ => break,
        }
    }
    if perm.len() != want.len() || have.len() != want.len() {
        let declared_text = format!("[{}]", want.join(", "));
        return Err(Diagnostic::error("a stored layout must reorder the declared dims", stored.span)
            .with_label(format!("not a permutation of {declared_text}"))
            .with_help(format!("write the same dims as {declared_text} in the checkpoint's order")));
    }
    Ok(perm)
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A compile-time argument at a call site, with the file its span points into (a
/// recipe's arguments and `--set` overrides come from different files).
#[derive(Clone, Debug)]
pub struct ArgValue {
    pub name: Option<(String, Span)>,
    pub value: Value,
    pub span: Span,
    pub file: FileId,
}

pub struct Instantiator<'a> {
    pub program: &'a Program,
    pub consts: &'a Consts,
    /// Blocks being instantiated, outermost first, to report a block containing itself.
    stack: Vec<ItemRef>,
}

impl<'a> Instantiator<'a> {
    pub fn new(program: &'a Program, consts: &'a Consts) -> Instantiator<'a> {
        Instantiator { program, consts, stack: Vec::new() }
    }

    /// Instantiates `block` with `args` given at `site` (file and span of the call).
    pub fn instantiate(&mut self, block: ItemRef, args: &[ArgValue], site: (FileId, Span)) -> Result<Instance, Error> {
        let item = self.program.item(block);
        let ItemKind::Block(def) = &item.kind else {
            return Err(Error::new(site.0, Diagnostic::error("not a block", site.1)));
        };
        let mut scope = Scope::new(self.program, self.consts, block.module);
        let bound = self.bind_args(def, args, site, &mut scope)?;
        self.stack.push(block);
        let mut members = Vec::new();
        let mut declared: HashMap<String, Span> = HashMap::new();
        let result = self.members(&def.members, &mut scope, &mut members, &mut declared);
        self.stack.pop();
        result?;
        let statics = scope.locals.clone();
        Ok(Instance {
            block,
            block_name: def.name.name.clone(),
            docs: item.docs.clone(),
            args: bound,
            statics,
            members,
            prompt: None,
        })
    }

    /// Matches call arguments to parameters, fills defaults in order and checks types.
    fn bind_args(
        &self,
        def: &ast::BlockDef,
        args: &[ArgValue],
        site: (FileId, Span),
        scope: &mut Scope,
    ) -> Result<Vec<(String, Value)>, Error> {
        let at = |a: &ArgValue, span: Span, diag: Diagnostic| Error::new(a.file, Diagnostic { span, ..diag });
        let mut given: Vec<Option<(Value, Span, FileId)>> = vec![None; def.params.len()];
        let mut positional = 0;
        for a in args {
            let index = match &a.name {
                None => {
                    if positional >= def.params.len() {
                        return Err(at(
                            a,
                            a.span,
                            Diagnostic::error(
                                format!(
                                    "`{}` takes {} arguments, this is one too many",
                                    def.name.name,
                                    def.params.len()
                                ),
                                a.span,
                            )
                            .with_label("extra argument"),
                        ));
                    }
                    positional += 1;
                    positional - 1
                }
                Some((name, span)) => match def.params.iter().position(|p| &p.name.name == name) {
                    Some(i) => i,
                    None => {
                        let mut d = Diagnostic::error(format!("`{}` has no parameter `{name}`", def.name.name), *span)
                            .with_label("unknown keyword argument");
                        d = d.with_help(match suggest(name, def.params.iter().map(|p| p.name.name.as_str())) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!(
                                "its parameters are {}",
                                def.params.iter().map(|p| format!("`{}`", p.name.name)).collect::<Vec<_>>().join(", ")
                            ),
                        });
                        return Err(at(a, *span, d));
                    }
                },
            };
            if given[index].is_some() {
                return Err(at(
                    a,
                    a.span,
                    Diagnostic::error(format!("`{}` is given twice", def.params[index].name.name), a.span)
                        .with_label("second value"),
                ));
            }
            given[index] = Some((a.value.clone(), a.span, a.file));
        }
        let mut bound = Vec::with_capacity(def.params.len());
        // Explicit arguments are visible to every default; defaults see earlier parameters.
        for (p, g) in def.params.iter().zip(&given) {
            if let Some((v, _, _)) = g {
                scope.bind(&p.name.name, v.clone());
            }
        }
        for (p, g) in def.params.iter().zip(given) {
            let value = match g {
                Some((v, span, file)) => self.check_type(p, v, (file, span), scope.file())?,
                None => match &p.default {
                    Some(d) => {
                        let v = scope.eval(d)?;
                        self.check_type(p, v, (scope.file(), d.span), scope.file())?
                    }
                    None => {
                        return Err(Error::new(
                            site.0,
                            Diagnostic::error(
                                format!("missing argument `{}` of `{}`", p.name.name, def.name.name),
                                site.1,
                            )
                            .with_label(format!("`{}` is required", p.name.name))
                            .with_help(format!("pass it as `{}: ...`", p.name.name)),
                        ))
                    }
                },
            };
            scope.bind(&p.name.name, value.clone());
            bound.push((p.name.name.clone(), value));
        }
        Ok(bound)
    }

    /// Checks a value against a block parameter's declared type; `int` widens to `float`.
    fn check_type(&self, p: &ast::Param, v: Value, at: (FileId, Span), callee_file: FileId) -> Result<Value, Error> {
        let TypeKind::Named(ty) = &p.ty.kind else {
            return Err(Error::new(
                callee_file,
                Diagnostic::error("a block parameter is a single compile-time value", p.ty.span)
                    .with_label("not `int`, `float`, `bool`, `str` or an enum")
                    .with_help("tensors are `forward` arguments; give each value its own parameter"),
            ));
        };
        let expected = ty.name.as_str();
        let ok = match (&v, expected) {
            (Value::None, _) if p.ty.optional => return Ok(v),
            (Value::Int(_), "int") | (Value::Float(_), "float") | (Value::Bool(_), "bool") | (Value::Str(_), "str") => {
                true
            }
            (Value::Int(i), "float") => return Ok(Value::Float(*i as f64)),
            (Value::Variant { enum_name, .. }, _) => enum_name == expected,
            _ => false,
        };
        if ok {
            return Ok(v);
        }
        let opt = if p.ty.optional { "?" } else { "" };
        let mut d =
            Diagnostic::error(format!("`{}` expects `{expected}{opt}`, found {} `{v}`", p.name.name, v.kind()), at.1)
                .with_label(format!("expected `{expected}{opt}`"));
        if matches!(v, Value::Bool(_)) && expected == "int" {
            d = d.with_help("a `bool` is not a number here; pass an integer");
        }
        Err(Error::new(at.0, d))
    }

    fn members(
        &mut self,
        members: &[ast::Member],
        scope: &mut Scope,
        out: &mut Vec<Member>,
        declared: &mut HashMap<String, Span>,
    ) -> Result<(), Error> {
        for m in members {
            let declare = |name: &ast::Ident, declared: &mut HashMap<String, Span>| -> Result<(), Error> {
                if let Some(first) = declared.get(&name.name) {
                    return Err(scope.error(
                        Diagnostic::error(format!("`{}` is declared twice in this block", name.name), name.span)
                            .with_label("second declaration")
                            .with_secondary(*first, "first declared here")
                            .with_help("names are single-assignment; give it another name"),
                    ));
                }
                declared.insert(name.name.clone(), name.span);
                Ok(())
            };
            match &m.kind {
                MemberKind::Const(c) => {
                    declare(&c.name, declared)?;
                    let v = scope.eval(&c.value).and_then(|v| scope.check_const_type(c, v))?;
                    scope.bind(&c.name.name, v);
                }
                MemberKind::Param { name, ty, init, stored } => {
                    declare(name, declared)?;
                    let (dtype, shape) = self.weight_type(ty, scope)?;
                    let stored =
                        stored.as_ref().map(|st| stored_layout(ty, st)).transpose().map_err(|d| scope.error(d))?;
                    let init = match init {
                        Some(e) => self.initialiser(e, scope)?,
                        None => modelc_runtime::init::Init::Normal { std: 0.02 },
                    };
                    out.push(Member::Weight(Weight {
                        name: name.name.clone(),
                        dtype,
                        shape,
                        init,
                        stored,
                        docs: m.docs.clone(),
                    }));
                }
                MemberKind::Unused(globs) => {
                    out.extend(globs.iter().map(|(g, _)| Member::Unused(g.clone())));
                }
                MemberKind::Buffer { name, .. } => {
                    declare(name, declared)?;
                    out.push(Member::Buffer { name: name.name.clone() });
                }
                MemberKind::Sub { name, copies, block, args } => {
                    declare(name, declared)?;
                    out.push(Member::Sub(self.sub(name, copies.as_ref(), block, args, &m.docs, scope)?));
                }
                MemberKind::If { cond, then, otherwise } => {
                    if scope.condition(cond)? {
                        self.members(then, scope, out, declared)?;
                    } else {
                        match otherwise {
                            Some(Else::If(inner)) => self.members(std::slice::from_ref(inner), scope, out, declared)?,
                            Some(Else::Body(body)) => self.members(body, scope, out, declared)?,
                            None => {}
                        }
                    }
                }
                MemberKind::Forward(_) => {
                    if let Some(first) = declared.get("forward") {
                        return Err(scope.error(
                            Diagnostic::error("a block has one `forward`", m.span)
                                .with_label("second `forward`")
                                .with_secondary(*first, "first here"),
                        ));
                    }
                    declared.insert("forward".into(), m.span);
                }
            }
        }
        Ok(())
    }

    fn weight_type(&self, ty: &ast::Type, scope: &Scope) -> Result<(Option<String>, Vec<i64>), Error> {
        let TypeKind::Tensor { dtype, dims } = &ty.kind else {
            return Err(scope.error(
                Diagnostic::error("a learned parameter needs a tensor type", ty.span)
                    .with_label("not a shape")
                    .with_help("write its shape, as in `w: [d, 4 * d] = normal(0.02)`"),
            ));
        };
        if ty.optional {
            return Err(scope.error(
                Diagnostic::error("a learned parameter cannot be optional", ty.span)
                    .with_label("`?` here")
                    .with_help("declare it inside `if cond { ... }` to make it conditional"),
            ));
        }
        let dtype = match dtype {
            Some(d) if DTYPES.contains(&d.name.as_str()) => Some(d.name.clone()),
            Some(d) => {
                let mut diag =
                    Diagnostic::error(format!("unknown dtype `{}`", d.name), d.span).with_label("not a dtype");
                diag = diag.with_help(match suggest(&d.name, DTYPES.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("dtypes are {}", DTYPES.join(", ")),
                });
                return Err(scope.error(diag));
            }
            None => None,
        };
        let mut shape = Vec::with_capacity(dims.len());
        for d in dims {
            let e = match d {
                Dim::Expr(e) => e,
                Dim::Ellipsis(span) => {
                    return Err(scope.error(
                        Diagnostic::error("a learned parameter's shape is fixed: `...` is not allowed", *span)
                            .with_label("here"),
                    ))
                }
            };
            let n = self.dim(e, scope)?;
            shape.push(n);
        }
        Ok((dtype, shape))
    }

    fn dim(&self, e: &Expr, scope: &Scope) -> Result<i64, Error> {
        if let ExprKind::Name(n) = &e.kind {
            if scope.local(&n.name).is_none() && !scope.program.modules[scope.module].names.contains_key(&n.name) {
                return Err(scope.error(
                    Diagnostic::error(format!("unknown name `{}` in a parameter's shape", n.name), n.span)
                        .with_label("not a compile-time value here")
                        .with_help(
                            suggest(&n.name, scope.visible_names().iter().map(String::as_str))
                                .map(|s| format!("did you mean `{s}`? (a parameter's dims are known before the model runs)"))
                                .unwrap_or_else(|| "a parameter's dims are known before the model runs: use block parameters and constants; symbolic dims such as `B` exist only in `forward`".into()),
                        ),
                ));
            }
        }
        let n = scope.int(e, "a dim")?;
        if n <= 0 {
            return Err(scope.error(
                Diagnostic::error(format!("a dim must be positive, this one is {n}"), e.span).with_label("here"),
            ));
        }
        Ok(n)
    }

    /// `zeros`, `normal(0.02)`, or a compile-time `if` choosing one.
    fn initialiser(&self, e: &Expr, scope: &Scope) -> Result<modelc_runtime::init::Init, Error> {
        let (name, args, span) = match &e.kind {
            ExprKind::If { cond, then, otherwise } => {
                return self.initialiser(if scope.condition(cond)? { then } else { otherwise }, scope)
            }
            ExprKind::Name(n) => (n, &[][..], n.span),
            ExprKind::Call { callee, args } => match &callee.kind {
                ExprKind::Name(n) => (n, args.as_slice(), e.span),
                _ => return Err(scope.type_error("expected an initialiser such as `normal(0.02)`".into(), e.span)),
            },
            _ => return Err(scope.type_error("expected an initialiser such as `normal(0.02)`".into(), e.span)),
        };
        let Some((_, arity)) = INITIALISERS.iter().find(|(n, _)| *n == name.name) else {
            let names = INITIALISERS.iter().map(|(n, _)| *n);
            let mut d = Diagnostic::error(format!("unknown initialiser `{}`", name.name), name.span)
                .with_label("not an initialiser");
            d = d.with_help(match suggest(&name.name, names.clone()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("initialisers are {}", names.collect::<Vec<_>>().join(", ")),
            });
            return Err(scope.error(d));
        };
        if !arity.contains(&args.len()) {
            return Err(scope.error(
                Diagnostic::error(
                    format!("`{}` takes {} argument(s), found {}", name.name, arity.start(), args.len()),
                    span,
                )
                .with_label("wrong number of arguments"),
            ));
        }
        // Every argument is a number, by position (`normal(0.02)`, `uniform(-0.1, 0.1)`).
        let mut x = Vec::with_capacity(args.len());
        for a in args {
            match scope.eval(&a.value)? {
                Value::Int(i) => x.push(i as f64),
                Value::Float(f) if f.is_finite() => x.push(f),
                other => {
                    return Err(scope.error(
                        Diagnostic::error(
                            format!("`{}` takes numbers, found {}", name.name, other.kind()),
                            a.value.span,
                        )
                        .with_label("not a finite number"),
                    ))
                }
            }
        }
        use modelc_runtime::init::Init;
        Ok(match (name.name.as_str(), x.as_slice()) {
            ("zeros", []) => Init::Zeros,
            ("ones", []) => Init::Ones,
            ("constant", [c]) => Init::Constant(*c),
            ("normal", [std]) => Init::Normal { std: *std },
            ("uniform", [low, high]) => Init::Uniform { low: *low, high: *high },
            ("xavier", []) => Init::Xavier,
            ("kaiming", []) => Init::Kaiming,
            ("scaled_normal", [std, layers]) => Init::ScaledNormal { std: *std, layers: *layers },
            (other, _) => unreachable!("INITIALISERS checked `{other}` and its arity"),
        })
    }

    fn sub(
        &mut self,
        name: &ast::Ident,
        copies: Option<&ast::Copies>,
        block: &ast::Ident,
        args: &[ast::Arg],
        docs: &[String],
        scope: &Scope,
    ) -> Result<Sub, Error> {
        let target = match scope.program.modules[scope.module].names.get(&block.name) {
            Some(&r) if matches!(scope.program.item(r).kind, ItemKind::Block(_)) => r,
            Some(_) => {
                return Err(scope.error(
                    Diagnostic::error(format!("`{}` is not a block", block.name), block.span)
                        .with_label("cannot be instantiated"),
                ))
            }
            None => {
                let blocks: Vec<&str> = scope.program.modules[scope.module]
                    .names
                    .iter()
                    .filter(|(_, r)| matches!(scope.program.item(**r).kind, ItemKind::Block(_)))
                    .map(|(n, _)| n.as_str())
                    .collect();
                let mut d = Diagnostic::error(format!("unknown block `{}`", block.name), block.span)
                    .with_label("not declared or imported");
                if let Some(s) = suggest(&block.name, blocks.iter().copied()) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                } else if ["repeat", "stack"].contains(&block.name.as_str()) {
                    d = d.with_help(format!(
                        "`{}(n)` is followed by the block to copy, as in `{}(4) Layer(d)`",
                        block.name, block.name
                    ));
                } else {
                    d = d.with_help(format!("import it, as in `use std.nn.{{{}}}`", block.name));
                }
                return Err(scope.error(d));
            }
        };
        if let Some(pos) = self.stack.iter().position(|b| *b == target) {
            let cycle: Vec<String> = self.stack[pos..]
                .iter()
                .chain([&target])
                .map(|b| self.program.item(*b).name().map(|n| n.name.clone()).unwrap_or_default())
                .collect();
            return Err(scope.error(
                Diagnostic::error(format!("block `{}` contains itself: {}", block.name, cycle.join(" → ")), block.span)
                    .with_label("recursive instantiation")
                    .with_help(
                        "blocks are expanded at compile time, so they cannot be recursive; use `repeat(n)` for depth",
                    ),
            ));
        }
        let copies = match copies {
            None => None,
            Some(c) => {
                let n = scope.int(&c.count, "a copy count")?;
                if n < 1 {
                    return Err(scope.error(
                        Diagnostic::error(format!("a copy count must be at least 1, this one is {n}"), c.count.span)
                            .with_label("here"),
                    ));
                }
                Some((c.kind, n))
            }
        };
        let mut values = Vec::with_capacity(args.len());
        for a in args {
            values.push(ArgValue {
                name: a.name.as_ref().map(|n| (n.name.clone(), n.span)),
                value: scope.eval(&a.value)?,
                span: a.span,
                file: scope.file(),
            });
        }
        let site = (scope.file(), block.span.to(args.last().map_or(block.span, |a| a.span)));
        let instance = self.instantiate(target, &values, site)?;
        Ok(Sub { name: name.name.clone(), copies, instance, docs: docs.to_vec() })
    }
}
