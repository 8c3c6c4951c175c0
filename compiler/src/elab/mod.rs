//! Elaboration: the checked AST of a program → what a model is made of. `value` and
//! `eval` evaluate compile-time expressions; `instance` expands blocks into the tree of
//! parameters and sub-blocks that counts, names and (next) the Graph IR build on.

pub mod einops;
pub mod eval;
pub mod forward;
pub mod instance;
pub mod value;
