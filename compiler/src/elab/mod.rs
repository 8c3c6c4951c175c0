//! Elaboration: the checked AST of a program → what a model is made of. `value` and
//! `eval` evaluate compile-time expressions; `instance` expands blocks into the tree of
//! parameters and sub-blocks that counts and names build on; `forward` and its siblings
//! turn `forward` bodies into the Graph IR:
//! - `forward`: the entry point and the state (`Builder`, `Frame`, `RValue`);
//! - `calls`: statements, sub-block calls (inlined under their scope), P-tuning;
//! - `expr`: names, members, operators;
//! - `signature`: declared types unified with the values passed (`B`, `T`, `...`);
//! - `primitives`: the one table of primitives (signatures, builders, did-you-mean),
//!   with the builders in `builders` and `attention_moe`;
//! - `stack`: `stack(n)` calls lifted to a leading copy axis;
//! - `einops`: `rearrange` patterns → reshape/transpose plans.

mod attention_moe;
mod builders;
mod calls;
pub mod einops;
pub mod eval;
mod expr;
pub mod forward;
pub mod instance;
mod primitives;
mod signature;
mod stack;
pub mod value;
