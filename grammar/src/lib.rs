//! The `.model` front end: source text → spanned AST, and back to canonical text.
//!
//! Stages, in order: `scan` (brackets, strings, comments, nesting limit) → `parser` (the
//! pest grammar in `model.pest`, then the AST of `ast`) → `format` (canonical text) and
//! `dump` (a readable tree). `diagnostic` renders errors for every later stage too.
//!
//! Architecture invariant: this crate knows nothing of shapes, types or the Graph IR.

pub mod ast;
pub mod diagnostic;
pub mod dump;
pub mod format;
pub mod parser;
pub mod scan;

pub use diagnostic::{Diagnostic, Severity, SourceFile};
pub use parser::{parse, Parsed};

/// Formats source text: parse, then print canonically.
pub fn format_source(file: &SourceFile) -> Result<String, Diagnostic> {
    let parsed = parse(file)?;
    Ok(format::format(&parsed, file))
}

/// Decodes file bytes as UTF-8, or reports the first invalid byte with its location.
/// On failure, also returns a lossy copy of the text to render the diagnostic against.
pub fn decode(name: &str, bytes: Vec<u8>) -> Result<SourceFile, Box<(Diagnostic, SourceFile)>> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(name, text)),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let width = lossy[at..].chars().next().map_or(0, char::len_utf8);
            let diag = Diagnostic::error("this file is not valid UTF-8", ast::Span::new(at, at + width))
                .with_label(format!("invalid byte 0x{:02X}", e.as_bytes()[at]))
                .with_help("save the file as UTF-8");
            Err(Box::new((diag, SourceFile::new(name, lossy))))
        }
    }
}

/// Stack needed by the recursive stages for the deepest input the parser accepts:
/// bracket nesting is limited by `scan::MAX_NESTING`, but operator chains (`a + b + ...`
/// over 200 KB) make trees tens of thousands of levels deep.
pub const STACK_SIZE: usize = 512 * 1024 * 1024;

/// Runs `f` on a thread with `STACK_SIZE` of stack, for callers that walk trees of
/// untrusted input (the CLI, tests of huge inputs).
pub fn with_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(STACK_SIZE)
            .spawn_scoped(s, f)
            .expect("spawning the compiler thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
