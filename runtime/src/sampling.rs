//! Choosing the next token from a row of logits: repetition penalty, temperature (0 is
//! greedy), top-k, top-p (nucleus), then a draw from the seeded generator. Beam search
//! scores with `log_softmax` of the penalised logits.

use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (1: all).
    pub top_p: f64,
    /// CTRL's penalty (Keskar et al., 2019): a seen token's positive logit is divided by
    /// it, a negative one multiplied (1: none).
    pub repetition_penalty: f64,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0 }
    }
}

/// `logits` with the repetition penalty applied to every token of `history`.
pub fn penalised(logits: &[f64], history: &[u32], penalty: f64) -> Vec<f64> {
    let mut out = logits.to_vec();
    if penalty != 1.0 {
        let mut seen = vec![false; out.len()];
        for &id in history {
            if let Some(s) = seen.get_mut(id as usize) {
                *s = true;
            }
        }
        for (l, s) in out.iter_mut().zip(seen) {
            if s {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
    out
}

/// The index of the largest value (the first among equals).
pub fn argmax(values: &[f64]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// `log(softmax(values))`, stably.
pub fn log_softmax(values: &[f64]) -> Vec<f64> {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    values.iter().map(|v| v - lse).collect()
}

impl Sampling {
    /// The next token after `history` given the logits of the last position.
    pub fn pick(&self, logits: &[f64], history: &[u32], rng: &mut Rng) -> u32 {
        let logits = penalised(logits, history, self.repetition_penalty);
        if self.temperature <= 0.0 {
            return argmax(&logits);
        }
        // Candidates, most likely first (ties by id, so the order is deterministic).
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        let scaled: Vec<f64> = order.iter().map(|&i| logits[i] / self.temperature).collect();
        let probs: Vec<f64> = log_softmax(&scaled).into_iter().map(f64::exp).collect();
        let mut keep = probs.len();
        if self.top_p < 1.0 {
            let mut total = 0.0;
            for (n, p) in probs.iter().enumerate() {
                total += p;
                if total >= self.top_p {
                    keep = n + 1;
                    break;
                }
            }
        }
        let mass: f64 = probs[..keep].iter().sum();
        let mut u = rng.uniform() * mass;
        for (n, p) in probs[..keep].iter().enumerate() {
            if u < *p {
                return order[n] as u32;
            }
            u -= p;
        }
        order[keep - 1] as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_filters() {
        let logits = [1.0, 3.0, 2.0, -1.0];
        let mut rng = Rng::new(1);
        let greedy = Sampling { temperature: 0.0, ..Sampling::default() };
        assert_eq!(greedy.pick(&logits, &[], &mut rng), 1);
        // Penalising token 1 (3 / 2 = 1.5) makes token 2 the most likely.
        let penalised = Sampling { repetition_penalty: 2.0, ..greedy.clone() };
        assert_eq!(penalised.pick(&logits, &[1], &mut rng), 2);
        // top-k 1 and a tiny top-p are greedy whatever the draw.
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            assert_eq!(Sampling { top_k: 1, ..Sampling::default() }.pick(&logits, &[], &mut rng), 1);
            assert_eq!(Sampling { top_p: 0.01, ..Sampling::default() }.pick(&logits, &[], &mut rng), 1);
        }
        // top-k 2 never draws tokens 0 or 3.
        let mut rng = Rng::new(3);
        let k2 = Sampling { top_k: 2, ..Sampling::default() };
        let draws: Vec<u32> = (0..200).map(|_| k2.pick(&logits, &[], &mut rng)).collect();
        assert!(draws.iter().all(|&d| d == 1 || d == 2) && draws.contains(&2), "{draws:?}");
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // softmax([0, ln 3]) = [0.25, 0.75].
        let logits = [0.0, 3f64.ln()];
        let mut rng = Rng::new(42);
        let n = 20_000;
        let ones = (0..n).filter(|_| Sampling::default().pick(&logits, &[], &mut rng) == 1).count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "{share}");
    }
}
