//! Buffers, executor, optimizers, schedules, data loading and checkpoints.
//!
//! Not built yet. Architecture invariant: the runtime sees compiled kernels and buffers,
//! never the AST or the Graph IR, so it depends on no other modelc crate.
