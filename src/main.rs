//! The `modelc` command line: parses arguments and hands each subcommand to the driver.

use clap::{Parser, Subcommand, ValueEnum};
use modelc::commands::{self, Stage};
use modelc::report::{MessageFormat, Reporter};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Compiler and runtime for the `.model` language.
#[derive(Parser)]
#[command(name = "modelc", version, about)]
struct Cli {
    /// How diagnostics are printed.
    #[arg(long, global = true, value_enum, default_value = "human")]
    message_format: Format,
    /// Colour in diagnostics.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: Color,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

/// Which model to build: shared by the commands that compile one.
#[derive(clap::Args)]
struct TargetArgs {
    /// The model to build (default: the file's only model).
    #[arg(long)]
    model: Option<String>,
    /// Build the model of this recipe, with its arguments.
    #[arg(long)]
    recipe: Option<String>,
    /// Override a model argument: `--set d=512` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
    set: Vec<(String, String)>,
}

/// Which backend compiles and runs the programs, and the memory it may use.
#[derive(clap::Args, Debug)]
struct BackendArgs {
    /// `interp` (the reference interpreter); `cpu`, `cuda` and `mlir` are not built yet.
    #[arg(long, default_value = "interp")]
    backend: String,
    /// Refuse to start when the planned peak exceeds this (`8GiB`, `512MiB`, bytes); the
    /// memory free on the device is always checked.
    #[arg(long, value_name = "SIZE", value_parser = modelc_runtime::memory::parse_size)]
    memory_limit: Option<u64>,
}

impl TargetArgs {
    fn target(self) -> modelc_compiler::Target {
        modelc_compiler::Target { model: self.model, recipe: self.recipe, sets: self.set }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Check files for errors.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Format files in place (`-` reads standard input and writes standard output).
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Change nothing; fail if a file is not formatted.
        #[arg(long)]
        check: bool,
    },
    /// Print a stage of the pipeline.
    Emit {
        file: PathBuf,
        #[arg(long, value_enum)]
        stage: Stage,
        #[command(flatten)]
        target: TargetArgs,
        /// Print the Graph IR right after this pass of the pipeline (simplify, cse, dce).
        #[arg(long, value_name = "PASS")]
        after: Option<String>,
        /// Print the Graph IR after every pass, each under a `; after PASS` line.
        #[arg(long, conflicts_with = "after")]
        print_after_all: bool,
    },
    /// Parameters per block with the exact total, FLOPs and memory of a model.
    Inspect {
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        /// Batch size for FLOPs and memory (default: the recipe's, else 1).
        #[arg(long)]
        batch: Option<i64>,
        /// Sequence length for FLOPs and memory (default: the recipe's, else 1024).
        #[arg(long)]
        seq: Option<i64>,
        /// Print one JSON object (`params.total` is the exact count).
        #[arg(long)]
        json: bool,
    },
    /// One forward pass of a recipe's model on a batch of the built-in corpus: the loss.
    Run {
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        backend: BackendArgs,
        /// Seed for the parameters and the batch (default: the recipe's).
        #[arg(long)]
        seed: Option<u64>,
        /// Parameters from a checkpoint: a safetensors file, or a run directory (its latest).
        #[arg(long, conflicts_with = "weights")]
        checkpoint: Option<PathBuf>,
        /// Parameters from a Hugging Face / PyTorch safetensors file (or a directory holding
        /// `model.safetensors`), matched by name; `stored` layouts are transposed.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// A `tokenizer.json`, a WordPiece `vocab.txt`, or a directory holding one (default:
        /// the `--weights` directory's, else bytes).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Run the model on this text instead of the objective (repeatable: one batch,
        /// padded, with the mask as the model's `bool` input).
        #[arg(long = "text", value_name = "TEXT")]
        texts: Vec<String>,
        /// Print JSON: `{"output": [...]}`, or `{"loss": x}`.
        #[arg(long)]
        json: bool,
    },
    /// Train a recipe's model on the built-in corpus: `DIR/metrics.jsonl` per step.
    Train {
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        backend: BackendArgs,
        /// Optimizer steps (default: the recipe's `steps`).
        #[arg(long)]
        steps: Option<u64>,
        /// Train on this text file (bytes) instead of the built-in corpus.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output directory (default: `runs/FILE-RECIPE`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seed for parameters, data order and dropout (default: the recipe's).
        #[arg(long)]
        seed: Option<u64>,
        /// Checkpoint every N steps (default: the recipe's `checkpoint = every(N)`); the
        /// last step is always checkpointed.
        #[arg(long)]
        checkpoint_every: Option<u64>,
        /// Continue the run in DIR from its newest intact checkpoint; later steps equal an
        /// uninterrupted run's bit for bit. Its seed, steps and data are the defaults.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Start over in an `--out` directory that holds a run (its files are removed).
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// When the run diverges, re-run the step through the interpreter to find the
        /// first op whose output went non-finite.
        #[arg(long)]
        detect_anomaly: bool,
    },
    /// Fold a LoRA recipe's adapters into the base weights: a plain checkpoint that the
    /// model without the adapter loads.
    Merge {
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        backend: BackendArgs,
        /// The adapted checkpoint: a safetensors file, or a run directory (its latest).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Where to write the merged weights.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Generate text with a decoder (default recipe `tiny`), streaming it to stdout.
    Generate {
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        backend: BackendArgs,
        /// Parameters: a safetensors file or a run directory (default: the recipe's
        /// initialisation, or its `from` checkpoint).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The text to continue.
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Sample among the K most likely tokens (0: all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Sample from the smallest set of tokens whose probability reaches P.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Divide seen tokens' positive logits by R (multiply negative ones).
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f64,
        /// Beam search with N beams (deterministic; ignores temperature, top-k, top-p).
        #[arg(long)]
        beams: Option<usize>,
        /// Beam search ranks sequences by log p / length^ALPHA.
        #[arg(long, default_value_t = 1.0)]
        length_penalty: f64,
        /// Seed for sampling (default: the recipe's).
        #[arg(long)]
        seed: Option<u64>,
        /// A `tokenizer.json` or `vocab.txt` (default: bytes).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Recompute the whole sequence for every token instead of using the KV cache.
        #[arg(long)]
        no_cache: bool,
        /// Print `{"tokens": [...], "text": "..."}` at the end instead of streaming.
        #[arg(long)]
        json: bool,
    },
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected NAME=VALUE, found `{s}`")),
    }
}

fn main() {
    // Rust ignores SIGPIPE, so a closed pipe (`modelc run ... | head`) would make every
    // `println!` panic; the default action ends the process quietly, as other tools do.
    #[cfg(unix)]
    // SAFETY: called first in `main`, before any thread exists; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let format = match cli.message_format {
        Format::Human => MessageFormat::Human,
        Format::Json => MessageFormat::Json,
    };
    let report = Reporter { format, color };
    // Trees of untrusted input can be deep (long operator chains); give every stage room.
    let code = modelc_grammar::with_big_stack(move || match cli.command {
        Command::Check { files } => commands::check(&files, &report),
        Command::Fmt { files, check } => commands::fmt(&files, check, &report),
        Command::Emit { file, stage, target, after, print_after_all } => {
            let print = commands::PrintAfter { after, all: print_after_all };
            commands::emit(&file, stage, &target.target(), &print, &report)
        }
        Command::Inspect { file, target, batch, seq, json } => {
            commands::inspect(&file, &target.target(), (batch, seq), json, &report)
        }
        Command::Run { file, target, backend, seed, checkpoint, weights, tokenizer, texts, json } => {
            let args = commands::RunArgs {
                backend: &backend.backend,
                memory_limit: backend.memory_limit,
                seed,
                checkpoint: checkpoint.as_deref(),
                weights: weights.as_deref(),
                tokenizer: tokenizer.as_deref(),
                texts: &texts,
                json,
            };
            commands::run(&file, &target.target(), &args, &report)
        }
        Command::Train {
            file,
            target,
            backend,
            steps,
            data,
            out,
            seed,
            checkpoint_every,
            resume,
            overwrite,
            detect_anomaly,
        } => {
            let args = modelc::train::command::TrainArgs {
                backend: &backend.backend,
                memory_limit: backend.memory_limit,
                data: data.as_deref(),
                steps,
                out: out.as_deref(),
                seed,
                checkpoint_every,
                resume: resume.as_deref(),
                overwrite,
                detect_anomaly,
            };
            modelc::train::command::train(&file, &target.target(), &args, &report)
        }
        Command::Merge { file, target, backend, checkpoint, out } => {
            commands::merge(&file, &target.target(), &backend.backend, &checkpoint, &out, &report)
        }
        Command::Generate {
            file,
            target,
            backend,
            checkpoint,
            prompt,
            max_tokens,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            beams,
            length_penalty,
            seed,
            tokenizer,
            no_cache,
            json,
        } => {
            let args = modelc::generate::command::GenerateArgs {
                backend: &backend.backend,
                memory_limit: backend.memory_limit,
                checkpoint: checkpoint.as_deref(),
                prompt: &prompt,
                max_tokens,
                sampling: modelc_runtime::sampling::Sampling { temperature, top_k, top_p, repetition_penalty },
                beams,
                length_penalty,
                seed,
                tokenizer: tokenizer.as_deref(),
                cache: !no_cache,
                json,
            };
            modelc::generate::command::generate(&file, &target.target(), &args, &report)
        }
    });
    std::process::exit(code);
}
