//! Corpus text → the batches a recipe's objective trains on: token-id inputs (in the
//! model's `forward` order) and targets, as host tensors. One function per objective; a
//! batch is a function of (seed, index), so data order survives a resume.

use crate::data::Corpus;
use crate::executable::HostTensor;
use crate::rng::Rng;

/// What the data pipeline makes of the corpus for the recipe's objective.
#[derive(Clone, Debug, PartialEq)]
pub enum Batches {
    /// Windows of `T + 1` tokens: inputs the first `T`, targets the last `T`.
    CausalLm,
    /// Windows of `T` tokens, masked; `dynamic` redraws the positions at every batch.
    Mlm { rate: f64, dynamic: bool, mask_id: u32 },
    /// Windows of `T` tokens with spans cut out: encoder input, decoder input, targets.
    SpanCorruption { noise: f64, mean_span: f64, first_sentinel: u32, sentinels: u32 },
}

impl Batches {
    /// The largest token id a batch can hold, for text whose largest is `text_max`: the
    /// mask or the sentinels the objective adds.
    pub fn max_id(&self, text_max: u32) -> u32 {
        match self {
            Batches::CausalLm => text_max,
            Batches::Mlm { mask_id, .. } => text_max.max(*mask_id),
            Batches::SpanCorruption { first_sentinel, sentinels, .. } => {
                text_max.max(first_sentinel.saturating_add(sentinels.saturating_sub(1)))
            }
        }
    }

    /// The tokens of text one sequence of length `t` reads: causal LM windows are one
    /// longer than the sequence (inputs and targets shifted by one).
    pub fn window(&self, t: usize) -> usize {
        match self {
            Batches::CausalLm => t.saturating_add(1),
            Batches::Mlm { .. } | Batches::SpanCorruption { .. } => t,
        }
    }

    /// The model's integer inputs (in `forward` order) and the targets `[B, T]` of batch
    /// number `index`. The corpus must hold at least `window(t)` tokens (checked by the
    /// driver, with the recipe's location, before any batch is made).
    pub fn batch(&self, corpus: &Corpus, b: usize, t: usize, seed: u64, index: u64) -> (Vec<HostTensor>, HostTensor) {
        let tensor = |rows: Vec<Vec<f64>>| HostTensor::new(vec![b, t], rows.into_iter().flatten().collect());
        match self {
            Batches::CausalLm => {
                let windows = corpus.batch(b, t + 1, seed, index);
                let inputs = windows.iter().map(|w| w[..t].iter().map(|&x| x as f64).collect()).collect();
                let targets = windows.iter().map(|w| w[1..].iter().map(|&x| x as f64).collect()).collect();
                (vec![tensor(inputs)], tensor(targets))
            }
            Batches::Mlm { rate, dynamic, mask_id } => {
                let windows = corpus.batch(b, t, seed, index);
                let stream = if *dynamic { format!("mlm/{index}") } else { "mlm".to_string() };
                let mut rng = Rng::for_name(seed, &stream);
                let (inputs, targets) = crate::data::mlm(&windows, *rate, *mask_id, &mut rng);
                let inputs = inputs.iter().map(|w| w.iter().map(|&x| x as f64).collect()).collect();
                let targets = targets.iter().map(|w| w.iter().map(|&x| x as f64).collect()).collect();
                (vec![tensor(inputs)], tensor(targets))
            }
            Batches::SpanCorruption { noise, mean_span, first_sentinel, sentinels } => {
                let windows = corpus.batch(b, t, seed, index);
                let mut rng = Rng::for_name(seed, &format!("spans/{index}"));
                let (mut src, mut dec, mut tgt) = (Vec::new(), Vec::new(), Vec::new());
                for w in &windows {
                    let (s, d, g) =
                        crate::data::span_corruption(w, *noise, *mean_span, *first_sentinel, *sentinels, &mut rng);
                    src.push(s.iter().map(|&x| x as f64).collect());
                    dec.push(d.iter().map(|&x| x as f64).collect());
                    tgt.push(g.iter().map(|&x| x as f64).collect());
                }
                (vec![tensor(src), tensor(dec)], tensor(tgt))
            }
        }
    }
}
