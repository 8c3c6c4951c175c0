//! Text to token ids. The built-in byte tokenizer (one id per UTF-8 byte) needs no files;
//! real models bring their own: a Hugging Face `tokenizer.json`, or a WordPiece `vocab.txt`
//! with BERT's uncased pipeline. Loaded through the `tokenizers` crate, so the ids are the
//! ones the model was trained with.

use std::path::{Path, PathBuf};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Model, Tokenizer as HfTokenizer, TruncationParams};

pub enum Tokenizer {
    /// One id per byte, `0..256`.
    Bytes,
    Hf(Box<HfTokenizer>),
}

impl Tokenizer {
    /// A `tokenizer.json`, a WordPiece `vocab.txt`, or a directory holding either (the JSON
    /// is preferred). The file's own padding and truncation are dropped: batching pads
    /// explicitly, and truncation comes from `max_length` (or, for a sentence-transformers
    /// directory, its `sentence_bert_config.json`).
    pub fn load(path: &Path, max_length: Option<usize>) -> Result<Tokenizer, String> {
        let file = resolve(path)?;
        let mut tok = if file.extension().is_some_and(|e| e == "json") {
            HfTokenizer::from_file(&file).map_err(|e| format!("reading tokenizer `{}`: {e}", file.display()))?
        } else {
            wordpiece(&file)?
        };
        tok.with_padding(None);
        let max_length = max_length.or_else(|| sentence_max_length(&file));
        let truncation = max_length.map(|max_length| TruncationParams { max_length, ..Default::default() });
        tok.with_truncation(truncation).map_err(|e| format!("tokenizer truncation: {e}"))?;
        Ok(Tokenizer::Hf(Box::new(tok)))
    }

    /// The ids of `text`, with the tokenizer's special tokens (`[CLS] ... [SEP]`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf(t) => {
                t.encode(text, true).map(|e| e.get_ids().to_vec()).map_err(|e| format!("tokenizing {text:?}: {e}"))
            }
        }
    }

    /// The text of `ids` as bytes (special tokens skipped). Bytes are what streaming
    /// prints: a byte-level token may end inside a UTF-8 character.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>, String> {
        match self {
            Tokenizer::Bytes => Ok(ids.iter().map(|&i| i.min(255) as u8).collect()),
            Tokenizer::Hf(t) => t.decode(ids, true).map(String::into_bytes).map_err(|e| format!("decoding: {e}")),
        }
    }

    /// The end-of-sequence id that stops generation, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Bytes => None,
            Tokenizer::Hf(t) => ["</s>", "<|endoftext|>", "<eos>", "[SEP]"].iter().find_map(|p| t.token_to_id(p)),
        }
    }

    /// The id inputs are padded with: the tokenizer's `[PAD]` (or `<pad>`), else 0.
    pub fn pad_id(&self) -> u32 {
        match self {
            Tokenizer::Bytes => 0,
            Tokenizer::Hf(t) => ["[PAD]", "<pad>"].iter().find_map(|p| t.token_to_id(p)).unwrap_or(0),
        }
    }
}

fn resolve(path: &Path) -> Result<PathBuf, String> {
    if !path.is_dir() {
        return if path.exists() {
            Ok(path.to_path_buf())
        } else {
            Err(format!("no tokenizer at `{}`", path.display()))
        };
    }
    ["tokenizer.json", "vocab.txt"]
        .iter()
        .map(|f| path.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| format!("`{}` holds neither `tokenizer.json` nor `vocab.txt`", path.display()))
}

/// BERT's uncased WordPiece pipeline around a `vocab.txt` (line number = id).
fn wordpiece(vocab: &Path) -> Result<HfTokenizer, String> {
    let file = vocab.to_str().ok_or_else(|| format!("`{}` is not valid UTF-8", vocab.display()))?;
    let model = WordPiece::from_file(file)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| format!("reading vocabulary `{}`: {e}", vocab.display()))?;
    let id = |t: &str| model.token_to_id(t).ok_or_else(|| format!("`{}` has no `{t}` token", vocab.display()));
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let mut tok = HfTokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(|e| format!("tokenizer normalizer: {e}"))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
    Ok(tok)
}

/// `max_seq_length` of a sentence-transformers model, when the tokenizer sits in one.
fn sentence_max_length(file: &Path) -> Option<usize> {
    let config = file.parent()?.join("sentence_bert_config.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config).ok()?).ok()?;
    v.get("max_seq_length")?.as_u64().map(|n| n as usize)
}
