//! The syntax tree of a `.model` file: what the source says, with a byte span on every
//! node, and nothing about what it means. Parentheses are not kept: the tree's shape is
//! the grouping, and the formatter prints the parentheses that precedence needs.
//! Plain `//` comments are not in the tree either (the formatter reads them from the
//! scanner); `///` doc comments are, attached to the item, field, variant or entry after
//! them.

/// A half-open byte range `[start, end)` into the source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `///` lines before a node, each without the `///` and one following space.
pub type Docs = Vec<String>;

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub docs: Docs,
    pub kind: ItemKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ItemKind {
    Use(Use),
    Const(Const),
    Enum(EnumDef),
    Block(BlockDef),
    Recipe(Recipe),
}

/// `use std.nn.{A, B}`, `use std.nn.A` or `use "other.model"`.
#[derive(Clone, Debug, PartialEq)]
pub enum Use {
    /// A module path (`std.nn`) and the names imported from it (never empty).
    Module { path: Vec<Ident>, names: Vec<Ident> },
    /// Every item of another file, by a path relative to the importing file.
    File { path: String, span: Span },
}

/// `const NAME: ty = value`, at top level or inside a block.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    pub name: Ident,
    pub ty: Option<Type>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EnumDef {
    pub name: Ident,
    pub variants: Vec<Variant>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub docs: Docs,
    pub name: Ident,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// A reusable module.
    Block,
    /// An entry point: can be inspected, run and trained.
    Model,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub kind: BlockKind,
    pub name: Ident,
    pub params: Vec<Param>,
    pub members: Vec<Member>,
}

