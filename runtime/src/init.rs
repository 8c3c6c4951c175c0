//! Seeded, reproducible parameter initialisation. Each parameter draws from its own
//! stream, derived from the seed and its checkpoint name.

use crate::rng::Rng;

/// An initialiser, as a recipe or block declares it.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Constant(f64),
    Normal {
        std: f64,
    },
    Uniform {
        low: f64,
        high: f64,
    },
    /// Glorot: uniform in ±sqrt(6 / (fan_in + fan_out)).
    Xavier,
    /// He: normal with std sqrt(2 / fan_in).
    Kaiming,
    /// GPT-2's residual projections: normal with std / sqrt(2 · layers).
    ScaledNormal {
        std: f64,
        layers: f64,
    },
}

/// `(fan_in, fan_out)` of a weight stored `[.., in, out]`.
fn fans(shape: &[usize]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [.., i, o] => (*i as f64, *o as f64),
    }
}

/// The initial values of parameter `name` of `shape`.
pub fn init(init: &Init, name: &str, shape: &[usize], seed: u64) -> Vec<f64> {
    let n: usize = shape.iter().product();
    let mut rng = Rng::for_name(seed, name);
    let (fan_in, fan_out) = fans(shape);
    let mut normal = |std: f64| (0..n).map(|_| std * rng.normal()).collect::<Vec<f64>>();
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Constant(v) => vec![*v; n],
        Init::Normal { std } => normal(*std),
        Init::Kaiming => normal((2.0 / fan_in).sqrt()),
        Init::ScaledNormal { std, layers } => normal(std / (2.0 * layers).sqrt()),
        Init::Uniform { low, high } => (0..n).map(|_| low + (high - low) * rng.uniform()).collect(),
        Init::Xavier => {
            let a = (6.0 / (fan_in + fan_out)).sqrt();
            (0..n).map(|_| -a + 2.0 * a * rng.uniform()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_per_name_and_with_the_declared_statistics() {
        let a = init(&Init::Normal { std: 0.02 }, "w", &[64, 64], 7);
        assert_eq!(a, init(&Init::Normal { std: 0.02 }, "w", &[64, 64], 7));
        assert_ne!(a, init(&Init::Normal { std: 0.02 }, "v", &[64, 64], 7));
        assert_ne!(a, init(&Init::Normal { std: 0.02 }, "w", &[64, 64], 8));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let std = (a.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / a.len() as f64).sqrt();
        assert!(mean.abs() < 0.002 && (std - 0.02).abs() < 0.002, "mean {mean} std {std}");
        let x = init(&Init::Xavier, "x", &[100, 300], 1);
        let bound = (6.0f64 / 400.0).sqrt();
        assert!(x.iter().all(|v| v.abs() <= bound) && x.iter().any(|v| v.abs() > bound * 0.9));
        assert_eq!(init(&Init::Ones, "g", &[3], 0), vec![1.0; 3]);
    }
}
