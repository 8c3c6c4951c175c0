//! A lexical pre-pass over the source, before the grammar runs. It finds the plain `//`
//! comments (which the formatter keeps), matches brackets, and rejects what the grammar
//! would report badly or dangerously: unterminated strings, unbalanced brackets, and
//! nesting deeper than `MAX_NESTING` (so that no later recursive stage can overflow the
//! stack on brackets). It is a single loop with an explicit stack: no recursion.

use crate::ast::Span;
use crate::diagnostic::{Diagnostic, SourceFile};

/// The deepest bracket nesting accepted. Real models nest a dozen levels; the limit only
/// exists so that adversarial input is a located error, not a stack overflow.
pub const MAX_NESTING: usize = 256;

/// A plain `//` comment (not a `///` doc comment), text without trailing whitespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    pub span: Span,
    pub text: String,
}

/// A matched pair of brackets, by byte offset of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BracketPair {
    pub open: usize,
    pub close: usize,
    pub kind: u8,
}

#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub comments: Vec<Comment>,
    /// Sorted by `open`.
    pub brackets: Vec<BracketPair>,
}

pub fn closer(open: u8) -> u8 {
    match open {
        b'(' => b')',
        b'[' => b']',
        _ => b'}',
    }
}

fn opener(close: u8) -> u8 {
    match close {
        b')' => b'(',
        b']' => b'[',
        _ => b'{',
    }
}

pub fn scan(file: &SourceFile) -> Result<Scan, Diagnostic> {
    let text = file.text.as_bytes();
    let mut out = Scan::default();
    let mut stack: Vec<(u8, usize)> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'/' if text.get(i + 1) == Some(&b'/') => {
                let end = text[i..].iter().position(|&b| b == b'\n').map_or(text.len(), |n| i + n);
                let is_doc = text[i..end].starts_with(b"///") && !text[i..end].starts_with(b"////");
                if !is_doc {
                    let body = file.text[i..end].trim_end();
                    out.comments.push(Comment { span: Span::new(i, i + body.len()), text: body.to_string() });
                }
                i = end;
            }
            b'"' => i = skip_string(file, i)?,
            open @ (b'(' | b'[' | b'{') => {
                stack.push((open, i));
                if stack.len() > MAX_NESTING {
                    return Err(Diagnostic::error(
                        format!("brackets nested more than {MAX_NESTING} levels deep"),
                        Span::new(i, i + 1),
                    )
                    .with_label(format!("level {} opens here", stack.len()))
                    .with_help("give the inner parts names with `x = ...` and use those instead"));
                }
                i += 1;
            }
            close @ (b')' | b']' | b'}') => {
                match stack.pop() {
                    Some((open, at)) if closer(open) == close => {
                        out.brackets.push(BracketPair { open: at, close: i, kind: open });
                    }
                    Some((open, at)) => {
                        return Err(Diagnostic::error(
                            format!(
                                "expected `{}` to close the `{}` opened at {}, found `{}`",
                                closer(open) as char,
                                open as char,
                                file.position(at),
                                close as char
                            ),
                            Span::new(i, i + 1),
                        )
                        .with_label("mismatched closing bracket")
                        .with_secondary(Span::new(at, at + 1), "unclosed bracket opened here"));
                    }
                    None => {
                        return Err(Diagnostic::error(
                            format!("unexpected `{}`: there is no `{}` to close", close as char, opener(close) as char),
                            Span::new(i, i + 1),
                        )
                        .with_label("unmatched closing bracket")
                        .with_help("remove it, or add the opening bracket it should close"));
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    if let Some(&(open, at)) = stack.last() {
        let end = text.len();
        return Err(Diagnostic::error(
            format!(
                "expected `{}` to close the `{}` opened at {}, found end of file",
                closer(open) as char,
                open as char,
                file.position(at)
            ),
            Span::new(end, end),
        )
        .with_label("file ends here")
        .with_secondary(Span::new(at, at + 1), "this bracket is never closed"));
    }
    out.brackets.sort_by_key(|p| p.open);
    Ok(out)
}

/// Skips a string starting at the quote at `start`; returns the offset after its end.
fn skip_string(file: &SourceFile, start: usize) -> Result<usize, Diagnostic> {
    let text = file.text.as_bytes();
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'"' => return Ok(i + 1),
            b'\\' if text.get(i + 1).is_some_and(|&b| b != b'\n') => i += 2,
            b'\n' => break,
            _ => i += 1,
        }
    }
    let line_end = i.min(text.len());
    Err(Diagnostic::error("unterminated string", Span::new(start, line_end))
        .with_label("this string has no closing `\"`")
        .with_help("close it with `\"` on the same line; strings cannot span lines"))
}
