//! One function per subcommand. Each returns the process exit code: 0 on success, 1 when
//! the input has errors (reported as diagnostics), 2 for what the user asked but modelc
//! cannot do yet.

use crate::report::Reporter;
use modelc_compiler::{inspect, Program, Target};
use modelc_grammar::{dump, format, parse, Parsed, SourceFile};
use std::path::Path;

pub const EXIT_OK: i32 = 0;
pub const EXIT_INPUT: i32 = 1;
pub const EXIT_UNSUPPORTED: i32 = 2;

/// Reads and decodes a file, reporting why it cannot be used.
pub fn load(path: &Path, report: &Reporter) -> Option<SourceFile> {
    let name = path.display().to_string();
    let bytes = if name == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(path)
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            report.plain_error(&format!("cannot read `{name}`: {e}"));
            return None;
        }
    };
    match modelc_grammar::decode(&name, bytes) {
        Ok(file) => Some(file),
        Err(bad) => {
            let (diag, lossy) = *bad;
            report.diagnostic(&diag, &lossy);
            None
        }
    }
}

fn load_and_parse(path: &Path, report: &Reporter) -> Option<(SourceFile, Parsed)> {
    let file = load(path, report)?;
    match parse(&file) {
        Ok(parsed) => Some((file, parsed)),
        Err(diag) => {
            report.diagnostic(&diag, &file);
            None
        }
    }
}

/// Loads a file with everything it imports, reporting the first error.
fn load_program(path: &Path, report: &Reporter) -> Option<Program> {
    let file = load(path, report)?;
    match modelc_compiler::load(file, path) {
        Ok(program) => Some(program),
        Err(failed) => {
            let fallback = SourceFile::new(path.display().to_string(), String::new());
            report.diagnostic(&failed.error.diag, failed.files.get(failed.error.file.0).unwrap_or(&fallback));
            None
        }
    }
}

fn report_compile_error(e: &modelc_compiler::Error, program: &Program, report: &Reporter) {
    report.diagnostic(&e.diag, program.source(e.file))
}

/// `modelc check`: every file parses, its names resolve, and its models and recipes'
/// models instantiate.
pub fn check(paths: &[impl AsRef<Path>], report: &Reporter) -> i32 {
    let mut code = EXIT_OK;
    for path in paths {
        let path = path.as_ref();
        let Some(mut program) = load_program(path, report) else {
            code = EXIT_INPUT;
            continue;
        };
        if let Err(e) = modelc_compiler::check(&mut program) {
            report_compile_error(&e, &program, report);
            code = EXIT_INPUT;
        }
    }
    code
}

/// `modelc inspect`: the parameter tree and exact total of a model, its FLOPs from the
/// Graph IR and its memory, for a recipe's (or the given) batch and sequence.
pub fn inspect(
    path: &Path,
    target: &Target,
    workload: (Option<i64>, Option<i64>),
    json: bool,
    report: &Reporter,
) -> i32 {
    let Some(mut program) = load_program(path, report) else {
        return EXIT_INPUT;
    };
    let built = modelc_compiler::instantiate(&mut program, target).and_then(|instance| {
        let graph = modelc_compiler::elab::forward::elaborate(&program, &instance)?;
        let w = modelc_compiler::workload(&program, target, workload.0, workload.1)?;
        Ok(inspect::report(&instance, &graph, w))
    });
    let r = match built {
        Ok(r) => r,
        Err(e) => {
            report_compile_error(&e, &program, report);
            return EXIT_INPUT;
        }
    };
    if json {
        match serde_json::to_string_pretty(&r) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                report.plain_error(&format!("cannot serialise the report: {e}"));
                return EXIT_INPUT;
            }
        }
    } else {
        print!("{}", inspect::render(&r));
    }
    EXIT_OK
}

/// `modelc fmt`: rewrite files canonically, or with `check` only report those that differ.
/// `-` formats standard input to standard output.
pub fn fmt(paths: &[impl AsRef<Path>], check: bool, report: &Reporter) -> i32 {
    let mut code = EXIT_OK;
    for path in paths {
        let path = path.as_ref();
        let Some((file, parsed)) = load_and_parse(path, report) else {
            code = EXIT_INPUT;
            continue;
        };
        let formatted = format::format(&parsed, &file);
        if path.as_os_str() == "-" {
            print!("{formatted}");
            continue;
        }
        if formatted == file.text {
            continue;
        }
        if check {
            let line = first_difference(&file.text, &formatted);
            report.plain_error(&format!(
                "`{}` is not formatted (first difference at line {line}); run `modelc fmt {}`",
                file.name, file.name
            ));
            code = EXIT_INPUT;
        } else if let Err(e) = write_atomically(path, &formatted) {
            report.plain_error(&format!("cannot write `{}`: {e}", file.name));
            code = EXIT_INPUT;
        }
    }
    code
}

fn first_difference(a: &str, b: &str) -> usize {
    let mut lines = a.lines().zip(b.lines());
    lines.position(|(x, y)| x != y).unwrap_or_else(|| a.lines().count().min(b.lines().count())) + 1
}

/// Writes through a temporary file and a rename, so an interrupted `fmt` never leaves a
/// half-written source file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("model.fmt-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The syntax tree.
    Ast,
    /// The Graph IR (forward).
    Ir,
    /// The Graph IR with the backward pass.
    Grad,
    /// The Graph IR after fusion.
    Fused,
    /// The Kernel IR.
    Kernels,
    /// Generated CUDA C.
    Cuda,
    /// MLIR.
    Mlir,
}

/// `modelc emit`: print one stage's text form.
pub fn emit(path: &Path, stage: Stage, target: &Target, report: &Reporter) -> i32 {
    match stage {
        Stage::Ast => {
            let Some((file, parsed)) = load_and_parse(path, report) else {
                return EXIT_INPUT;
            };
            print!("{}", dump::dump(&parsed.ast, Some(&file)));
            EXIT_OK
        }
        Stage::Ir => {
            let Some(mut program) = load_program(path, report) else {
                return EXIT_INPUT;
            };
            let graph = modelc_compiler::instantiate(&mut program, target)
                .and_then(|instance| modelc_compiler::elab::forward::elaborate(&program, &instance));
            match graph {
                Ok(graph) => {
                    print!("{graph}");
                    EXIT_OK
                }
                Err(e) => {
                    report_compile_error(&e, &program, report);
                    EXIT_INPUT
                }
            }
        }
        other => not_implemented(&format!("`modelc emit --stage {}`", stage_name(other)), report),
    }
}

fn stage_name(stage: Stage) -> String {
    clap::ValueEnum::to_possible_value(&stage).map(|v| v.get_name().to_string()).unwrap_or_default()
}

/// What the user asked for exists in the design but not yet in this build.
pub fn not_implemented(what: &str, report: &Reporter) -> i32 {
    report.plain_error(&format!(
        "{what} is not implemented yet; this build compiles to the Graph IR (check, fmt, inspect, emit --stage ast|ir)"
    ));
    EXIT_UNSUPPORTED
}
