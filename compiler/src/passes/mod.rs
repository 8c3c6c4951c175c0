//! Graph IR → Graph IR rewrites, run between elaboration (plus the objective) and
//! autodiff. Each pass is one module and keeps the graph's meaning up to rounding.

pub mod kv_cache;
pub mod precision;
