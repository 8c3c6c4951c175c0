//! `modelc generate`: flags checked one by one, the decoder compiled (its memory checked
//! first), the prompt continued token by token and streamed to stdout as UTF-8.

use crate::commands::{self, RunArgs, EXIT_INPUT, EXIT_OK};
use crate::report::Reporter;
use modelc_compiler::{Lowering, Target};
use std::io::Write;
use std::path::Path;

/// How `modelc generate` was asked to run, beyond the target.
pub struct GenerateArgs<'a> {
    /// `--backend`: which backend compiles and runs the model.
    pub backend: &'a str,
    pub checkpoint: Option<&'a Path>,
    pub prompt: &'a str,
    pub max_tokens: usize,
    pub sampling: modelc_runtime::sampling::Sampling,
    /// `--beams N`; `None`: sampling.
    pub beams: Option<usize>,
    pub length_penalty: f64,
    pub seed: Option<u64>,
    pub tokenizer: Option<&'a Path>,
    pub cache: bool,
    pub json: bool,
    /// `--memory-limit`, in bytes.
    pub memory_limit: Option<u64>,
}

/// Every sampling flag in its range, each reported on its own.
fn check_flags(args: &GenerateArgs) -> Vec<String> {
    let s = &args.sampling;
    let mut bad = Vec::new();
    if !(s.temperature.is_finite() && s.temperature >= 0.0) {
        bad.push(format!("`--temperature {}`: must be a finite number ≥ 0 (0 is greedy)", s.temperature));
    }
    if !(s.top_p.is_finite() && (0.0..=1.0).contains(&s.top_p)) {
        bad.push(format!("`--top-p {}`: must be in [0, 1] (1 keeps every token)", s.top_p));
    }
    if !(s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0) {
        bad.push(format!(
            "`--repetition-penalty {}`: must be a finite number above 0 (1 is none)",
            s.repetition_penalty
        ));
    }
    if !args.length_penalty.is_finite() {
        bad.push(format!("`--length-penalty {}`: must be a finite number", args.length_penalty));
    }
    if args.beams == Some(0) {
        bad.push("`--beams 0`: must be at least 1 (leave it out to sample)".to_string());
    }
    bad
}

/// Continues the prompt token by token, printing each piece of text as soon as it is
/// chosen.
pub fn generate(path: &Path, target: &Target, args: &GenerateArgs, report: &Reporter) -> i32 {
    let bad = check_flags(args);
    if !bad.is_empty() {
        bad.iter().for_each(|b| report.plain_error(b));
        return EXIT_INPUT;
    }
    let Some(mut program) = commands::load_program(path, report) else {
        return EXIT_INPUT;
    };
    let mut target = target.clone();
    if target.recipe.is_none() && target.model.is_none() {
        target.recipe = Some("tiny".to_string());
    }
    let (instance, graph, w) = match commands::interpreter_graph(&mut program, &target, Lowering::Outputs, report) {
        Ok(x) => x,
        Err(code) => return code,
    };
    // The KV cache would see the virtual tokens again at every step.
    if instance.prompt.is_some() {
        report.plain_error(
            "`generate` does not support a P-tuning adapter yet: the virtual tokens belong only in front of the prompt, and the KV cache would repeat them each step",
        );
        return EXIT_INPUT;
    }
    let seed = args.seed.unwrap_or(w.recipe.seed);
    let backend = match commands::backend(args.backend, report) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let run_args = RunArgs {
        backend: args.backend,
        seed: Some(seed),
        checkpoint: args.checkpoint,
        weights: None,
        tokenizer: None,
        texts: &[],
        json: false,
        memory_limit: args.memory_limit,
    };
    let beams = args.beams.unwrap_or(0);
    let setup = commands::run_params(&instance, &w, &run_args, seed).and_then(|params| {
        let tok = match args.tokenizer {
            None => modelc_runtime::tokenizer::Tokenizer::Bytes,
            Some(p) => modelc_runtime::tokenizer::Tokenizer::load(p, None)?,
        };
        let prompt = tok.encode(args.prompt)?;
        let buffers = crate::train::model_buffers(&instance);
        let longest = (beams.max(1), prompt.len().saturating_add(args.max_tokens).max(1));
        let from = commands::params_source(&run_args);
        let model = super::Model::new(backend.as_ref(), graph, buffers, (params, &from), (longest, args.memory_limit))?;
        Ok((model, tok, prompt))
    });
    let (model, tok, prompt) = match setup {
        Ok(x) => x,
        Err(why) => {
            report.plain_error(&why);
            return EXIT_INPUT;
        }
    };
    let request = super::Request {
        prompt,
        max_tokens: args.max_tokens,
        sampling: args.sampling.clone(),
        beams,
        length_alpha: args.length_penalty,
        seed,
        cache: args.cache,
        eos: tok.eos_id(),
    };
    let mut stream = Utf8Stream::default();
    let mut ids = Vec::new();
    let mut stdout = std::io::stdout();
    let mut emit = |id: u32| {
        if args.json {
            return;
        }
        ids.push(id);
        if let Ok(text) = tok.decode(&ids) {
            let _ = stdout.write_all(stream.push(&text).as_bytes());
            let _ = stdout.flush();
        }
    };
    match model.generate(&request, &mut emit) {
        Ok(out) => {
            if args.json {
                let text = tok.decode(&out.tokens).unwrap_or_default();
                println!("{}", serde_json::json!({ "tokens": out.tokens, "text": String::from_utf8_lossy(&text) }));
            } else {
                println!("{}", stream.finish());
            }
            EXIT_OK
        }
        Err(why) => {
            report.plain_error(&format!("generating: {why}"));
            EXIT_INPUT
        }
    }
}

/// The decoded text so far (bytes, which a byte tokenizer may leave mid-character) →
/// what to print next, always valid UTF-8: invalid bytes become U+FFFD, and the start
/// of a character whose remaining bytes may still come is held back.
#[derive(Default)]
pub struct Utf8Stream {
    /// Bytes of the decoded text already consumed.
    done: usize,
    /// Whether the last push held bytes back.
    held: bool,
}

impl Utf8Stream {
    pub fn push(&mut self, text: &[u8]) -> String {
        let mut out = String::new();
        // A decoder may rewrite what it decoded before (merged pieces): never go back.
        let mut rest = text.get(self.done..).unwrap_or_default();
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    self.done += rest.len();
                    self.held = false;
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    self.done += valid;
                    match e.error_len() {
                        // Incomplete at the end: wait for more bytes.
                        None => {
                            self.held = true;
                            return out;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.done += n;
                            rest = &rest[valid + n..];
                        }
                    }
                }
            }
        }
    }

    /// What was held back, once no more bytes will come.
    pub fn finish(&mut self) -> String {
        if std::mem::take(&mut self.held) {
            char::REPLACEMENT_CHARACTER.to_string()
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_valid_utf8_whatever_the_bytes() {
        let mut s = Utf8Stream::default();
        let text = "é".as_bytes();
        assert_eq!(s.push(&text[..1]), "");
        assert_eq!(s.push(text), "é");
        let mut bad = text.to_vec();
        bad.extend([0xff, b'a']);
        assert_eq!(s.push(&bad), "\u{fffd}a");
        bad.push(0xc3);
        assert_eq!(s.push(&bad), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
