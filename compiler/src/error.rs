//! Errors of the semantic stages: a diagnostic and the file it points into (a program
//! spans several files: the root, its imports and the stdlib).

use modelc_grammar::Diagnostic;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId(pub usize);

#[derive(Clone, Debug)]
pub struct Error {
    pub file: FileId,
    /// Boxed: errors travel through every `?` of elaboration, so they stay one pointer.
    pub diag: Box<Diagnostic>,
}

impl Error {
    pub fn new(file: FileId, diag: Diagnostic) -> Error {
        Error { file, diag: Box::new(diag) }
    }

    /// Appends a sentence to the help text.
    pub fn with_note(mut self, note: impl Into<String>) -> Error {
        let note = note.into();
        self.diag.help = Some(match self.diag.help.take() {
            Some(h) => format!("{h}; {note}"),
            None => note,
        });
        self
    }
}

/// The closest candidate to a misspelt name, if one is close enough to be a likely typo.
pub fn suggest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    candidates
        .filter(|c| *c != name)
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        // A third of the letters may differ; names of one or two letters only by case.
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(usize::from(name.len() > 2)))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
        .map(|(_, c)| c.to_string())
}
