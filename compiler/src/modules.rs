//! Source files → a table of modules with resolved names. Loads the root file, the files
//! it imports with `use "path.model"` (relative to the importer) and the stdlib modules
//! it names with `use std.M.{...}`; parses each once; builds each module's namespace
//! (its own items plus imports) and reports unknown, duplicate and cyclic names.

use crate::error::{suggest, Error, FileId};
use crate::stdlib;
use modelc_grammar::ast::{self, ItemKind, Span, Use};
use modelc_grammar::{Diagnostic, SourceFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One parsed file and its namespace.
pub struct Module {
    pub file: FileId,
    pub ast: ast::File,
    /// Every name usable in this module: its own items and what it imports.
    pub names: HashMap<String, ItemRef>,
}

/// An item, by the module that declares it and its index there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ItemRef {
    pub module: usize,
    pub index: usize,
}

pub struct Program {
    pub files: Vec<SourceFile>,
    pub modules: Vec<Module>,
}

impl Program {
    pub fn item(&self, r: ItemRef) -> &ast::Item {
        &self.modules[r.module].ast.items[r.index]
    }

    pub fn file_of(&self, module: usize) -> FileId {
        self.modules[module].file
    }

    pub fn source(&self, file: FileId) -> &SourceFile {
        &self.files[file.0]
    }

    /// Adds a file that is not a module (command-line text such as `--set` values), so
    /// that diagnostics can point into it.
    pub fn add_file(&mut self, file: SourceFile) -> FileId {
        self.files.push(file);
        FileId(self.files.len() - 1)
    }
}

/// An item of a stdlib module (`std.adapters.LoRA`), loading the module if the program
/// does not import it: recipe adapters put stdlib blocks into models that never named
/// them.
pub fn std_item(program: &mut Program, module: &str, name: &str) -> Result<ItemRef, Error> {
    let loaded = |program: &Program, file_name: &str| {
        program.modules.iter().position(|m| program.files[m.file.0].name == file_name)
    };
    let Some((module, file_name, src)) = stdlib::module(module) else {
        return Err(Error::new(
            FileId(0),
            Diagnostic::error(format!("no stdlib module `std.{module}`"), Span::new(0, 0)),
        ));
    };
    let index = match loaded(program, file_name) {
        Some(i) => i,
        None => {
            let mut loader = Loader {
                files: std::mem::take(&mut program.files),
                modules: std::mem::take(&mut program.modules),
                by_origin: HashMap::new(),
                loading: Vec::new(),
            };
            // Stdlib modules import only each other: those already loaded are reused.
            for (m, file, _) in stdlib::MODULES {
                if let Some(i) = loader.modules.iter().position(|x| loader.files[x.file.0].name == *file) {
                    loader.by_origin.insert(format!("std.{m}"), i);
                }
            }
            let added = loader.add(SourceFile::new(file_name, src), Origin::Std(module));
            program.files = loader.files;
            program.modules = loader.modules;
            added?
        }
    };
    let item = program.modules[index].ast.items.iter().position(|it| match &it.kind {
        ItemKind::Block(b) => b.name.name == name,
        _ => false,
    });
    item.map(|i| ItemRef { module: index, index: i }).ok_or_else(|| {
        Error::new(FileId(0), Diagnostic::error(format!("no block `{name}` in `std.{module}`"), Span::new(0, 0)))
    })
}

