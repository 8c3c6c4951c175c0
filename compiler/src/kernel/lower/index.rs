//! How an op reads its arguments, as index maps: an element of the output at `idx` (one
//! index expression per axis) → the element of each argument it reads. Broadcasting,
//! reshapes (through a linear index where dims do not line up), transposes and slices are
//! only index arithmetic, which is why movement ops never need a kernel of their own.

use crate::kernel::{Dim, Index};

/// The index into an argument of shape `arg` that broadcasting (NumPy, right-aligned)
/// reads for output index `idx` of shape `out`: a dim of 1 reads element 0.
pub fn broadcast(arg: &[Dim], out: &[Dim], idx: &[Index]) -> Vec<Index> {
    let skip = out.len() - arg.len().min(out.len());
    arg.iter()
        .enumerate()
        .map(|(k, d)| if d.as_constant() == Some(1) { Index::zero() } else { idx[skip + k].clone() })
        .collect()
}

/// Row-major strides of a shape, as dims.
pub fn strides(shape: &[Dim]) -> Vec<Dim> {
    let mut out = vec![Dim::constant(1); shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        out[k] = out[k + 1].mul(&shape[k + 1]);
    }
    out
}

/// The row-major linear position of `idx` in `shape`.
pub fn linear(idx: &[Index], shape: &[Dim]) -> Index {
    idx.iter().zip(strides(shape)).fold(Index::zero(), |acc, (i, s)| acc.plus(i.clone().times(&s)))
}

/// The index into the argument of shape `input` that a reshape to `output` reads at
/// `idx`: dims that line up at both ends map one to one; the rest go through a linear
/// position. The outermost input dim of that block is not wrapped (no `%`), so a position
/// outside the output (a guarded read under `concat` or `pad`) stays outside the input.
pub fn reshape(input: &[Dim], output: &[Dim], idx: &[Index]) -> Vec<Index> {
    let ones = |s: &[Dim]| s.iter().filter(|d| d.as_constant() != Some(1)).count();
    // Size-1 dims carry no index: drop them on both sides when that is all that differs.
    let (mut lead, mut tail) = (0, 0);
    while lead < input.len() && lead < output.len() && input[lead] == output[lead] {
        lead += 1;
    }
    while tail < input.len() - lead
        && tail < output.len() - lead
        && input[input.len() - 1 - tail] == output[output.len() - 1 - tail]
    {
        tail += 1;
    }
    let (in_mid, out_mid) = (&input[lead..input.len() - tail], &output[lead..output.len() - tail]);
    let idx_mid = &idx[lead..output.len() - tail];
    let mut mid: Vec<Index> = Vec::with_capacity(in_mid.len());
    if ones(in_mid) == 0 {
        mid.extend(in_mid.iter().map(|_| Index::zero()));
    } else {
        // Size-1 dims of the output read nothing; ignore them in the linear position.
        let live: Vec<(Index, Dim)> = idx_mid
            .iter()
            .zip(out_mid)
            .filter(|(_, d)| d.as_constant() != Some(1))
            .map(|(i, d)| (i.clone(), d.clone()))
            .collect();
        let (live_idx, live_dims): (Vec<Index>, Vec<Dim>) = live.into_iter().unzip();
        let in_live: Vec<usize> = (0..in_mid.len()).filter(|&k| in_mid[k].as_constant() != Some(1)).collect();
        let in_dims: Vec<Dim> = in_live.iter().map(|&k| in_mid[k].clone()).collect();
        let direct = live_dims == in_dims;
        let lin = linear(&live_idx, &live_dims);
        let st = strides(&in_dims);
        let mut by_live = Vec::with_capacity(in_live.len());
        for (j, d) in in_dims.iter().enumerate() {
            by_live.push(if direct {
                live_idx[j].clone()
            } else if j == 0 {
                lin.clone().over(&st[0])
            } else {
                lin.clone().over(&st[j]).modulo(d)
            });
        }
        let mut it = by_live.into_iter();
        for d in in_mid {
            mid.push(if d.as_constant() == Some(1) { Index::zero() } else { it.next().unwrap_or_else(Index::zero) });
        }
    }
    let mut out: Vec<Index> = idx[..lead].to_vec();
    out.extend(mid);
    out.extend(idx[output.len() - tail..].iter().cloned());
    out
}

/// `transpose(perm)`: output axis `k` is input axis `perm[k]`.
pub fn transpose(perm: &[usize], idx: &[Index]) -> Vec<Index> {
    let mut out = vec![Index::zero(); perm.len()];
    for (k, &p) in perm.iter().enumerate() {
        out[p] = idx[k].clone();
    }
    out
}

/// An index as `Σ coefficient · var + offset` (the strides of a GEMM operand), or `None`
/// when it is not affine in the loop variables (a division, a remainder, data).
pub fn affine(index: &Index) -> Option<(Vec<(u32, Dim)>, Dim)> {
    match index {
        Index::Var(v) => Some((vec![(v.0, Dim::constant(1))], Dim::constant(0))),
        Index::Const(c) => Some((Vec::new(), Dim::constant(*c))),
        Index::Dim(d) => Some((Vec::new(), d.clone())),
        Index::Temp(_) | Index::Div(..) | Index::Rem(..) => None,
        Index::Add(a, b) => {
            let (mut ca, oa) = affine(a)?;
            let (cb, ob) = affine(b)?;
            for (v, c) in cb {
                match ca.iter_mut().find(|(w, _)| *w == v) {
                    Some((_, x)) => *x = x.add(&c),
                    None => ca.push((v, c)),
                }
            }
            Some((ca, oa.add(&ob)))
        }
        Index::Mul(x, d) => {
            let (c, o) = affine(x)?;
            Some((c.into_iter().map(|(v, k)| (v, k.mul(d))).collect(), o.mul(d)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Var;

    fn v(n: u32) -> Index {
        Index::Var(Var(n))
    }

    #[test]
    fn reshapes_map_lined_up_dims_directly_and_the_rest_through_a_position() {
        let (b, t) = (Dim::symbol("B"), Dim::symbol("T"));
        let c = |n| Dim::constant(n);
        // [B, T, 64] -> [B, T, 4, 16]: B and T line up, 64 is split.
        let got =
            reshape(&[b.clone(), t.clone(), c(64)], &[b.clone(), t.clone(), c(4), c(16)], &[v(0), v(1), v(2), v(3)]);
        assert_eq!(got[..2], [v(0), v(1)]);
        assert_eq!(got[2], v(2).times(&c(16)).plus(v(3)));
        // [B, T] -> [B*T]: the linear position splits back.
        let bt = b.mul(&t);
        let got = reshape(&[b.clone(), t.clone()], &[bt], &[v(0)]);
        assert_eq!(got, vec![v(0).over(&t), v(0).modulo(&t)]);
        // Adding a unit axis reads the same element.
        assert_eq!(
            reshape(&[b.clone(), t.clone()], &[b.clone(), t.clone(), c(1)], &[v(0), v(1), v(2)]),
            vec![v(0), v(1)]
        );
        assert_eq!(transpose(&[0, 2, 1], &[v(0), v(1), v(2)]), vec![v(0), v(2), v(1)]);
        assert_eq!(broadcast(&[c(1), c(64)], &[b, t, c(64)], &[v(0), v(1), v(2)]), vec![Index::zero(), v(2)]);
    }
}
