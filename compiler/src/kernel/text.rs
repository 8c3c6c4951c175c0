//! Kernel IR → its text form (`modelc emit --stage kernel`, snapshots), which `parse`
//! reads back: `dim` lines, `buffer` declarations, then each kernel with its scope and
//! body (`loop` nests with indented statements, `gemm`, `call`), then `return` and
//! `update` lines. Floats print in a form that parses to the same bits; a symbolic size
//! inside an index is written in braces (`{B*T}`).

use super::*;
use std::fmt::{self, Write};

impl fmt::Display for KernelProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for def in &self.dim_defs {
            writeln!(f, "dim {def}")?;
        }
        for (i, b) in self.buffers.iter().enumerate() {
            let dims: Vec<String> = b.shape.iter().map(|d| d.to_string()).collect();
            write!(f, "buffer b{i}: {}[{}]", b.dtype.name(), dims.join(", "))?;
            match &b.kind {
                BufferKind::Input(n) => writeln!(f, " input {n:?}")?,
                BufferKind::Param(n) => writeln!(f, " param {n:?}")?,
                BufferKind::Temp => writeln!(f)?,
            }
        }
        for k in &self.kernels {
            let mut out = String::new();
            kernel(&mut out, k)?;
            f.write_str(&out)?;
        }
        for (name, b) in &self.returns {
            writeln!(f, "return {name} = b{}", b.0)?;
        }
        for (name, b) in &self.updates {
            writeln!(f, "update {name} = b{}", b.0)?;
        }
        Ok(())
    }
}

fn kernel(out: &mut String, k: &Kernel) -> fmt::Result {
    writeln!(out, "kernel {} {:?}", k.name, k.scope)?;
    match &k.body {
        KernelBody::Loops(nests) => {
            for n in nests {
                writeln!(out, "  loop {} {{", loops(&n.parallel))?;
                stmts(out, &n.body, 2)?;
                writeln!(out, "  }}")?;
            }
        }
        KernelBody::Call(Call::Gemm(g)) => {
            let vars: Vec<String> = g.vars.iter().map(|v| v.map_or("_".to_string(), |v| format!("i{}", v.0))).collect();
            writeln!(
                out,
                "  gemm {} batch [{}] m {} n {} k {} a {} b {} at {} acc t{} {{",
                g.dtype.name(),
                dims(&g.batch),
                g.m,
                g.n,
                g.k,
                view(&g.a),
                view(&g.b),
                vars.join(", "),
                g.acc.0
            )?;
            stmts(out, &g.epilogue, 2)?;
            writeln!(out, "  }}")?;
        }
        KernelBody::Call(Call::Routine { routine, args, out: o }) => {
            let args: Vec<String> = args.iter().map(|b| format!("b{}", b.0)).collect();
            writeln!(out, "  call {}{} ({}) -> b{}", routine.name(), attrs(routine), args.join(", "), o.0)?;
        }
    }
    Ok(())
}

