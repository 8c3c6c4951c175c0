//! A `matmul` and what its group fused around it → a GEMM call: each operand's movement
//! (transposes, broadcast batch dims, reshapes that keep it affine, slices) folded into a
//! strided view of a buffer, and the elementwise consumers (bias, activation, residual,
//! scale) into its epilogue, evaluated at each output element with the product as `acc`.

use super::index;
use super::nest::Nest;
use crate::graph::Graph;
use crate::kernel::{BufId, Dim, Gemm, Index, Stmt, Var, View};
use std::collections::{HashMap, HashSet};

pub fn lower(
    g: &Graph,
    m: usize,
    members: &HashSet<usize>,
    buffers: &HashMap<usize, BufId>,
    outputs: &[usize],
) -> Result<Gemm, String> {
    let node = &g.nodes[m];
    let out = node.ty.shape.clone();
    let rank = out.len();
    let (a, b) = (node.args[0].0 as usize, node.args[1].0 as usize);
    let (sa, sb) = (g.nodes[a].ty.shape.clone(), g.nodes[b].ty.shape.clone());
    let k = sa[sa.len() - 1].clone();
    let batch: Vec<Dim> = out[..rank - 2].to_vec();
    for &o in outputs {
        if g.nodes[o].ty.shape != out {
            return Err(format!("the epilogue's output %{o} is not shaped like the product"));
        }
    }
    // The epilogue: the members evaluated at the output index, the product bound to acc.
    let mut epi = Nest::new(g, members, buffers);
    let idx = epi.anchor(&out);
    let vars = epi.anchor_vars();
    let acc = epi.bind_acc(m, idx.clone());
    for &o in outputs {
        let buf = *buffers.get(&o).ok_or_else(|| format!("%{o} has no buffer"))?;
        epi.store(o, buf, idx.clone(), idx.clone())?;
    }
    if epi.has_reductions() {
        return Err("a reduction in a GEMM's epilogue".into());
    }
    let body = epi.finish()?.body;
    // Run per output element: the loop over the output is the GEMM's own, and the
    // product's placeholder is defined by the GEMM itself.
    let mut epilogue: Vec<Stmt> = body
        .into_iter()
        .flat_map(|s| match s {
            Stmt::For { body, .. } => body,
            other => vec![other],
        })
        .collect();
    epilogue.retain(|s| !matches!(s, Stmt::Let { temp, .. } if *temp == acc));
    // Operands: each a single load at an index affine in (batch.., rows, cols); the
    // contraction variable is one no nest of this kernel uses.
    let p = Var(u32::MAX);
    let (i, j) = (vars[rank - 2], vars[rank - 1]);
    let operand = |arg: usize, shape: &[Dim], rows: Option<Var>, cols: Option<Var>| -> Result<View, String> {
        let mut nest = Nest::new(g, members, buffers);
        let mut at = index::broadcast(&shape[..shape.len() - 2], &batch, &idx[..rank - 2]);
        at.push(var_index(rows));
        at.push(var_index(cols));
        let t = nest.value(arg, at)?;
        let (buf, index) =
            nest.sole_load(t).ok_or_else(|| format!("operand %{arg} is computed, not a view of a buffer"))?;
        let owner = buffers.iter().find(|(_, b)| **b == buf).map(|(n, _)| *n).unwrap_or(arg);
        let lin = index::linear(&index, &g.nodes[owner].ty.shape);
        let (coefs, offset) = index::affine(&lin).ok_or_else(|| format!("operand %{arg} is not a strided view"))?;
        let coef = |v: Option<Var>| -> Dim {
            v.and_then(|v| coefs.iter().find(|(w, _)| *w == v.0).map(|(_, c)| c.clone())).unwrap_or(Dim::constant(0))
        };
        Ok(View {
            buf,
            offset,
            batch_strides: vars[..rank - 2].iter().map(|v| coef(*v)).collect(),
            row_stride: coef(rows),
            col_stride: coef(cols),
        })
    };
    let av = operand(a, &sa, i, Some(p))?;
    let bv = operand(b, &sb, Some(p), j)?;
    Ok(Gemm {
        dtype: node.ty.dtype,
        batch,
        m: out[rank - 2].clone(),
        n: out[rank - 1].clone(),
        k,
        a: av,
        b: bv,
        vars,
        acc,
        epilogue,
    })
}

fn var_index(v: Option<Var>) -> Index {
    v.map_or(Index::zero(), Index::Var)
}
