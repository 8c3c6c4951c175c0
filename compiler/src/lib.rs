//! Resolution, elaboration, shape checking and the Graph IR: AST → checked Graph IR.
//!
//! Not built yet: this crate holds the place of the middle of the pipeline so that the
//! crate graph (`grammar` ← `compiler` ← `modelc`) is fixed from the start.
//! Architecture invariant: `compiler` depends on `grammar` for the AST and diagnostics
//! only; nothing in `grammar` knows about this crate.

pub use modelc_grammar as grammar;