/// A typed name with an optional default: block parameters and `forward` arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub docs: Docs,
    pub name: Ident,
    pub ty: Type,
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Type {
    pub kind: TypeKind,
    /// Written with a trailing `?`: the value may be `none`.
    pub optional: bool,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeKind {
    /// `int`, `float`, `bool`, `str` or an enum's name.
    Named(Ident),
    /// `[B, T, d]` or `i32[B, T]`; a missing dtype means the recipe's activation dtype.
    Tensor {
        dtype: Option<Ident>,
        dims: Vec<Dim>,
    },
    Tuple(Vec<Type>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    /// A symbolic dim (`B`) or a compile-time expression (`heads * hd`).
    Expr(Expr),
    /// `...`: any number of leading dims, the same on input and output.
    Ellipsis(Span),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub docs: Docs,
    pub kind: MemberKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MemberKind {
    /// `w: [d, out] = normal(0.02)`: a learned parameter.
    Param {
        name: Ident,
        ty: Type,
        init: Option<Expr>,
        /// `stored [d_out, d_in]`: how PyTorch-style checkpoints lay the weight out, a
        /// permutation of `ty`'s dims; `--weights` imports through it.
        stored: Option<Type>,
    },
    /// `unused "pooler.*", ...`: names (globs, relative to the block) of an imported
    /// checkpoint's tensors that this block deliberately leaves out.
    Unused(Vec<(String, Span)>),
    /// `name = buffer expr`: a constant tensor computed at compile time.
    Buffer {
        name: Ident,
        value: Expr,
    },
    /// `name = Block(args)`, `name = repeat(n) Block(args)`, `name = stack(n) Block(args)`.
    Sub {
        name: Ident,
        copies: Option<Copies>,
        block: Ident,
        args: Vec<Arg>,
    },
    Const(Const),
    /// `if c { .. } else if c { .. } else { .. }` over declarations, chosen at compile time.
    If {
        cond: Expr,
        then: Vec<Member>,
        otherwise: Option<Else>,
    },
    Forward(Forward),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Else {
    /// `else if ...`: another `MemberKind::If`, kept as a member for its span.
    If(Box<Member>),
    Body(Vec<Member>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopiesKind {
    /// Sequential copies, applied in order: parameters `name.0.w`, `name.1.w`, ...
    Repeat,
    /// Parallel copies with stacked parameters `[n, ...]` (experts).
    Stack,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Copies {
    pub kind: CopiesKind,
    pub count: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    pub params: Vec<Param>,
    pub ret: Option<Type>,
    pub body: Vec<Stmt>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `x = e`, or `a, b = e` to take a tuple apart.
    Let {
        names: Vec<Ident>,
        value: Expr,
    },
    Return(Expr),
    /// A scalar added to the training objective.
    AuxLoss {
        name: Ident,
        value: Expr,
    },
    /// A scalar reported during training.
    Metric {
        name: Ident,
        value: Expr,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub name: Ident,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub docs: Docs,
    pub key: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// An integer literal; `text` is the spelling, kept for the formatter.
    Int {
        value: i64,
        text: String,
    },
    Float {
        value: f64,
        text: String,
    },
    /// A string literal, unescaped.
    Str(String),
    Bool(bool),
    None,
    Name(Ident),
    /// `e.name`: a sub-block's parameter (`embed.weight`) or an enum variant.
    Field {
        base: Box<Expr>,
        name: Ident,
    },
    Call {
        callee: Box<Expr>,
        args: Vec<Arg>,
    },
    Unary {
        op: UnaryOp,
        operand: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Tuple(Vec<Expr>),
    List(Vec<Expr>),
    /// `if c { a } else { b }`, chosen at compile time.
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// `key: value`; positional when `None`.
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Pow,
    Mul,
    Div,
    Rem,
    MatMul,
    Add,
    Sub,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    /// `warmup(100) then cosine(to: 0.1)`: schedule phases (recipes only).
    Then,
    /// `Llama(...) from "x.safetensors"`: a model with loaded weights (recipes only).
    From,
}

/// How tightly an operator binds; larger binds tighter. Prefix operators sit between
/// `**` and `*`, so `-x ** 2` is `-(x ** 2)` and `-a * b` is `(-a) * b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prec {
    Recipe = 1,
    Or,
    And,
    Not,
    Compare,
    Add,
    Mul,
    Neg,
    Pow,
    Postfix,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assoc {
    Left,
    Right,
    /// Chaining is an error (`a < b < c`).
    None,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Pow => "**",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::MatMul => "@",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
            BinaryOp::Then => "then",
            BinaryOp::From => "from",
        }
    }

    pub fn prec(self) -> Prec {
        match self {
            BinaryOp::Pow => Prec::Pow,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem | BinaryOp::MatMul => Prec::Mul,
            BinaryOp::Add | BinaryOp::Sub => Prec::Add,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => Prec::Compare,
            BinaryOp::And => Prec::And,
            BinaryOp::Or => Prec::Or,
            BinaryOp::Then | BinaryOp::From => Prec::Recipe,
        }
    }

    pub fn assoc(self) -> Assoc {
        match self.prec() {
            Prec::Pow => Assoc::Right,
            Prec::Compare => Assoc::None,
            _ => Assoc::Left,
        }
    }
}

impl UnaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            UnaryOp::Neg => "-",
            UnaryOp::Not => "not",
        }
    }

    pub fn prec(self) -> Prec {
        match self {
            UnaryOp::Neg => Prec::Neg,
            UnaryOp::Not => Prec::Not,
        }
    }
}

impl Expr {
    /// The precedence of the expression's outermost construct, for parenthesising.
    pub fn prec(&self) -> Prec {
        match &self.kind {
            ExprKind::Unary { op, .. } => op.prec(),
            ExprKind::Binary { op, .. } => op.prec(),
            // `if c { a } else { b }` ends at its `}`, so it is an operand like a call.
            _ => Prec::Postfix,
        }
    }
}

impl Type {
    /// `i32[B, T]`, `int?`, `([B, T], [])`, with dim expressions printed by `expr`.
    pub fn render(&self, expr: &dyn Fn(&Expr) -> String) -> String {
        let mut s = match &self.kind {
            TypeKind::Named(n) => n.name.clone(),
            TypeKind::Tensor { dtype, dims } => {
                let dims: Vec<String> = dims
                    .iter()
                    .map(|d| match d {
                        Dim::Expr(e) => expr(e),
                        Dim::Ellipsis(_) => "...".to_string(),
                    })
                    .collect();
                format!("{}[{}]", dtype.as_ref().map_or("", |d| d.name.as_str()), dims.join(", "))
            }
            TypeKind::Tuple(ts) => format!("({})", ts.iter().map(|t| t.render(expr)).collect::<Vec<_>>().join(", ")),
        };
        if self.optional {
            s.push('?');
        }
        s
    }
}

impl Item {
    /// The item's own name, where it has one.
    pub fn name(&self) -> Option<&Ident> {
        match &self.kind {
            ItemKind::Use(_) => None,
            ItemKind::Const(c) => Some(&c.name),
            ItemKind::Enum(e) => Some(&e.name),
            ItemKind::Block(b) => Some(&b.name),
            ItemKind::Recipe(r) => Some(&r.name),
        }
    }
}
