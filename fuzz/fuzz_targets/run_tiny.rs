//! Fuzzes the runtime: libFuzzer bytes → a mutated `tiny` recipe of one example (numbers,
//! names and recipe entries chosen by the bytes) → `check`, then `run` (one forward, the
//! loss) and a 2-step `train` through the `modelc` library, as the CLI runs them.
//!
//! Asserts: no command panics or aborts, and every exit code is 0, 1 or 2. Cases too big
//! for the reference interpreter are skipped, not failed (the bounds are in the harness:
//! `Bounds::FUZZ`). The mutation and the runs live in `tests/runtime_fuzz/harness.rs`,
//! shared with the bounded property test `tests/runtime_fuzz.rs` that CI runs.
//!
//! With `RUN_TINY_SHOW` set, each input's example, edits and mutated source go to stderr
//! first (to see what a saved crash runs).
#![no_main]

#[path = "../../tests/runtime_fuzz/harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let case = harness::mutate(data);
    if std::env::var_os("RUN_TINY_SHOW").is_some() {
        eprintln!("run_tiny: {} with edits {:?}\n{}", case.example, case.edits, case.source);
    }
    harness::exercise(&case, &harness::Bounds::FUZZ);
});
