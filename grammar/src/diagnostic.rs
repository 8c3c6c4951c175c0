//! Diagnostics shared by every stage: a message, a primary span with a caret, optional
//! secondary spans and a hint, rendered like rustc (through `codespan-reporting`) or as
//! JSON for tools. Later stages (elaboration, shape checking) report through the same type.

use crate::ast::Span;
use codespan_reporting::diagnostic as cs;
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor};
use serde::Serialize;

/// A named source text with a line index, so that spans turn into `line:col`.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> SourceFile {
        let text = text.into();
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceFile { name: name.into(), text, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = self.clamp(offset);
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let col = self.text[self.line_starts[line]..offset].chars().count() + 1;
        (line + 1, col)
    }

    /// `line:col` of a byte offset, as it appears in messages.
    pub fn position(&self, offset: usize) -> String {
        let (line, col) = self.line_col(offset);
        format!("{line}:{col}")
    }

    /// The nearest char boundary at or before `offset`, within the text.
    fn clamp(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// One line saying what is wrong, in words.
    pub message: String,
    /// Where; the caret goes under this span.
    pub span: Span,
    /// Text printed beside the caret.
    pub label: String,
    /// Related places, such as the bracket that an unexpected token fails to close.
    pub secondary: Vec<(Span, String)>,
    /// What to do about it, when there is something useful to say.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Span) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: String::new(),
            secondary: Vec::new(),
            help: None,
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.secondary.push((span, label.into()));
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Renders as rustc does: `error: ...`, ` --> file:line:col`, the source line and a
    /// caret. `color` adds terminal colours.
    pub fn render(&self, file: &SourceFile, color: bool) -> String {
        let mut out = Vec::new();
        if color {
            let mut writer = termcolor::Ansi::new(&mut out);
            self.emit(file, &mut writer);
        } else {
            let mut writer = termcolor::NoColor::new(&mut out);
            self.emit(file, &mut writer);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn emit(&self, file: &SourceFile, writer: &mut dyn termcolor::WriteColor) {
        let simple = SimpleFile::new(file.name.as_str(), file.text.as_str());
        let range = |span: Span| file.clamp(span.start)..file.clamp(span.end.max(span.start));
        let mut labels = vec![cs::Label::primary((), range(self.span)).with_message(self.label.clone())];
        for (span, text) in &self.secondary {
            labels.push(cs::Label::secondary((), range(*span)).with_message(text.clone()));
        }
        let notes = self.help.iter().map(|h| format!("help: {h}")).collect();
        let diagnostic = match self.severity {
            Severity::Error => cs::Diagnostic::error(),
            Severity::Warning => cs::Diagnostic::warning(),
        }
        .with_message(self.message.clone())
        .with_labels(labels)
        .with_notes(notes);
        let config = term::Config { chars: term::Chars::ascii(), ..term::Config::default() };
        // Writing into a Vec cannot fail, and the files are consistent by construction.
        let _ = term::emit(writer, &config, &simple, &diagnostic);
    }

    /// One JSON object for tools (`--message-format json`).
    pub fn to_json(&self, file: &SourceFile) -> serde_json::Value {
        #[derive(Serialize)]
        struct Location<'a> {
            file: &'a str,
            line: usize,
            column: usize,
            end_line: usize,
            end_column: usize,
            byte_start: usize,
            byte_end: usize,
            label: &'a str,
        }
        fn loc<'a>(file: &'a SourceFile, span: Span, label: &'a str) -> Location<'a> {
            let (line, column) = file.line_col(span.start);
            let (end_line, end_column) = file.line_col(span.end);
            Location {
                file: &file.name,
                line,
                column,
                end_line,
                end_column,
                byte_start: span.start,
                byte_end: span.end,
                label,
            }
        }
        serde_json::json!({
            "severity": self.severity,
            "message": self.message,
            "location": loc(file, self.span, &self.label),
            "secondary": self.secondary.iter().map(|(s, l)| loc(file, *s, l)).collect::<Vec<_>>(),
            "help": self.help,
            "rendered": self.render(file, false),
        })
    }
}
