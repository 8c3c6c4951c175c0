//! Training text and the byte tokenizer. The built-in corpus is shipped inside the binary
//! so that `modelc run` and `train` need no download; `--data PATH` will read a user's
//! file through the same `Corpus`.

use crate::rng::Rng;

/// The project's own documentation (README, language reference, architecture) as of
/// 2026-11-29: English prose and code, licensed with the project. A frozen copy, so that
/// editing the docs never changes a training run's numbers.
pub const BUILTIN: &str = include_str!("../data/builtin.txt");

/// Token ids of the byte tokenizer: one per byte, vocabulary 256.
pub fn bytes(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

pub struct Corpus {
    pub tokens: Vec<u32>,
}

impl Corpus {
    pub fn builtin() -> Corpus {
        Corpus { tokens: bytes(BUILTIN) }
    }

    /// A user's text file (`--data PATH`), through the byte tokenizer.
    pub fn from_file(path: &std::path::Path) -> Result<Corpus, String> {
        let raw = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if raw.len() < 2 {
            return Err(format!("`{}` has too little text to train on", path.display()));
        }
        Ok(Corpus { tokens: raw.into_iter().map(u32::from).collect() })
    }

    /// `batch` windows of `len` consecutive tokens, at positions drawn from `(seed, step)`:
    /// the same step of the same seed always reads the same text.
    pub fn batch(&self, batch: usize, len: usize, seed: u64, step: u64) -> Vec<Vec<u32>> {
        let mut rng = Rng::for_name(seed, &format!("data/{step}"));
        let span = self.tokens.len().saturating_sub(len) as u64 + 1;
        (0..batch)
            .map(|_| {
                let at = rng.below(span) as usize;
                self.tokens[at..(at + len).min(self.tokens.len())].to_vec()
            })
            .collect()
    }
}

/// BERT/RoBERTa masking of byte windows: `rate` of the positions are chosen; of those,
/// 80% become `mask_id`, 10% a random byte and 10% stay, and only chosen positions have a
/// target (`IGNORE` elsewhere). Bytes are never special, so every position may be chosen.
pub fn mlm(windows: &[Vec<u32>], rate: f64, mask_id: u32, rng: &mut Rng) -> (Vec<Vec<u32>>, Vec<Vec<i64>>) {
    let mut inputs = windows.to_vec();
    let mut targets = vec![Vec::new(); windows.len()];
    for (w, (input, target)) in windows.iter().zip(inputs.iter_mut().zip(targets.iter_mut())) {
        for (i, &tok) in w.iter().enumerate() {
            if rng.uniform() >= rate {
                target.push(crate::tokens::IGNORE);
                continue;
            }
            target.push(tok as i64);
            let r = rng.uniform();
            if r < 0.8 {
                input[i] = mask_id;
            } else if r < 0.9 {
                input[i] = rng.below(crate::tokens::BYTES as u64) as u32;
            }
        }
    }
    (inputs, targets)
}

/// `m` positive lengths summing to `total`, cut at random.
fn segment(total: usize, m: usize, rng: &mut Rng) -> Vec<usize> {
    let m = m.clamp(1, total.max(1));
    let mut cuts: Vec<usize> = Vec::new();
    while cuts.len() < m - 1 {
        let c = 1 + rng.below(total.saturating_sub(1).max(1) as u64) as usize;
        if !cuts.contains(&c) {
            cuts.push(c);
        }
    }
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(m);
    let mut prev = 0;
    for c in cuts.into_iter().chain([total]) {
        out.push(c - prev);
        prev = c;
    }
    out
}

/// T5 span corruption of one window: `noise` of the tokens, in spans of mean length
/// `mean_span`, are cut out. The encoder input keeps the rest with sentinel `i` where span
/// `i` was; the target is every sentinel followed by its span. Returns (encoder input,
/// decoder input = target shifted right after a start token 0, target), each padded to the
/// window's length (inputs with 0, targets with `IGNORE`).
pub fn span_corruption(
    window: &[u32],
    noise: f64,
    mean_span: f64,
    first_sentinel: u32,
    sentinels: u32,
    rng: &mut Rng,
) -> (Vec<u32>, Vec<u32>, Vec<i64>) {
    let len = window.len();
    let n_noise = ((len as f64 * noise).round() as usize).clamp(1, len.saturating_sub(1).max(1));
    let spans = ((n_noise as f64 / mean_span).round() as usize).clamp(1, (sentinels as usize).min(n_noise));
    let noise_lens = segment(n_noise, spans, rng);
    let keep_lens = segment(len - n_noise, spans, rng);
    let (mut src, mut tgt) = (Vec::with_capacity(len), Vec::with_capacity(len));
    let mut at = 0;
    for (i, (&k, &n)) in keep_lens.iter().zip(&noise_lens).enumerate() {
        src.extend_from_slice(&window[at..at + k]);
        at += k;
        let sentinel = first_sentinel + i as u32;
        src.push(sentinel);
        tgt.push(sentinel);
        tgt.extend_from_slice(&window[at..at + n]);
        at += n;
    }
    src.extend_from_slice(&window[at..]);
    src.truncate(len);
    tgt.truncate(len);
    let mut dec = vec![crate::tokens::DECODER_START];
    dec.extend_from_slice(&tgt[..tgt.len().saturating_sub(1)]);
    let mut targets: Vec<i64> = tgt.iter().map(|&t| t as i64).collect();
    src.resize(len, 0);
    dec.resize(len, 0);
    targets.resize(len, crate::tokens::IGNORE);
    (src, dec, targets)
}

#[cfg(test)]
mod tests {
    #[test]
    fn span_corruption_keeps_every_token_once_and_marks_spans_with_sentinels() {
        let window: Vec<u32> = (0..64u32).collect();
        let mut rng = Rng::new(5);
        let (src, dec, tgt) = span_corruption(&window, 0.15, 3.0, 256, 32, &mut rng);
        assert_eq!((src.len(), dec.len(), tgt.len()), (64, 64, 64));
        // Every original token is in exactly one of the two streams.
        let mut seen: Vec<u32> = src.iter().copied().filter(|&t| t < 256 && t != 0).collect();
        seen.extend(tgt.iter().filter(|&&t| (1..256).contains(&t)).map(|&t| t as u32));
        seen.sort_unstable();
        assert_eq!(seen, (1..64).collect::<Vec<_>>());
        // The sentinels come in order in both, and the decoder input is the target shifted.
        let sents: Vec<u32> = src.iter().copied().filter(|&t| t >= 256).collect();
        assert!(!sents.is_empty() && sents.iter().enumerate().all(|(i, &s)| s == 256 + i as u32));
        assert_eq!(dec[0], 0);
        assert_eq!(dec[1] as i64, tgt[0]);
    }

    #[test]
    fn mlm_masks_the_declared_shares() {
        let windows = vec![(0..200u32).map(|i| i % 256).collect::<Vec<_>>(); 50];
        let mut rng = Rng::new(3);
        let (inputs, targets) = mlm(&windows, 0.15, crate::tokens::MASK, &mut rng);
        let chosen: usize = targets.iter().flatten().filter(|&&t| t != crate::tokens::IGNORE).count();
        let masked: usize = inputs.iter().flatten().filter(|&&t| t == crate::tokens::MASK).count();
        let n = 50.0 * 200.0;
        assert!((chosen as f64 / n - 0.15).abs() < 0.01, "{chosen}");
        assert!((masked as f64 / chosen as f64 - 0.8).abs() < 0.03, "{masked}");
        // Unchosen positions keep their byte and have no target.
        for ((w, i), t) in windows.iter().flatten().zip(inputs.iter().flatten()).zip(targets.iter().flatten()) {
            if *t == crate::tokens::IGNORE {
                assert_eq!(w, i);
            } else {
                assert_eq!(*t, *w as i64);
            }
        }
    }

    use super::*;

    #[test]
    fn batches_are_reproducible_windows_of_the_corpus() {
        let c = Corpus::builtin();
        assert!(c.tokens.len() > 20_000, "the built-in corpus is {} bytes", c.tokens.len());
        let a = c.batch(4, 65, 1, 0);
        assert_eq!(a, c.batch(4, 65, 1, 0));
        assert_ne!(a, c.batch(4, 65, 1, 1));
        assert!(a.iter().all(|w| w.len() == 65));
        let text = String::from_utf8_lossy(&c.tokens.iter().map(|&t| t as u8).collect::<Vec<_>>()).into_owned();
        let w: Vec<u8> = a[0].iter().map(|&t| t as u8).collect();
        assert!(text.contains(&*String::from_utf8_lossy(&w)));
    }
}
