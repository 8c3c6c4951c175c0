//! One function per subcommand. Each returns the process exit code: 0 on success, 1 when
//! the input has errors (reported as diagnostics), 2 for what the user asked but modelc
//! cannot do yet.

use crate::report::Reporter;
use modelc_compiler::Lowering;
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
pub(crate) fn load_program(path: &Path, report: &Reporter) -> Option<Program> {
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

pub(crate) fn report_compile_error(e: &modelc_compiler::Error, program: &Program, report: &Reporter) {
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
        // Every bad recipe entry, not only the first; then everything else `check` builds
        // (its first error, unless that is one of the entries already reported).
        let entries = modelc_compiler::recipe::errors(&program);
        for e in &entries {
            report_compile_error(e, &program, report);
        }
        if let Err(e) = modelc_compiler::check(&mut program) {
            let seen = entries.iter().any(|r| r.diag.message == e.diag.message && r.diag.span == e.diag.span);
            if !seen {
                report_compile_error(&e, &program, report);
            }
            code = EXIT_INPUT;
        }
        if !entries.is_empty() {
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
    for (flag, value) in [("--batch", workload.0), ("--seq", workload.1)] {
        if let Some(v) = value.filter(|&v| v < 1) {
            report.plain_error(&format!("`{flag} {v}`: must be at least 1"));
            return EXIT_INPUT;
        }
    }
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
    /// The Kernel IR: the training step's programs with a recipe, else the forward.
    Kernel,
    /// Generated CUDA C.
    Cuda,
    /// MLIR.
    Mlir,
}

/// Parameters the reference interpreter will hold (in f64): beyond this it would take
/// minutes and gigabytes, which is the compiled backends' job.
const INTERPRETER_PARAM_LIMIT: u64 = 50_000_000;

/// What `run` and `train` execute: the recipe's model instance, its graph (with the
/// objective appended and, for training, its backward pass), and the recipe's workload.
/// `None` after reporting why not (exit code in the error).
pub(crate) fn interpreter_graph(
    program: &mut Program,
    target: &Target,
    what: Lowering,
    report: &Reporter,
) -> Result<(modelc_compiler::elab::instance::Instance, modelc_compiler::graph::Graph, modelc_compiler::Workload), i32>
{
    let built = modelc_compiler::instantiate(program, target).and_then(|instance| {
        let graph = modelc_compiler::elab::forward::elaborate(program, &instance)?;
        let w = modelc_compiler::workload(program, target, None, None)?;
        Ok((instance, graph, w))
    });
    let (instance, graph, w) = built.map_err(|e| {
        report_compile_error(&e, program, report);
        EXIT_INPUT
    })?;
    let total = instance.param_count();
    if total > INTERPRETER_PARAM_LIMIT {
        report.plain_error(&format!(
            "`{}` has {} parameters, too many for the reference interpreter (at most {}); run a small recipe (`--recipe tiny`) or `--set` a smaller configuration",
            instance.block_name,
            inspect::thousands(total),
            inspect::thousands(INTERPRETER_PARAM_LIMIT)
        ));
        return Err(EXIT_UNSUPPORTED);
    }
    let graph = modelc_compiler::lower(graph, &w, what).map_err(|why| {
        report.plain_error(&why);
        EXIT_UNSUPPORTED
    })?;
    Ok((instance, graph, w))
}

/// How `modelc run` was asked to run, beyond the target.
pub struct RunArgs<'a> {
    /// `--backend`: which backend compiles and runs the model.
    pub backend: &'a str,
    pub seed: Option<u64>,
    /// A modelc checkpoint: a safetensors file or a run directory.
    pub checkpoint: Option<&'a Path>,
    /// Another framework's safetensors weights, matched by name (`--weights`).
    pub weights: Option<&'a Path>,
    pub tokenizer: Option<&'a Path>,
    /// Texts to run the model on; none runs the recipe's objective on the built-in corpus.
    pub texts: &'a [String],
    pub json: bool,
    /// `--memory-limit`, in bytes.
    pub memory_limit: Option<u64>,
}

/// The parameters `run` uses: imported weights, a checkpoint, or fresh ones.
pub(crate) fn run_params(
    instance: &modelc_compiler::elab::instance::Instance,
    w: &modelc_compiler::Workload,
    args: &RunArgs,
    seed: u64,
) -> Result<modelc_runtime::checkpoint::Tensors, String> {
    if let Some(w) = args.weights {
        return crate::weights::import(instance, w)
            .map(|p| p.into_iter().map(|(k, t)| (k, (t.shape, t.data))).collect());
    }
    let Some(p) = args.checkpoint else {
        return crate::train::initial_params(instance, w, seed);
    };
    crate::train::load_weights(p)
}

/// Every id a batch holds must be a row of each embedding the token inputs index: a
/// vocabulary smaller than the text's ids is an error naming the table, before any step
/// (at run time it would be an index out of range deep inside the step).
pub(crate) fn check_token_ids(
    graph: &modelc_compiler::graph::Graph,
    w: &modelc_compiler::Workload,
    text_max: u32,
    report: &Reporter,
) -> Result<(), i32> {
    use modelc_compiler::graph::op::Op;
    let max = w.recipe.objective.batches.max_id(text_max) as i64;
    for node in &graph.nodes {
        let Op::Embedding = node.op else { continue };
        let (table, ids) = (node.args[0].0 as usize, node.args[1].0 as usize);
        if !matches!(graph.nodes[ids].op, Op::Input { .. }) {
            continue;
        }
        // The table, through the casts mixed precision puts in front of it.
        let mut t = table;
        while let Op::Cast { .. } = graph.nodes[t].op {
            t = graph.nodes[t].args[0].0 as usize;
        }
        let Some(rows) = graph.nodes[t].ty.shape.first().and_then(|d| d.as_constant()) else { continue };
        if rows <= max {
            let name = match &graph.nodes[t].op {
                Op::Param { name } => format!("`{name}`"),
                _ => "an embedding table".to_string(),
            };
            report.plain_error(&format!(
                "the batches hold token ids up to {max}, but {name} has {rows} rows\n  help: the model's vocabulary must be at least {} (the byte tokenizer's ids are 0..255, and the objective's mask or sentinels come after them)",
                max + 1
            ));
            return Err(EXIT_INPUT);
        }
    }
    Ok(())
}

/// Where the parameters of `run` and `generate` come from, for errors.
pub(crate) fn params_source(args: &RunArgs) -> String {
    match (args.weights, args.checkpoint) {
        (Some(p), _) | (None, Some(p)) => format!("`{}`", p.display()),
        (None, None) => "the initial parameters".to_string(),
    }
}

/// The training text must hold one sequence: fewer tokens than a window of the
/// objective is an error at the recipe's `seq:` (or a plain one without a `data` entry).
pub(crate) fn check_text_length(
    program: &Program,
    w: &modelc_compiler::Workload,
    tokens: usize,
    name: &str,
    report: &Reporter,
) -> Result<(), i32> {
    let seq = w.seq.max(1) as usize;
    let window = w.recipe.objective.batches.window(seq);
    if tokens >= window {
        return Ok(());
    }
    let what = if name == "builtin" { "the built-in corpus".to_string() } else { format!("`{name}`") };
    let why = if window > seq {
        format!("a {} sequence reads seq + 1 tokens", w.recipe.objective.name())
    } else {
        "one sequence reads seq tokens".to_string()
    };
    let message = format!(
        "{what} holds {} tokens, fewer than one sequence: `seq: {seq}` needs at least {} ({why})",
        inspect::thousands(tokens as u64),
        inspect::thousands(window as u64)
    );
    let help = format!("lower `seq` to at most {}, or train on more text", tokens.saturating_sub(window - seq).max(1));
    match &w.recipe.data {
        Some(data) => {
            let diag = modelc_grammar::Diagnostic::error(message, data.seq_at)
                .with_label("too long for the text")
                .with_help(help);
            report_compile_error(
                &modelc_compiler::Error::new(modelc_compiler::error::FileId(0), diag),
                program,
                report,
            );
        }
        None => report.plain_error(&format!("{message}\n  help: {help}")),
    }
    Err(EXIT_INPUT)
}

/// The backend `--backend` names, or the exit code after saying why not.
/// A backend that exists but is not built is exit 2 (not yet); an unknown name is exit 1.
pub(crate) fn backend(name: &str, report: &Reporter) -> Result<Box<dyn modelc_compiler::backend::Backend>, i32> {
    modelc_compiler::backend::select(name).map_err(|why| {
        report.plain_error(&why);
        let known = modelc_compiler::backend::BACKENDS.iter().any(|(n, _, _)| *n == name);
        if known {
            EXIT_UNSUPPORTED
        } else {
            EXIT_INPUT
        }
    })
}

/// `modelc run`: one forward pass. With `--text`, the model's output for each text (padded
/// into one batch with a `bool` mask input, when the model takes one); otherwise the loss
/// of the recipe's objective on a batch of the built-in corpus.
pub fn run(path: &Path, target: &Target, args: &RunArgs, report: &Reporter) -> i32 {
    use modelc_runtime::executable::CallOptions;
    let Some(mut program) = load_program(path, report) else {
        return EXIT_INPUT;
    };
    let backend = match backend(args.backend, report) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let what = if args.texts.is_empty() { Lowering::Loss } else { Lowering::Outputs };
    let (instance, graph, w) = match interpreter_graph(&mut program, target, what, report) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let seed = args.seed.unwrap_or(w.recipe.seed);
    let params = match run_params(&instance, &w, args, seed) {
        Ok(params) => params,
        Err(why) => {
            report.plain_error(&why);
            return EXIT_INPUT;
        }
    };
    if args.texts.is_empty() {
        let corpus = modelc_runtime::data::Corpus::builtin();
        let max = corpus.tokens.iter().copied().max().unwrap_or(0);
        let checked = check_text_length(&program, &w, corpus.tokens.len(), "builtin", report)
            .and_then(|_| check_token_ids(&graph, &w, max, report));
        if let Err(code) = checked {
            return code;
        }
    }
    let inputs = if args.texts.is_empty() {
        corpus_inputs(&graph, &w, seed)
    } else {
        // A `--weights` directory that brings its tokenizer is used when none is given.
        let bundled = args.weights.filter(|w| w.join("tokenizer.json").exists() || w.join("vocab.txt").exists());
        text_inputs(&graph, args.tokenizer.or(bundled), args.texts)
    };
    let inputs = match inputs {
        Ok(inputs) => inputs,
        Err((why, code)) => {
            report.plain_error(&why);
            return code;
        }
    };
    let buffers = crate::train::model_buffers(&instance);
    let from = params_source(args);
    let executed = backend
        .compile(buffers, vec![modelc_compiler::backend::Program::of_outputs("run", graph)])
        .and_then(|mut exe| {
            let planned = inputs.iter().map(|(k, v)| (k.as_str(), v.shape.clone())).collect();
            let call = modelc_runtime::memory::PlannedCall { program: "run", inputs: planned };
            let remedies = "lower the recipe's `batch` or `seq`, or pass fewer or shorter `--text`s";
            modelc_runtime::memory::check(exe.as_ref(), &[call], args.memory_limit, remedies)?;
            crate::train::write_params(exe.as_mut(), params, &from)?;
            let inputs = inputs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            exe.call("run", inputs, CallOptions { training: false, seed, check_finite: false })
                .map_err(|e| format!("running the model: {e}"))
        });
    let out = match executed.map(|r| r.into_iter().next()) {
        Ok(Some((_, out))) => out,
        Ok(None) => {
            report.plain_error("the model returned nothing");
            return EXIT_INPUT;
        }
        Err(why) => {
            report.plain_error(&why);
            return EXIT_INPUT;
        }
    };
    let out = &out;
    if !args.texts.is_empty() {
        print_output(out, args.json);
        return EXIT_OK;
    }
    let loss = out.data[0];
    if args.json {
        println!("{}", serde_json::json!({ "loss": loss }));
    } else {
        let objective = w.recipe.objective.name();
        println!(
            "loss {loss:.4} ({objective}, {} x {} tokens of the built-in corpus, {} with {} parameters, seed {seed})",
            w.batch.max(1),
            w.seq.max(1),
            instance.block_name,
            inspect::thousands(instance.param_count())
        );
    }
    EXIT_OK
}

type Inputs = Vec<(String, modelc_runtime::executable::HostTensor)>;

/// One batch of the recipe's objective from the built-in corpus, and its targets.
fn corpus_inputs(
    graph: &modelc_compiler::graph::Graph,
    w: &modelc_compiler::Workload,
    seed: u64,
) -> Result<Inputs, (String, i32)> {
    let (b, t) = (w.batch.max(1) as usize, w.seq.max(1) as usize);
    let corpus = modelc_runtime::data::Corpus::builtin();
    let (tokens, targets) = w.recipe.objective.batches.batch(&corpus, b, t, seed, 0);
    let names = crate::train::token_inputs(graph);
    if names.is_empty() {
        return Err(("the model takes no token ids".into(), EXIT_UNSUPPORTED));
    }
    let mut inputs: Inputs = names.into_iter().zip(tokens).collect();
    inputs.push(("targets".to_string(), targets));
    Ok(inputs)
}

/// The texts, tokenized and right-padded into one batch: the model's integer input gets
/// the ids, its `bool` input (if any) is true at real tokens.
fn text_inputs(
    graph: &modelc_compiler::graph::Graph,
    tokenizer: Option<&Path>,
    texts: &[String],
) -> Result<Inputs, (String, i32)> {
    use modelc_compiler::graph::{op::Op, types::DType};
    use modelc_runtime::executable::HostTensor as Tensor;
    let tok = match tokenizer {
        None => modelc_runtime::tokenizer::Tokenizer::Bytes,
        Some(p) => modelc_runtime::tokenizer::Tokenizer::load(p, None).map_err(|e| (e, EXIT_INPUT))?,
    };
    let ids: Vec<Vec<u32>> =
        texts.iter().map(|t| tok.encode(t)).collect::<Result<_, _>>().map_err(|e| (e, EXIT_INPUT))?;
    let (b, t) = (ids.len(), ids.iter().map(Vec::len).max().unwrap_or(0).max(1));
    let pad = f64::from(tok.pad_id());
    let tokens = ids.iter().flat_map(|row| (0..t).map(|i| row.get(i).map_or(pad, |&id| f64::from(id))));
    let mask = ids.iter().flat_map(|row| (0..t).map(|i| if i < row.len() { 1.0 } else { 0.0 }));
    let (tokens, mask) = (Tensor::new(vec![b, t], tokens.collect()), Tensor::new(vec![b, t], mask.collect()));
    let mut inputs = Inputs::new();
    let mut ids_fed = false;
    for node in &graph.nodes {
        let Op::Input { name } = &node.op else { continue };
        let slot = match node.ty.dtype {
            DType::Bool if node.ty.rank() == 2 => &mask,
            DType::I32 | DType::I64 if node.ty.rank() == 2 && !ids_fed => {
                ids_fed = true;
                &tokens
            }
            _ => {
                return Err((
                    format!(
                        "`--text` feeds models whose inputs are token ids `[B, T]` and optionally a `bool[B, T]` mask; input `{name}` is {}",
                        node.ty
                    ),
                    EXIT_UNSUPPORTED,
                ))
            }
        };
        inputs.push((name.clone(), slot.clone()));
    }
    Ok(inputs)
}

/// Prints a `[B, ...]` output: `{"output": [...]}` with `--json`, else one line per row.
fn print_output(out: &modelc_runtime::executable::HostTensor, json: bool) {
    fn nest(shape: &[usize], data: &[f64]) -> serde_json::Value {
        match shape.split_first() {
            None => serde_json::json!(data[0] as f32),
            Some((&n, rest)) => {
                let step = rest.iter().product::<usize>();
                serde_json::Value::Array((0..n).map(|i| nest(rest, &data[i * step..(i + 1) * step])).collect())
            }
        }
    }
    if json {
        println!("{}", serde_json::json!({ "output": nest(&out.shape, &out.data) }));
        return;
    }
    let rows = out.shape.first().copied().unwrap_or(1).max(1);
    let per = out.data.len() / rows;
    println!("output {:?}", out.shape);
    for (i, row) in out.data.chunks(per.max(1)).enumerate() {
        let head: Vec<String> = row.iter().take(8).map(|x| format!("{x:.6}")).collect();
        let more = if row.len() > 8 { ", ..." } else { "" };
        println!("  [{i}] {}{more}", head.join(", "));
    }
}

/// `modelc merge`: a LoRA run's checkpoint with `lora_a @ lora_b * alpha / rank` folded
/// into each adapted weight, written as a plain checkpoint of the base model.
pub fn merge(
    path: &Path,
    target: &Target,
    backend_name: &str,
    checkpoint: &Path,
    out: &Path,
    report: &Reporter,
) -> i32 {
    let Some(program) = load_program(path, report) else {
        return EXIT_INPUT;
    };
    let backend = match backend(backend_name, report) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let mut target = target.clone();
    if target.recipe.is_none() {
        target.recipe = Some("tiny".to_string());
    }
    let w = match modelc_compiler::workload(&program, &target, None, None) {
        Ok(w) => w,
        Err(e) => {
            report_compile_error(&e, &program, report);
            return EXIT_INPUT;
        }
    };
    let Some(lora) = w.lora() else {
        report.plain_error(&format!(
            "recipe `{}` has no `adapter = lora(...)`: there is nothing to merge",
            target.recipe.as_deref().unwrap_or_default()
        ));
        return EXIT_INPUT;
    };
    let merged = crate::train::load_weights(checkpoint).and_then(|mut tensors| {
        let n = crate::merge::merge(backend.as_ref(), &mut tensors, lora.scale())?;
        if n == 0 {
            return Err(format!("`{}` holds no `lora_a`/`lora_b` tensors", checkpoint.display()));
        }
        modelc_runtime::checkpoint::save(out, &tensors).map(|_| n)
    });
    match merged {
        Ok(n) => {
            eprintln!("merged {n} adapters (scale {}) into {}", lora.scale(), out.display());
            EXIT_OK
        }
        Err(why) => {
            report.plain_error(&why);
            EXIT_INPUT
        }
    }
}

/// Which passes `modelc emit` shows the IR after: `--after PASS` or `--print-after-all`.
#[derive(Clone, Debug, Default)]
pub struct PrintAfter {
    pub after: Option<String>,
    pub all: bool,
}

/// `modelc emit`: print one stage's text form; for the Graph IR, optionally after one
/// pass of the pipeline or after each of them.
pub fn emit(path: &Path, stage: Stage, target: &Target, print: &PrintAfter, report: &Reporter) -> i32 {
    let wants_passes = print.after.is_some() || print.all;
    if wants_passes && !matches!(stage, Stage::Ir | Stage::Grad) {
        report.plain_error(
            "`--after` and `--print-after-all` show the Graph IR: use them with `--stage ir` or `--stage grad`",
        );
        return EXIT_INPUT;
    }
    // An unknown pass is reported before any work.
    let stop = match &print.after {
        None => None,
        Some(name) => match modelc_compiler::passes::pass(name) {
            Some(p) => Some(p.name),
            None => {
                let names = modelc_compiler::passes::PASSES.iter().map(|p| p.name);
                let hint = match modelc_compiler::error::suggest(name, names.clone()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the passes are {}", names.collect::<Vec<_>>().join(", ")),
                };
                report.plain_error(&format!("`--after {name}`: there is no pass `{name}`; {hint}"));
                return EXIT_INPUT;
            }
        },
    };
    match stage {
        Stage::Ast => {
            let Some((file, parsed)) = load_and_parse(path, report) else {
                return EXIT_INPUT;
            };
            print!("{}", dump::dump(&parsed.ast, Some(&file)));
            EXIT_OK
        }
        Stage::Ir | Stage::Grad => {
            let Some(mut program) = load_program(path, report) else {
                return EXIT_INPUT;
            };
            let built = modelc_compiler::instantiate(&mut program, target).and_then(|instance| {
                let graph = modelc_compiler::elab::forward::elaborate(&program, &instance)?;
                let w = modelc_compiler::workload(&program, target, None, None)?;
                Ok((graph, w))
            });
            let (graph, w) = match built {
                Ok(b) => b,
                Err(e) => {
                    report_compile_error(&e, &program, report);
                    return EXIT_INPUT;
                }
            };
            // The forward graph (with the recipe's precision casts), or the training graph:
            // objective, precision, then the backward pass; then the pass pipeline.
            let to = if stage == Stage::Ir { Lowering::Outputs } else { Lowering::Training };
            let mut show = |pass: &modelc_compiler::passes::Pass, g: &modelc_compiler::graph::Graph| {
                if print.all {
                    println!("; after {}: {}", pass.name, pass.description);
                    print!("{g}");
                } else if stop == Some(pass.name) {
                    print!("{g}");
                }
            };
            let lowered = modelc_compiler::lower_unoptimized(graph, &w, to)
                .and_then(|g| modelc_compiler::passes::pipeline_observed(g, &mut show));
            match lowered {
                Ok(g) => {
                    if !wants_passes {
                        print!("{g}");
                    }
                    EXIT_OK
                }
                Err(why) => {
                    report.plain_error(&why);
                    EXIT_UNSUPPORTED
                }
            }
        }
        Stage::Kernel => emit_kernel(path, target, report),
        other => not_implemented(&format!("`modelc emit --stage {}`", stage_name(other)), report),
    }
}

/// `emit --stage kernel`: each program lowered to Kernel IR, under a `; program NAME` line:
/// with a recipe the training step's `step` and `apply`, else the model's forward.
fn emit_kernel(path: &Path, target: &Target, report: &Reporter) -> i32 {
    let Some(mut program) = load_program(path, report) else {
        return EXIT_INPUT;
    };
    let built = modelc_compiler::instantiate(&mut program, target).and_then(|instance| {
        let graph = modelc_compiler::elab::forward::elaborate(&program, &instance)?;
        let w = modelc_compiler::workload(&program, target, None, None)?;
        Ok((instance, graph, w))
    });
    let (instance, graph, w) = match built {
        Ok(b) => b,
        Err(e) => {
            report_compile_error(&e, &program, report);
            return EXIT_INPUT;
        }
    };
    let programs = if target.recipe.is_some() {
        modelc_compiler::lower(graph, &w, Lowering::Training)
            .and_then(|g| crate::train::training_programs(g, &instance, &w))
            .map(|t| t.programs)
    } else {
        modelc_compiler::lower(graph, &w, Lowering::Outputs)
            .map(|g| vec![modelc_compiler::backend::Program::of_outputs("forward", g)])
    };
    let programs = match programs {
        Ok(p) => p,
        Err(why) => {
            report.plain_error(&why);
            return EXIT_UNSUPPORTED;
        }
    };
    for p in programs {
        match modelc_compiler::kernel::lower::lower(&p.graph, &p.returns) {
            Ok(k) => {
                println!("; program {}: {}", p.name, modelc_compiler::kernel::text::summary(&k));
                print!("{k}");
            }
            Err(why) => {
                report.plain_error(&format!("lowering program `{}` to Kernel IR: {why}", p.name));
                return EXIT_UNSUPPORTED;
            }
        }
    }
    EXIT_OK
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