enum Origin {
    Path(PathBuf),
    Std(&'static str),
}

/// A failed load: the error and every file read so far, so that an error in an imported
/// file renders against that file's text.
#[derive(Debug)]
pub struct LoadError {
    pub error: Error,
    pub files: Vec<SourceFile>,
}

/// Loads `root` (already read into `source`) and everything it imports.
pub fn load(source: SourceFile, root: &Path) -> Result<Program, Box<LoadError>> {
    let mut loader = Loader { files: Vec::new(), modules: Vec::new(), by_origin: HashMap::new(), loading: Vec::new() };
    match loader.add(source, Origin::Path(root.to_path_buf())) {
        Ok(_) => Ok(Program { files: loader.files, modules: loader.modules }),
        Err(error) => Err(Box::new(LoadError { error, files: loader.files })),
    }
}

struct Loader {
    files: Vec<SourceFile>,
    modules: Vec<Module>,
    by_origin: HashMap<String, usize>,
    /// Modules whose imports are being loaded, to report import cycles.
    loading: Vec<String>,
}

impl Loader {
    fn add(&mut self, source: SourceFile, origin: Origin) -> Result<usize, Error> {
        let key = match &origin {
            Origin::Path(p) => p.canonicalize().unwrap_or_else(|_| p.clone()).display().to_string(),
            Origin::Std(name) => format!("std.{name}"),
        };
        let file = FileId(self.files.len());
        self.files.push(source);
        let parsed = modelc_grammar::parse(&self.files[file.0]).map_err(|d| Error::new(file, d))?;
        let index = self.modules.len();
        self.modules.push(Module { file, ast: parsed.ast, names: HashMap::new() });
        self.by_origin.insert(key.clone(), index);
        self.loading.push(key);
        let base = match &origin {
            Origin::Path(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            Origin::Std(_) => PathBuf::new(),
        };
        self.resolve_names(index, &base)?;
        self.loading.pop();
        Ok(index)
    }

    /// Builds the namespace of module `index`: its items, then its imports.
    fn resolve_names(&mut self, index: usize, base: &Path) -> Result<(), Error> {
        let file = self.modules[index].file;
        let mut names: HashMap<String, ItemRef> = HashMap::new();
        let mut spans: HashMap<String, Span> = HashMap::new();
        for (i, item) in self.modules[index].ast.items.iter().enumerate() {
            if let Some(name) = item.name() {
                if let Some(first) = spans.get(&name.name) {
                    return Err(Error::new(
                        file,
                        Diagnostic::error(format!("`{}` is declared twice", name.name), name.span)
                            .with_label("second declaration")
                            .with_secondary(*first, "first declared here")
                            .with_help("rename one of them"),
                    ));
                }
                spans.insert(name.name.clone(), name.span);
                names.insert(name.name.clone(), ItemRef { module: index, index: i });
            }
        }
        let uses: Vec<(Use, Span)> = self.modules[index]
            .ast
            .items
            .iter()
            .filter_map(|it| match &it.kind {
                ItemKind::Use(u) => Some((u.clone(), it.span)),
                _ => None,
            })
            .collect();
        for (u, span) in uses {
            match u {
                Use::File { path, span: path_span } => {
                    let target = self.import_file(file, base, &path, path_span)?;
                    // Every item of the file except its recipes, which belong to it.
                    let imported: Vec<(String, ItemRef)> = self.modules[target]
                        .ast
                        .items
                        .iter()
                        .enumerate()
                        .filter(|(_, it)| !matches!(it.kind, ItemKind::Recipe(_) | ItemKind::Use(_)))
                        .filter_map(|(i, it)| it.name().map(|n| (n.name.clone(), ItemRef { module: target, index: i })))
                        .collect();
                    for (name, r) in imported {
                        self.bind_import(file, &mut names, &spans, name, r, span)?;
                    }
                }
                Use::Module { path, names: wanted } => {
                    let target = self.import_std(file, &path)?;
                    for want in wanted {
                        let found = self.modules[target].names.get(&want.name).copied().filter(|r| {
                            // Only a module's own items can be imported from it.
                            r.module == target
                        });
                        let Some(r) = found else {
                            let own: Vec<String> = self.modules[target]
                                .names
                                .iter()
                                .filter(|(_, r)| r.module == target)
                                .map(|(n, _)| n.clone())
                                .collect();
                            let module: Vec<&str> = path.iter().map(|p| p.name.as_str()).collect();
                            let mut d = Diagnostic::error(
                                format!("`{}` is not in `{}`", want.name, module.join(".")),
                                want.span,
                            )
                            .with_label("not found");
                            if let Some(s) = suggest(&want.name, own.iter().map(String::as_str)) {
                                d = d.with_help(format!("did you mean `{s}`?"));
                            }
                            return Err(Error::new(file, d));
                        };
                        self.bind_import(file, &mut names, &spans, want.name.clone(), r, want.span)?;
                    }
                }
            }
        }
        self.modules[index].names = names;
        Ok(())
    }

    fn bind_import(
        &self,
        file: FileId,
        names: &mut HashMap<String, ItemRef>,
        local: &HashMap<String, Span>,
        name: String,
        r: ItemRef,
        span: Span,
    ) -> Result<(), Error> {
        if let Some(own) = local.get(&name) {
            return Err(Error::new(
                file,
                Diagnostic::error(format!("`{name}` is both imported and declared here"), *own)
                    .with_label("declared here")
                    .with_secondary(span, "imported here")
                    .with_help("rename the local item"),
            ));
        }
        if let Some(prev) = names.get(&name) {
            if *prev != r {
                return Err(Error::new(
                    file,
                    Diagnostic::error(format!("`{name}` is imported twice, from two places"), span)
                        .with_label("second import")
                        .with_help("import it from one place only"),
                ));
            }
        }
        names.insert(name, r);
        Ok(())
    }

    fn import_std(&mut self, file: FileId, path: &[ast::Ident]) -> Result<usize, Error> {
        let span = path.first().map(|p| p.span).unwrap_or_default().to(path.last().map(|p| p.span).unwrap_or_default());
        let parts: Vec<&str> = path.iter().map(|p| p.name.as_str()).collect();
        let module = match parts.as_slice() {
            ["std", m] => *m,
            _ => {
                return Err(Error::new(
                    file,
                    Diagnostic::error(format!("unknown module `{}`", parts.join(".")), span)
                        .with_label("not a module")
                        .with_help("modules are `std.nn` and `std.adapters`; import files with `use \"path.model\"`"),
                ))
            }
        };
        let Some((module, name, src)) = stdlib::module(module) else {
            let mut d = Diagnostic::error(format!("unknown module `std.{module}`"), span).with_label("no such module");
            if let Some(s) = suggest(module, stdlib::MODULES.iter().map(|m| m.0)) {
                d = d.with_help(format!("did you mean `std.{s}`?"));
            }
            return Err(Error::new(file, d));
        };
        let key = format!("std.{module}");
        if let Some(&i) = self.by_origin.get(&key) {
            return self.check_cycle(file, &key, span).map(|_| i);
        }
        self.add(SourceFile::new(name, src), Origin::Std(module))
    }

    fn import_file(&mut self, file: FileId, base: &Path, path: &str, span: Span) -> Result<usize, Error> {
        let full = base.join(path);
        let key = full.canonicalize().unwrap_or_else(|_| full.clone()).display().to_string();
        if let Some(&i) = self.by_origin.get(&key) {
            return self.check_cycle(file, &key, span).map(|_| i);
        }
        let text = std::fs::read(&full).map_err(|e| {
            Error::new(
                file,
                Diagnostic::error(format!("cannot read `{}`: {e}", full.display()), span)
                    .with_label("imported here")
                    .with_help("paths in `use` are relative to the importing file"),
            )
        })?;
        let source = modelc_grammar::decode(&full.display().to_string(), text).map_err(|bad| {
            Error::new(file, Diagnostic::error(format!("`{}` is not valid UTF-8", full.display()), span))
                .with_note(bad.0.message)
        })?;
        self.add(source, Origin::Path(full))
    }

    fn check_cycle(&self, file: FileId, key: &str, span: Span) -> Result<(), Error> {
        if self.loading.iter().any(|k| k == key) {
            return Err(Error::new(
                file,
                Diagnostic::error("files import each other in a cycle", span)
                    .with_label("this import closes the cycle")
                    .with_help("move what both need into a third file"),
            ));
        }
        Ok(())
    }
}
