//! What the integration tests share: finding fixtures and running the front end on them.
#![allow(dead_code)]

use modelc_compiler::graph::op::Op;
use modelc_compiler::graph::Graph;
use modelc_compiler::interp::tensor::Tensor;
use modelc_compiler::{elab::forward::elaborate, instantiate, load as load_program, Target};
use modelc_grammar::{dump, format, parse, Diagnostic, Parsed, SourceFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository root (tests run with the package root as working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.model` files directly in `dir` (relative to the root), sorted, as root-relative paths.
pub fn model_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "model"))
                .map(|p| format!("{dir}/{}", p.file_name().unwrap_or_default().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Every file that must parse and be canonically formatted.
pub fn good_files() -> Vec<String> {
    let mut files = model_files("examples");
    files.extend(model_files("stdlib"));
    files.extend(model_files("tests/parse/ok"));
    files.extend(model_files("tests/elab/ok"));
    files
}

/// A snapshot name from a path: `examples/gpt2.model` → `examples__gpt2`.
pub fn snapshot_name(path: &str) -> String {
    path.trim_end_matches(".model").replace('/', "__")
}

pub fn load(path: &str) -> Result<SourceFile, Box<(Diagnostic, SourceFile)>> {
    let bytes = std::fs::read(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    modelc_grammar::decode(path, bytes)
}

/// Parses a file that must be well formed, with a readable failure.
pub fn parse_ok(file: &SourceFile) -> Parsed {
    parse(file).unwrap_or_else(|d| panic!("{} should parse:\n{}", file.name, d.render(file, false)))
}

/// The checks every well-formed text must pass: formatting is idempotent, keeps the
/// tree and keeps every comment in order. Returns the formatted text.
pub fn check_format_round_trip(file: &SourceFile) -> String {
    let parsed = parse_ok(file);
    let formatted = format::format(&parsed, file);
    let again_file = SourceFile::new(format!("{} (formatted)", file.name), formatted.clone());
    let again = parse(&again_file).unwrap_or_else(|d| {
        panic!(
            "formatted {} does not parse:\n{}\n--- formatted text:\n{formatted}",
            file.name,
            d.render(&again_file, false)
        )
    });
    assert_eq!(
        dump::dump(&again.ast, None),
        dump::dump(&parsed.ast, None),
        "formatting changed the tree of {}\n--- formatted text:\n{formatted}",
        file.name
    );
    let comments = |p: &Parsed| p.scan.comments.iter().map(|c| c.text.clone()).collect::<Vec<_>>();
    assert_eq!(comments(&again), comments(&parsed), "formatting lost or reordered comments of {}", file.name);
    let twice = format::format(&again, &again_file);
    assert_eq!(twice, formatted, "formatting {} is not idempotent", file.name);
    formatted
}

pub fn exists(path: &str) -> bool {
    Path::new(&root().join(path)).exists()
}

/// Compiles `source` (as if it were the file `path`) to its Graph IR.
pub fn compile(path: &str, source: &str, recipe: Option<&str>) -> Graph {
    let file = SourceFile::new(path, source);
    let mut program = load_program(file, &root().join(path)).unwrap_or_else(|e| panic!("{}", e.error.diag.message));
    let target = Target { recipe: recipe.map(str::to_string), ..Target::default() };
    let instance = instantiate(&mut program, &target).unwrap_or_else(|e| panic!("{}", e.diag.message));
    elaborate(&program, &instance).unwrap_or_else(|e| panic!("{}", e.diag.message))
}

/// A deterministic pseudo-random stream (not the interpreter's), for inputs and weights.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// Every parameter filled with small values (`std`), by name order.
pub fn params(graph: &Graph, std: f64, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Lcg(seed);
    let mut out = HashMap::new();
    for n in &graph.nodes {
        if let Op::Param { name } = &n.op {
            let shape: Vec<usize> = n.ty.shape.iter().map(|d| d.as_constant().expect("constant") as usize).collect();
            let len = shape.iter().product();
            out.insert(name.clone(), Tensor::new(shape, (0..len).map(|_| std * rng.next()).collect()));
        }
    }
    out
}

/// Inputs for symbols `B = 2` and every other symbol `= 6`; integer inputs are small ids.
pub fn inputs(graph: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Lcg(seed);
    let mut out = HashMap::new();
    for n in &graph.nodes {
        if let Op::Input { name } = &n.op {
            let shape: Vec<usize> =
                n.ty.shape
                    .iter()
                    .map(|d| graph.eval_dim(d, &|s: &str| Some(if s == "B" { 2 } else { 6 })).expect("bound") as usize)
                    .collect();
            let len = shape.iter().product();
            let data = (0..len)
                .map(|_| if n.ty.dtype.is_float() { rng.next() } else { ((rng.next() + 1.0) * 2.0).floor() })
                .collect();
            out.insert(name.clone(), Tensor::new(shape, data));
        }
    }
    out
}

/// Every `.model` file under `dir` is rejected by `modelc check` with exit 1, no panic, a
/// location in the file (or in `imported`, a folder of files it imports) and a caret.
/// Returns each file's snapshot name and rendered diagnostics, for the caller to snapshot
/// (insta names snapshots after the calling module).
pub fn rejected(dir: &str, imported: Option<&str>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for path in &model_files(dir) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelc"))
            .current_dir(root())
            .args(["--color", "never", "check", path])
            .output()
            .expect("running modelc");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{path} should be rejected:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{path}: {stderr}");
        let located = stderr.contains(&format!("{path}:")) || imported.is_some_and(|i| stderr.contains(i));
        assert!(located && stderr.contains('^'), "{path}: not located:\n{stderr}");
        found.push((snapshot_name(path), stderr));
    }
    found
}
