//! Training text and the byte tokenizer. The built-in corpus is shipped inside the binary
//! so that `modelc run` and `train` need no download; `--data PATH` will read a user's
//! file through the same `Corpus`.

use crate::rng::Rng;

/// The project's own documentation: English prose and code, licensed with the project.
pub const BUILTIN: &str = concat!(
    include_str!("../../README.md"),
    "\n",
    include_str!("../../docs/language.md"),
    "\n",
    include_str!("../../ARCHITECTURE.md"),
);

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

#[cfg(test)]
mod tests {
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
