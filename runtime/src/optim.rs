//! Optimizers over named parameter buffers: SGD (momentum, Nesterov), Adam, AdamW
//! (decoupled weight decay, `no_decay` groups), Adafactor (factored second moment: row and
//! column statistics for matrices, no momentum). State is f32-sized in spirit but kept in
//! f64 here, beside the reference interpreter.

use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Sgd {
        momentum: f64,
        nesterov: bool,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
    /// Adam with decoupled weight decay.
    AdamW {
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
    Adafactor {
        beta2: f64,
        eps: f64,
    },
}

/// The names of the bias-correction inputs of a compiled optimizer update
/// (`1 - beta^t`, computed on the host from the step count).
pub const BIAS1: &str = "bias1";
pub const BIAS2: &str = "bias2";

impl Kind {
    /// The per-step scalar inputs of the update at optimizer step `t` (1-based), as the
    /// host computes them: Adam's and Adafactor's bias corrections.
    pub fn step_inputs(&self, t: u64) -> impl Iterator<Item = (&'static str, f64)> {
        let t = t as f64;
        let (b1, b2) = match *self {
            Kind::Sgd { .. } => (None, None),
            Kind::Adam { beta1, beta2, .. } | Kind::AdamW { beta1, beta2, .. } => (Some(beta1), Some(beta2)),
            Kind::Adafactor { beta2, .. } => (None, Some(beta2)),
        };
        let one = |name, beta: Option<f64>| beta.map(|b: f64| (name, 1.0 - b.powf(t)));
        one(BIAS1, b1).into_iter().chain(one(BIAS2, b2))
    }

    /// The state the optimizer keeps for a parameter of `shape`: each buffer's prefix
    /// (`m`, `v`, `rows`, `cols`) and shape. Adafactor factors matrices (and stacks of
    /// them) into row and column statistics, flattened over the leading axes.
    pub fn state_of(&self, shape: &[usize]) -> Vec<(&'static str, Vec<usize>)> {
        match self {
            Kind::Sgd { .. } => vec![("m", shape.to_vec())],
            Kind::Adam { .. } | Kind::AdamW { .. } => vec![("m", shape.to_vec()), ("v", shape.to_vec())],
            Kind::Adafactor { .. } if shape.len() >= 2 => {
                let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                let mats: usize = shape[..shape.len() - 2].iter().product();
                vec![("rows", vec![mats * r]), ("cols", vec![mats * c])]
            }
            Kind::Adafactor { .. } => vec![("v", shape.to_vec())],
        }
    }
}

/// Whether parameter `name` is outside every `no_decay` group: no dot-separated part of
/// its name is one of the words.
pub fn decays(no_decay: &[String], name: &str) -> bool {
    !no_decay.iter().any(|w| name.split('.').any(|part| part == w))
}

#[derive(Clone, Debug)]
pub struct Optimizer {
    pub kind: Kind,
    pub weight_decay: f64,
    /// Parameters whose name contains one of these words get no weight decay.
    pub no_decay: Vec<String>,
    step: u64,
    /// First moment (or momentum buffer) and second moment, per parameter.
    m: HashMap<String, Vec<f64>>,
    v: HashMap<String, Vec<f64>>,
    /// Adafactor's row and column statistics of matrices.
    rows: HashMap<String, Vec<f64>>,
    cols: HashMap<String, Vec<f64>>,
}

impl Optimizer {
    pub fn new(kind: Kind, weight_decay: f64, no_decay: Vec<String>) -> Optimizer {
        Optimizer {
            kind,
            weight_decay,
            no_decay,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
            rows: HashMap::new(),
            cols: HashMap::new(),
        }
    }

    fn decays(&self, name: &str) -> bool {
        self.weight_decay > 0.0 && decays(&self.no_decay, name)
    }

    /// The state to checkpoint: the step and every buffer, named `m.NAME`, `v.NAME`,
    /// `rows.NAME`, `cols.NAME`.
    pub fn state(&self) -> (u64, crate::checkpoint::Tensors) {
        let mut out = crate::checkpoint::Tensors::new();
        for (prefix, map) in [("m", &self.m), ("v", &self.v), ("rows", &self.rows), ("cols", &self.cols)] {
            for (name, data) in map {
                out.insert(format!("{prefix}.{name}"), (vec![data.len()], data.clone()));
            }
        }
        (self.step, out)
    }

    /// Restores what `state` saved.
    pub fn restore(&mut self, step: u64, state: &crate::checkpoint::Tensors) {
        self.step = step;
        for (key, (_, data)) in state {
            let Some((prefix, name)) = key.split_once('.') else { continue };
            let map = match prefix {
                "m" => &mut self.m,
                "v" => &mut self.v,
                "rows" => &mut self.rows,
                "cols" => &mut self.cols,
                _ => continue,
            };
            map.insert(name.to_string(), data.clone());
        }
    }

    /// Rounds every buffer to f32, the precision of the state that checkpoints keep,
    /// so that a resumed run continues exactly as an uninterrupted one.
    pub fn round_state_f32(&mut self) {
        for map in [&mut self.m, &mut self.v, &mut self.rows, &mut self.cols] {
            map.values_mut().flatten().for_each(|x| *x = *x as f32 as f64);
        }
    }

    /// One update of every parameter from its gradient at learning rate `lr`.
    pub fn step(
        &mut self,
        params: &mut HashMap<String, (Vec<usize>, Vec<f64>)>,
        grads: &HashMap<String, Vec<f64>>,
        lr: f64,
    ) {
        self.step += 1;
        let t = self.step as f64;
        let mut names: Vec<&String> = grads.keys().collect();
        names.sort();
        for name in names {
            let g = &grads[name];
            let Some((shape, p)) = params.get_mut(name) else { continue };
            let decay = self.decays(name);
            match self.kind.clone() {
                Kind::Sgd { momentum, nesterov } => {
                    let buf = self.m.entry(name.clone()).or_insert_with(|| vec![0.0; g.len()]);
                    for i in 0..g.len() {
                        let gi = g[i] + if decay { self.weight_decay * p[i] } else { 0.0 };
                        buf[i] = momentum * buf[i] + gi;
                        let d = if nesterov {
                            gi + momentum * buf[i]
                        } else if momentum > 0.0 {
                            buf[i]
                        } else {
                            gi
                        };
                        p[i] -= lr * d;
                    }
                }
                Kind::Adam { beta1, beta2, eps } | Kind::AdamW { beta1, beta2, eps } => {
                    let decoupled = matches!(self.kind, Kind::AdamW { .. });
                    let m = self.m.entry(name.clone()).or_insert_with(|| vec![0.0; g.len()]);
                    let v = self.v.entry(name.clone()).or_insert_with(|| vec![0.0; g.len()]);
                    let (c1, c2) = (1.0 - beta1.powf(t), 1.0 - beta2.powf(t));
                    for i in 0..g.len() {
                        let gi = g[i] + if decay && !decoupled { self.weight_decay * p[i] } else { 0.0 };
                        m[i] = beta1 * m[i] + (1.0 - beta1) * gi;
                        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
                        let update = (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                        if decay && decoupled {
                            p[i] -= lr * self.weight_decay * p[i];
                        }
                        p[i] -= lr * update;
                    }
                }
                Kind::Adafactor { beta2, eps } => {
                    let c2 = 1.0 - beta2.powf(t);
                    if shape.len() >= 2 {
                        let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                        let mats = g.len() / (r * c).max(1);
                        let rows = self.rows.entry(name.clone()).or_insert_with(|| vec![0.0; mats * r]);
                        let cols = self.cols.entry(name.clone()).or_insert_with(|| vec![0.0; mats * c]);
                        for mi in 0..mats {
                            let base = mi * r * c;
                            for i in 0..r {
                                let mean = (0..c).map(|j| g[base + i * c + j].powi(2) + eps).sum::<f64>() / c as f64;
                                rows[mi * r + i] = beta2 * rows[mi * r + i] + (1.0 - beta2) * mean;
                            }
                            for j in 0..c {
                                let mean = (0..r).map(|i| g[base + i * c + j].powi(2) + eps).sum::<f64>() / r as f64;
                                cols[mi * c + j] = beta2 * cols[mi * c + j] + (1.0 - beta2) * mean;
                            }
                            let row_mean = rows[mi * r..(mi + 1) * r].iter().sum::<f64>() / r as f64;
                            for i in 0..r {
                                for j in 0..c {
                                    // The rank-1 estimate of the second moment.
                                    let vhat =
                                        rows[mi * r + i] * cols[mi * c + j] / row_mean.max(f64::MIN_POSITIVE) / c2;
                                    let k = base + i * c + j;
                                    if decay {
                                        p[k] -= lr * self.weight_decay * p[k];
                                    }
                                    p[k] -= lr * g[k] / vhat.sqrt().max(1e-30);
                                }
                            }
                        }
                    } else {
                        let v = self.v.entry(name.clone()).or_insert_with(|| vec![0.0; g.len()]);
                        for i in 0..g.len() {
                            v[i] = beta2 * v[i] + (1.0 - beta2) * (g[i] * g[i] + eps);
                            if decay {
                                p[i] -= lr * self.weight_decay * p[i];
                            }
                            p[i] -= lr * g[i] / (v[i] / c2).sqrt();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(kind: Kind, decay: f64, p0: f64, g: f64, lr: f64) -> f64 {
        let mut params = HashMap::from([("w".to_string(), (vec![1], vec![p0]))]);
        let grads = HashMap::from([("w".to_string(), vec![g])]);
        let mut opt = Optimizer::new(kind, decay, Vec::new());
        opt.step(&mut params, &grads, lr);
        params["w"].1[0]
    }

    #[test]
    fn first_steps_match_the_definitions() {
        // SGD: p - lr g.
        assert_eq!(one(Kind::Sgd { momentum: 0.0, nesterov: false }, 0.0, 1.0, 0.5, 0.1), 1.0 - 0.05);
        // Adam's first step moves by lr · g / (|g| + eps) ≈ lr · sign(g).
        let p = one(Kind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 0.0, 1.0, 0.5, 0.1);
        assert!((p - 0.9).abs() < 1e-6, "{p}");
        // AdamW decays the weight itself: (1 - lr wd) p - lr · sign(g).
        let p = one(Kind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 0.1, 1.0, 0.5, 0.1);
        assert!((p - (1.0 - 0.01 - 0.1)).abs() < 1e-6, "{p}");
    }

    #[test]
    fn no_decay_groups_and_adafactor_on_a_matrix() {
        let mut params = HashMap::from([
            ("norm.weight".to_string(), (vec![1], vec![1.0])),
            ("wq.weight".to_string(), (vec![1], vec![1.0])),
        ]);
        let grads = HashMap::from([("norm.weight".to_string(), vec![0.0]), ("wq.weight".to_string(), vec![0.0])]);
        let mut opt = Optimizer::new(Kind::AdamW { beta1: 0.9, beta2: 0.95, eps: 1e-8 }, 0.1, vec!["norm".into()]);
        opt.step(&mut params, &grads, 0.1);
        assert_eq!(params["norm.weight"].1[0], 1.0);
        assert!((params["wq.weight"].1[0] - 0.99).abs() < 1e-12);
        // Adafactor keeps r + c statistics for an r×c matrix and moves every entry.
        let mut params = HashMap::from([("w".to_string(), (vec![2, 3], vec![1.0; 6]))]);
        let grads = HashMap::from([("w".to_string(), vec![0.1, -0.2, 0.3, -0.4, 0.5, -0.6])]);
        let mut opt = Optimizer::new(Kind::Adafactor { beta2: 0.999, eps: 1e-30 }, 0.0, Vec::new());
        opt.step(&mut params, &grads, 0.01);
        assert_eq!(opt.rows["w"].len() + opt.cols["w"].len(), 5);
        assert!(params["w"].1.iter().zip(&grads["w"]).all(|(p, g)| (*p < 1.0) == (*g > 0.0)));
    }
}
