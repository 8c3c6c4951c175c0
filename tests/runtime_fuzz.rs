//! Seeded random bytes → the runtime fuzz harness (`runtime_fuzz/harness.rs`, which the
//! libFuzzer target `run_tiny` also drives): mutated `tiny` recipes of the examples through
//! `check`, `run` and a 2-step `train`, with no panic and every exit code 0, 1 or 2; and
//! enough cases reach `train` for the property to say something.
//!
//! Bounded for CI: a fixed number of cases (`MODELC_RUNTIME_FUZZ_CASES`, default 24) from a
//! fixed seed (`MODELC_RUNTIME_FUZZ_SEED`), so every run tries the same inputs. The
//! libFuzzer target (`fuzz/README.md`) is the long search.

#[path = "runtime_fuzz/harness.rs"]
mod harness;

use harness::{Bounds, Reached};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use std::collections::BTreeMap;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The fuzzer's bounds: the interpreter and the optimizers are built with opt-level 2 in
/// tests too, so a case at the bound trains its 2 steps in a few seconds.
const CI: Bounds = Bounds::FUZZ;

#[test]
fn mutated_tiny_recipes_check_run_and_train_without_panic() {
    let cases = env_or("MODELC_RUNTIME_FUZZ_CASES", 24) as u32;
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(env_or("MODELC_RUNTIME_FUZZ_SEED", 20_240_601)),
        failure_persistence: None,
        // Each shrinking step trains again; a few are enough to drop unneeded edits.
        max_shrink_iters: 16,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let reached = std::cell::RefCell::new(BTreeMap::<String, u32>::new());
    // The example (first byte) and one to three edits, most of the time.
    let bytes = prop::collection::vec(any::<u8>(), 1..14);
    let outcome = runner.run(&bytes, |bytes| {
        let case = harness::mutate(&bytes);
        let result = std::panic::catch_unwind(|| harness::exercise(&case, &CI));
        prop_assert!(
            result.is_ok(),
            "a command panicked on {} with edits {:?} (bytes {bytes:?}):\n{}",
            case.example,
            case.edits,
            case.source
        );
        if let Ok(r) = result {
            *reached.borrow_mut().entry(r.label()).or_default() += 1;
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let reached = reached.into_inner();
    eprintln!("runtime fuzz cases reached: {reached:?}");
    let trained: u32 = reached.iter().filter(|(k, _)| k.starts_with("train")).map(|(_, n)| n).sum();
    assert!(trained * 3 >= cases, "fewer than a third of the cases reached `train`: {reached:?}");
}

/// The fuzzer's seeds (`fuzz/seeds/run_tiny/`: each example unmutated, and a few with
/// mixed precision, `recompute`, `accumulate` or a shorter sequence) all train: the
/// harness's baseline, and the edits it names are the ones the seeds were written for.
#[test]
fn the_fuzz_seeds_check_run_and_train() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/run_tiny");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir).expect("fuzz/seeds/run_tiny").flatten().map(|e| e.path()).collect();
    seeds.sort();
    assert!(seeds.len() >= harness::EXAMPLES.len(), "{seeds:?}");
    for path in seeds {
        let bytes = std::fs::read(&path).expect("reading a seed");
        let case = harness::mutate(&bytes);
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        eprintln!("seed {name}: {} {:?}", case.example, case.edits);
        assert!(name.starts_with(case.example), "seed {name} mutates {}", case.example);
        assert_eq!(harness::exercise(&case, &CI), Reached::Train { run: 0, train: 0 }, "seed {name}: {:?}", case.edits);
    }
}

/// Replays a directory of fuzzer inputs (`MODELC_RUNTIME_FUZZ_DIR`, e.g. the corpus
/// `fuzz/corpus/run_tiny`) through the harness in this build and tallies how far they get:
/// `MODELC_RUNTIME_FUZZ_DIR=fuzz/corpus/run_tiny cargo test --test runtime_fuzz -- --ignored`.
#[test]
#[ignore]
fn replay_a_directory_of_fuzz_inputs() {
    let Some(dir) = std::env::var_os("MODELC_RUNTIME_FUZZ_DIR") else {
        panic!("set MODELC_RUNTIME_FUZZ_DIR to a directory of run_tiny inputs");
    };
    let mut inputs: Vec<_> =
        std::fs::read_dir(&dir).expect("reading the directory").flatten().map(|e| e.path()).collect();
    inputs.sort();
    let mut reached = BTreeMap::<String, u32>::new();
    for path in &inputs {
        let case = harness::mutate(&std::fs::read(path).expect("reading an input"));
        eprintln!("replay {}: {} {:?}", path.display(), case.example, case.edits);
        *reached.entry(harness::exercise(&case, &CI).label()).or_default() += 1;
    }
    eprintln!("{} inputs reached: {reached:?}", inputs.len());
}
