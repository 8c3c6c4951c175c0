//! Special tokens, defined in one place. The byte tokenizer's ids 0..=255 are the bytes;
//! the special ids an objective needs come right after them, so a byte model's vocabulary
//! is 256 plus what its objective adds (`[MASK]` for MLM, the sentinels for span
//! corruption). A recipe may name other ids (`mlm(mask_id: ..)`).

/// Ids of the plain bytes: `0..BYTES`.
pub const BYTES: u32 = 256;
/// `[MASK]` for masked-language modelling: the first id past the bytes.
pub const MASK: u32 = BYTES;
/// The first sentinel of span corruption (`<extra_id_0>`); sentinel i is `FIRST_SENTINEL + i`.
pub const FIRST_SENTINEL: u32 = BYTES;
/// The target that a loss ignores (`cross_entropy(ignore: -100)`).
pub const IGNORE: i64 = -100;
