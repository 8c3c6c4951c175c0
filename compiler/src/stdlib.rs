//! The standard library: `.model` sources from `stdlib/`, embedded in the binary so that
//! `use std.nn.{...}` needs no files at run time. The compiler gives them no other
//! special treatment.

/// `(module name, file name, source)`; `use std.NAME.{...}` finds module `NAME`.
pub const MODULES: &[(&str, &str, &str)] = &[
    ("nn", "std/nn.model", include_str!("../../stdlib/nn.model")),
    ("adapters", "std/adapters.model", include_str!("../../stdlib/adapters.model")),
];

/// `(module name, file name, source)` of a stdlib module.
pub fn module(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    MODULES.iter().find(|(n, _, _)| *n == name).copied()
}
