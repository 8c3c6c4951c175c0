//! Fuzzes the front end on arbitrary bytes: decode → parse → format → re-parse.
//!
//! Asserts:
//! 1. `decode` failures render (against the lossy text) without panicking;
//! 2. `parse` never panics; its errors have `start <= end <= text.len()` spans (primary
//!    and secondary) and render without panicking;
//! 3. on success, `format`'s output parses, has the same span-free `dump` tree, formats
//!    to itself (idempotence), and keeps the `//` comments' texts in the same order.
//!
//! Everything runs under `with_big_stack`, as the CLI does: operator chains make trees
//! thousands of levels deep, and the recursive stages (format, dump, drop) expect the
//! big stack.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelc_grammar::{decode, dump::dump, format::format, parse, with_big_stack, Diagnostic, SourceFile};

fn check_spans(diag: &Diagnostic, file: &SourceFile, what: &str) {
    let len = file.text.len();
    let spans = std::iter::once(diag.span).chain(diag.secondary.iter().map(|(s, _)| *s));
    for s in spans {
        assert!(
            s.start <= s.end && s.end <= len,
            "{what}: diagnostic span {}..{} out of order or past the end (len {len}); message: {}\ninput: {:?}",
            s.start,
            s.end,
            diag.message,
            file.text,
        );
    }
}

fn comment_texts(p: &modelc_grammar::Parsed) -> Vec<&str> {
    p.scan.comments.iter().map(|c| c.text.as_str()).collect()
}

fn run(data: Vec<u8>) {
    let file = match decode("fuzz.model", data) {
        Ok(file) => file,
        Err(err) => {
            let (diag, lossy) = *err;
            check_spans(&diag, &lossy, "decode");
            let _ = diag.render(&lossy, false);
            return;
        }
    };
    let parsed = match parse(&file) {
        Ok(parsed) => parsed,
        Err(diag) => {
            check_spans(&diag, &file, "parse");
            let _ = diag.render(&file, false);
            return;
        }
    };
    let out = format(&parsed, &file);
    let out_file = SourceFile::new("formatted.model", out.clone());
    let reparsed = match parse(&out_file) {
        Ok(p) => p,
        Err(diag) => panic!(
            "formatted output does not parse: {}\n--- input ---\n{}\n--- formatted ---\n{}\n--- error ---\n{}",
            diag.message,
            file.text,
            out,
            diag.render(&out_file, false)
        ),
    };
    let before = dump(&parsed.ast, None);
    let after = dump(&reparsed.ast, None);
    assert!(
        before == after,
        "formatting changed the tree\n--- input ---\n{}\n--- formatted ---\n{}\n--- tree before ---\n{}\n--- tree after ---\n{}",
        file.text,
        out,
        before,
        after
    );
    let again = format(&reparsed, &out_file);
    assert!(
        again == out,
        "formatting is not idempotent\n--- input ---\n{}\n--- formatted once ---\n{}\n--- formatted twice ---\n{}",
        file.text,
        out,
        again
    );
    let (c_in, c_out) = (comment_texts(&parsed), comment_texts(&reparsed));
    assert!(
        c_in == c_out,
        "formatting lost, added or reordered `//` comments\n--- input ---\n{}\n--- formatted ---\n{}\n--- comments before ---\n{:?}\n--- comments after ---\n{:?}",
        file.text,
        out,
        c_in,
        c_out
    );
}

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    with_big_stack(move || run(data));
});
