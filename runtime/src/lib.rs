//! Buffers, executor, optimizers, schedules, data loading and checkpoints.
//!
//! Built so far: seeded parameter initialisation (`init`), the built-in corpus with the
//! byte tokenizer (`data`), optimizers (`optim`) and learning-rate schedules (`schedule`), tokenizers, loss scaling and token sampling (`sampling`). Architecture invariant: the runtime sees names, shapes,
//! buffers and (later) compiled kernels, never the AST or the Graph IR, so it depends on
//! no other modelc crate.

pub mod batches;
pub mod checkpoint;
pub mod data;
pub mod executable;
pub mod init;
pub mod loss_scale;
pub mod optim;
pub mod rng;
pub mod sampling;
pub mod schedule;
pub mod tokenizer;
pub mod tokens;
pub mod train;
