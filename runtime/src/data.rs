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

#[cfg(test)]
mod tests {
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