fn dims(ds: &[Dim]) -> String {
    ds.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn view(v: &View) -> String {
    format!(
        "b{}(offset {}, batch [{}], rows {}, cols {})",
        v.buf.0,
        v.offset,
        dims(&v.batch_strides),
        v.row_stride,
        v.col_stride
    )
}

pub(super) fn attrs(r: &Routine) -> String {
    match r {
        Routine::Attention { causal, window, softcap, scale, has_bias }
        | Routine::AttentionGrad { causal, window, softcap, scale, has_bias, .. } => {
            let mut s = match r {
                Routine::AttentionGrad { wrt, .. } => {
                    format!(" wrt={}", crate::graph::op::ATTENTION_ARGS.get(*wrt).unwrap_or(&"?"))
                }
                _ => String::new(),
            };
            s.push_str(&format!(" causal={causal} scale={scale:?} bias={has_bias}"));
            if let Some(w) = window {
                s.push_str(&format!(" window={w}"));
            }
            if let Some(c) = softcap {
                s.push_str(&format!(" softcap={c:?}"));
            }
            s
        }
        Routine::ScatterAdd { axis } | Routine::Cumsum { axis } => format!(" axis={axis}"),
        Routine::TopK { k, .. } | Routine::MoeBalance { k } | Routine::MoeLoad { k } | Routine::MoeOverflow { k } => {
            format!(" k={k}")
        }
        Routine::Lstm { reverse } => format!(" reverse={reverse}"),
        Routine::MoeRoute { k, capacity } => format!(" k={k} capacity={{{capacity}}}"),
        Routine::MoeDispatch | Routine::MoeCombine | Routine::MoeZLoss => String::new(),
    }
}

fn loops(vars: &[(Var, Dim)]) -> String {
    vars.iter().map(|(v, d)| format!("i{} < {d}", v.0)).collect::<Vec<_>>().join(", ")
}

fn stmts(out: &mut String, body: &[Stmt], depth: usize) -> fmt::Result {
    let pad = "  ".repeat(depth);
    for s in body {
        match s {
            Stmt::Let { temp, dtype, value } => writeln!(out, "{pad}t{}: {} = {}", temp.0, dtype.name(), expr(value))?,
            Stmt::Reduce { temp, dtype, combine, over, body, value } => {
                writeln!(out, "{pad}t{}: {} = {} {} {{", temp.0, dtype.name(), combine.name(), loops(over))?;
                stmts(out, body, depth + 1)?;
                writeln!(out, "{pad}}} -> t{}", value.0)?;
            }
            Stmt::For { over, body } => {
                writeln!(out, "{pad}for {} {{", loops(over))?;
                stmts(out, body, depth + 1)?;
                writeln!(out, "{pad}}}")?;
            }
            Stmt::Store { buf, index: idx, value } => {
                writeln!(out, "{pad}store b{}[{}] = t{}", buf.0, indices(idx), value.0)?
            }
            Stmt::Check { value, below, what } => writeln!(out, "{pad}check t{} < {below} {what:?}", value.0)?,
        }
    }
    Ok(())
}

pub(super) fn float(x: f64) -> String {
    format!("{x:?}")
}

fn expr(e: &Expr) -> String {
    match e {
        Expr::Const(x) => format!("const {}", float(*x)),
        Expr::Load { buf, index: idx, default: None } => format!("load b{}[{}]", buf.0, indices(idx)),
        Expr::Load { buf, index: idx, default: Some(d) } => {
            format!("load b{}[{}] or {}", buf.0, indices(idx), float(*d))
        }
        Expr::Index(i) => format!("index {}", index(i)),
        Expr::Unary(u, x) => format!("{} t{}", u.name(), x.0),
        Expr::Binary(b, x, y) => format!("{} t{}, t{}", b.name(), x.0, y.0),
        Expr::Select(c, x, y) => format!("select t{}, t{}, t{}", c.0, x.0, y.0),
        Expr::Cast(to, x) => format!("cast {} t{}", to.name(), x.0),
        Expr::Random { normal, stream, counter } => {
            format!("{} {stream:#x} {}", if *normal { "normal" } else { "uniform" }, index(counter))
        }
        Expr::Training => "training".into(),
    }
}

fn indices(idx: &[Index]) -> String {
    idx.iter().map(index).collect::<Vec<_>>().join(", ")
}

fn size(d: &Dim) -> String {
    match d.as_constant() {
        Some(c) => c.to_string(),
        None => format!("{{{d}}}"),
    }
}

pub fn index(i: &Index) -> String {
    match i {
        Index::Var(v) => format!("i{}", v.0),
        Index::Const(c) => c.to_string(),
        Index::Dim(d) => size(d),
        Index::Temp(t) => format!("t{}", t.0),
        Index::Add(a, b) => format!("({} + {})", index(a), index(b)),
        Index::Mul(x, d) => format!("({} * {})", index(x), size(d)),
        Index::Div(x, d) => format!("({} / {})", index(x), size(d)),
        Index::Rem(x, d) => format!("({} % {})", index(x), size(d)),
    }
}

/// A program's one-line summary: kernels by kind, for reports.
pub fn summary(p: &KernelProgram) -> String {
    let (mut loops, mut gemms, mut calls) = (0, 0, 0);
    for k in &p.kernels {
        match &k.body {
            KernelBody::Loops(_) => loops += 1,
            KernelBody::Call(Call::Gemm(_)) => gemms += 1,
            KernelBody::Call(Call::Routine { .. }) => calls += 1,
        }
    }
    let mut s = String::new();
    let _ = write!(s, "{} kernels: {loops} loop nests, {gemms} GEMMs, {calls} library routines", p.kernels.len());
    s
}
