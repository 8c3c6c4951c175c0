//! The Kernel IR's invariants, checked after lowering (and by every backend before it
//! compiles): buffers exist and are indexed with one index per dim, inputs are never
//! written, each temp is defined once and before its use where its loop binds it, loop
//! variables are bound where they are read, GEMM views and routine operands name buffers,
//! and returns and updates name buffers (an update a persistent one's shape).

use super::*;
use std::collections::HashSet;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct VerifyError {
    pub kernel: Option<String>,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kernel {
            Some(k) => write!(f, "kernel {k}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

struct Scope {
    temps: HashSet<Temp>,
    vars: HashSet<Var>,
}

pub fn verify(p: &KernelProgram) -> Result<(), VerifyError> {
    let mut names = HashSet::new();
    for k in &p.kernels {
        let bad = |message: String| VerifyError { kernel: Some(k.name.clone()), message };
        if !names.insert(k.name.as_str()) {
            return Err(bad("the name is used twice".into()));
        }
        let mut defined = HashSet::new();
        match &k.body {
            KernelBody::Loops(nests) => {
                for n in nests {
                    // Temps and loop variables are each nest's own.
                    defined.clear();
                    let mut scope = Scope { temps: HashSet::new(), vars: HashSet::new() };
                    for (v, _) in &n.parallel {
                        if !scope.vars.insert(*v) {
                            return Err(bad(format!("i{} is bound twice", v.0)));
                        }
                    }
                    stmts(p, &n.body, &mut scope, &mut defined).map_err(bad)?;
                }
            }
            KernelBody::Call(Call::Gemm(g)) => {
                for v in [&g.a, &g.b] {
                    buffer(p, v.buf).map_err(&bad)?;
                    if v.batch_strides.len() != g.batch.len() {
                        return Err(bad(format!(
                            "view of b{} has {} batch strides for {} batch dims",
                            v.buf.0,
                            v.batch_strides.len(),
                            g.batch.len()
                        )));
                    }
                }
                if g.vars.len() != g.batch.len() + 2 {
                    return Err(bad(format!(
                        "{} output variables for {} output dims",
                        g.vars.len(),
                        g.batch.len() + 2
                    )));
                }
                let mut scope =
                    Scope { temps: HashSet::from([g.acc]), vars: g.vars.iter().flatten().copied().collect() };
                defined.insert(g.acc);
                stmts(p, &g.epilogue, &mut scope, &mut defined).map_err(&bad)?;
                if !has_store(&g.epilogue) {
                    return Err(bad("the epilogue stores nothing".into()));
                }
            }
            KernelBody::Call(Call::Routine { routine, args, out }) => {
                for b in args.iter().chain([out]) {
                    buffer(p, *b).map_err(&bad)?;
                }
                let want = match routine {
                    Routine::Attention { has_bias, .. } => 3 + usize::from(*has_bias),
                    Routine::AttentionGrad { has_bias, .. } => 4 + usize::from(*has_bias),
                    Routine::ScatterAdd { .. } => 3,
                    Routine::TopK { .. } | Routine::Cumsum { .. } | Routine::MoeRoute { .. } => 1,
                    Routine::MoeZLoss | Routine::MoeLoad { .. } => 1,
                    Routine::Lstm { .. } => 4,
                    Routine::MoeDispatch
                    | Routine::MoeCombine
                    | Routine::MoeBalance { .. }
                    | Routine::MoeOverflow { .. } => 2,
                };
                if args.len() != want {
                    return Err(bad(format!("`{}` takes {want} operands, given {}", routine.name(), args.len())));
                }
                writable(p, *out).map_err(&bad)?;
            }
        }
    }
    for (name, b) in &p.returns {
        buffer(p, *b).map_err(|m| VerifyError { kernel: None, message: format!("return `{name}`: {m}") })?;
    }
    for (name, b) in &p.updates {
        let buf = buffer(p, *b).map_err(|m| VerifyError { kernel: None, message: format!("update `{name}`: {m}") })?;
        let target = p.buffers.iter().find(|x| matches!(&x.kind, BufferKind::Param(n) if n == name));
        match target {
            None => {
                return Err(VerifyError {
                    kernel: None,
                    message: format!("update `{name}` names no persistent buffer"),
                })
            }
            Some(t) if t.shape != buf.shape => {
                return Err(VerifyError {
                    kernel: None,
                    message: format!("update `{name}` is shaped {:?}, the buffer {:?}", buf.shape, t.shape),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn has_store(body: &[Stmt]) -> bool {
    body.iter().any(|s| match s {
        Stmt::Store { .. } => true,
        Stmt::For { body, .. } | Stmt::Reduce { body, .. } => has_store(body),
        Stmt::Let { .. } | Stmt::Check { .. } => false,
    })
}

fn buffer(p: &KernelProgram, b: BufId) -> Result<&Buffer, String> {
    p.buffers.get(b.0 as usize).ok_or_else(|| format!("b{} is not a buffer", b.0))
}

fn writable(p: &KernelProgram, b: BufId) -> Result<(), String> {
    match &buffer(p, b)?.kind {
        BufferKind::Input(n) => Err(format!("b{} is the input `{n}`, which is never written", b.0)),
        BufferKind::Param(_) | BufferKind::Temp => Ok(()),
    }
}

fn index(i: &Index, scope: &Scope) -> Result<(), String> {
    let (mut vars, mut temps) = (Vec::new(), Vec::new());
    i.vars(&mut vars);
    i.temps(&mut temps);
    if let Some(v) = vars.iter().find(|v| !scope.vars.contains(v)) {
        return Err(format!("i{} is read where no loop binds it", v.0));
    }
    if let Some(t) = temps.iter().find(|t| !scope.temps.contains(t)) {
        return Err(format!("t{} is read before it is defined", t.0));
    }
    Ok(())
}

fn access(p: &KernelProgram, b: BufId, idx: &[Index], scope: &Scope) -> Result<(), String> {
    let buf = buffer(p, b)?;
    if idx.len() != buf.shape.len() {
        return Err(format!("b{} has {} dims, indexed with {}", b.0, buf.shape.len(), idx.len()));
    }
    idx.iter().try_for_each(|i| index(i, scope))
}

fn stmts(p: &KernelProgram, body: &[Stmt], scope: &mut Scope, defined: &mut HashSet<Temp>) -> Result<(), String> {
    let used = |t: &Temp, scope: &Scope| -> Result<(), String> {
        if scope.temps.contains(t) {
            Ok(())
        } else {
            Err(format!("t{} is read before it is defined", t.0))
        }
    };
    let define = |t: Temp, scope: &mut Scope, defined: &mut HashSet<Temp>| -> Result<(), String> {
        if !defined.insert(t) {
            return Err(format!("t{} is defined twice", t.0));
        }
        scope.temps.insert(t);
        Ok(())
    };
    for s in body {
        match s {
            Stmt::Let { temp, value, .. } => {
                match value {
                    Expr::Const(_) | Expr::Training => {}
                    Expr::Load { buf, index, .. } => access(p, *buf, index, scope)?,
                    Expr::Index(i) | Expr::Random { counter: i, .. } => index(i, scope)?,
                    Expr::Unary(_, x) | Expr::Cast(_, x) => used(x, scope)?,
                    Expr::Binary(_, x, y) => {
                        used(x, scope)?;
                        used(y, scope)?;
                    }
                    Expr::Select(c, x, y) => {
                        used(c, scope)?;
                        used(x, scope)?;
                        used(y, scope)?;
                    }
                }
                define(*temp, scope, defined)?;
            }
            Stmt::Reduce { temp, over, body, value, .. } => {
                let mut inner = Scope { temps: scope.temps.clone(), vars: scope.vars.clone() };
                for (v, _) in over {
                    if !inner.vars.insert(*v) {
                        return Err(format!("i{} is bound twice", v.0));
                    }
                }
                stmts(p, body, &mut inner, defined)?;
                used(value, &inner)?;
                define(*temp, scope, defined)?;
            }
            Stmt::For { over, body } => {
                let mut inner = Scope { temps: scope.temps.clone(), vars: scope.vars.clone() };
                for (v, _) in over {
                    if !inner.vars.insert(*v) {
                        return Err(format!("i{} is bound twice", v.0));
                    }
                }
                stmts(p, body, &mut inner, defined)?;
            }
            Stmt::Store { buf, index, value } => {
                access(p, *buf, index, scope)?;
                writable(p, *buf)?;
                used(value, scope)?;
            }
            Stmt::Check { value, .. } => used(value, scope)?,
        }
    }
    Ok(())
}
