//! Where diagnostics go: rendered like rustc on stderr, or one JSON object per line on
//! stdout (`--message-format json`).

use modelc_grammar::{Diagnostic, SourceFile};
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug)]
pub struct Reporter {
    pub format: MessageFormat,
    pub color: bool,
}

impl Reporter {
    pub fn diagnostic(&self, diag: &Diagnostic, file: &SourceFile) {
        match self.format {
            MessageFormat::Human => {
                let _ = write!(std::io::stderr().lock(), "{}", diag.render(file, self.color));
            }
            MessageFormat::Json => {
                let _ = writeln!(std::io::stdout().lock(), "{}", diag.to_json(file));
            }
        }
    }

    /// A failure with no source location (a file that cannot be read, a missing feature).
    pub fn plain_error(&self, message: &str) {
        match self.format {
            MessageFormat::Human => eprintln!("error: {message}"),
            MessageFormat::Json => {
                let obj = serde_json::json!({ "severity": "error", "message": message });
                println!("{obj}");
            }
        }
    }
}
