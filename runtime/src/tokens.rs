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
/// Sequence classification and separation (`[CLS] a [SEP] b [SEP]`), after `[MASK]`.
pub const CLS: u32 = BYTES + 1;
pub const SEP: u32 = BYTES + 2;
/// Padding for inputs. Span corruption pads with byte 0 and starts the decoder with it,
/// as T5 does with its pad id.
pub const PAD: u32 = BYTES + 3;
pub const DECODER_START: u32 = 0;
/// The target that a loss ignores (`cross_entropy(ignore: -100)`).
pub const IGNORE: i64 = -100;
