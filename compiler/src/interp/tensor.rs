//! The reference interpreter's tensor: a dense row-major array of `f64`, whatever the
//! dtype (integers up to 2^53 are exact in `f64`). Slow and obvious on purpose: it is
//! the oracle that faster backends are compared with.

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    pub fn scalar(x: f64) -> Tensor {
        Tensor { shape: Vec::new(), data: vec![x] }
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Row-major strides.
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }
}

pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The broadcast shape of two shapes (NumPy rules); the shape rule already checked it.
/// A dim of 1 takes the other's size, so an empty dim (0) stays empty.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            if da == 1 {
                db
            } else {
                da
            }
        })
        .collect()
}

/// For each element of `out_shape`, the flat index into a tensor of `shape` broadcast
/// to it.
pub fn broadcast_index(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let n = out_shape.len();
    let src_strides = strides(shape);
    // A broadcast dim (size 1, or missing) contributes no offset.
    let eff: Vec<usize> = (0..n)
        .map(|i| {
            if i + shape.len() < n {
                0
            } else {
                let j = i + shape.len() - n;
                if shape[j] == 1 {
                    0
                } else {
                    src_strides[j]
                }
            }
        })
        .collect();
    let total: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; n];
    for _ in 0..total {
        out.push(idx.iter().zip(&eff).map(|(i, s)| i * s).sum());
        for d in (0..n).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// `out[i] = f(a[i], b[i])` with broadcasting.
pub fn zip(a: &Tensor, b: &Tensor, f: impl Fn(f64, f64) -> f64) -> Tensor {
    let shape = broadcast_shape(&a.shape, &b.shape);
    let (ia, ib) = (broadcast_index(&a.shape, &shape), broadcast_index(&b.shape, &shape));
    let data = ia.iter().zip(&ib).map(|(&i, &j)| f(a.data[i], b.data[j])).collect();
    Tensor::new(shape, data)
}

/// Copies `x` broadcast to `shape`.
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Tensor {
    let idx = broadcast_index(&x.shape, shape);
    Tensor::new(shape.to_vec(), idx.iter().map(|&i| x.data[i]).collect())
}

/// Moves axes: `out` axis `k` is `x` axis `perm[k]`.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let src = x.strides();
    let moved: Vec<usize> = perm.iter().map(|&p| src[p]).collect();
    let total = x.numel();
    let mut data = Vec::with_capacity(total);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..total {
        data.push(x.data[idx.iter().zip(&moved).map(|(i, s)| i * s).sum::<usize>()]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor::new(shape, data)
}

/// Splits `x` around `axis` into `(outer, len, inner)` for loops along one axis.
pub fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// Batched matrix product with broadcast batch dims (through `matrixmultiply`'s dgemm);
/// the shape rule checked the shapes.
pub fn matmul(a: &Tensor, b: &Tensor) -> Tensor {
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2]);
    let ia = broadcast_index(&a.shape[..ra - 2], &batch);
    let ib = broadcast_index(&b.shape[..rb - 2], &batch);
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let mut data = vec![0.0; shape.iter().product()];
    for (bi, (&pa, &pb)) in ia.iter().zip(&ib).enumerate() {
        let (a0, b0, c0) = (pa * m * k, pb * k * n, bi * m * n);
        if m == 0 || n == 0 || k == 0 {
            continue;
        }
        let (a, b, c) = (&a.data[a0..a0 + m * k], &b.data[b0..b0 + k * n], &mut data[c0..c0 + m * n]);
        // SAFETY: the slices hold exactly m×k, k×n and m×n row-major elements, and the
        // strides below describe that layout, so every access is in bounds.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
    Tensor::new(shape, data)
}
