//! Executables and what drives them: the training loop (`train`), the run directory as a
//! journal (`run_dir`), memory checked before allocating (`memory`), checkpoints, seeded
//! initialisation (`init`), the built-in corpus and batches (`data`, `batches`), the
//! reference optimizers (`optim`), learning-rate schedules, loss scaling, tokenizers and
//! token sampling. Architecture invariant: the runtime sees names, shapes, buffers and
//! executables, never the AST or the Graph IR, so it depends on no other modelc crate.

pub mod batches;
pub mod checkpoint;
pub mod data;
pub mod executable;
pub mod fault;
pub mod init;
pub mod loss_scale;
pub mod memory;
pub mod optim;
pub mod rng;
pub mod run_dir;
pub mod sampling;
pub mod schedule;
pub mod tokenizer;
pub mod tokens;
pub mod train;
