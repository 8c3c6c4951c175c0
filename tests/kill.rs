//! Kill-and-resume: training runs killed at random moments (SIGKILL from outside), killed
//! inside each stage of a step's journal (`MODELC_FAULT`: after the metrics row, halfway
//! through it, after each file of a checkpoint) and stopped by SIGINT/SIGTERM, then
//! resumed until they finish. Each must end with the uninterrupted run's final weights,
//! byte for byte, and a `metrics.jsonl` holding every step exactly once, each row the
//! uninterrupted run's (its throughput aside), every line valid JSON.

#![cfg(unix)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FILE: &str = "tests/train/reliability.model";
const STEPS: &str = "60";

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_modelc"));
    c.args(args).current_dir(root()).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modelc-kill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn start(dir: &Path, resume: bool, recipe: &str) -> Command {
    let d = dir.to_string_lossy().into_owned();
    let how = if resume { "--resume" } else { "--out" };
    command(&["train", FILE, "--recipe", recipe, "--steps", STEPS, how, &d])
}

/// Rows without their throughput (the one number that differs between runs).
fn rows(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| {
            let mut r: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON row ({e}): {l:?}"));
            r.as_object_mut().map(|o| o.remove("tokens_per_s"));
            r
        })
        .collect()
}

fn final_weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("final.safetensors")).expect("final weights")
}

fn assert_same_run(dir: &Path, reference: &Path, what: &str) {
    let (got, want) = (rows(dir), rows(reference));
    let steps: Vec<u64> = got.iter().map(|r| r["step"].as_u64().expect("step")).collect();
    assert_eq!(steps, (1..=want.len() as u64).collect::<Vec<_>>(), "{what}: every step exactly once");
    assert_eq!(got, want, "{what}: rows differ from the uninterrupted run's");
    assert!(final_weights(dir) == final_weights(reference), "{what}: final weights differ");
}

/// Resumes the run (or starts it over, when the kill came before it had a checkpoint to
/// resume from) to its end; returns how many runs that took.
fn finish(dir: &Path, recipe: &str) -> usize {
    let out = start(dir, true, recipe).output().expect("resume");
    match out.status.code() {
        Some(0) => 1,
        Some(1) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("no checkpoint")
                    || err.contains("has no `run.json`")
                    || err.contains("there is no such directory"),
                "resume refused for another reason:\n{err}"
            );
            let d = dir.to_string_lossy().into_owned();
            let fresh = command(&["train", FILE, "--recipe", recipe, "--steps", STEPS, "--out", &d, "--overwrite"])
                .output()
                .expect("restart");
            assert_eq!(fresh.status.code(), Some(0), "{}", String::from_utf8_lossy(&fresh.stderr));
            2
        }
        other => panic!("resume ended with {other:?}:\n{}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn reference(base: &Path, recipe: &str) -> (PathBuf, Duration) {
    let dir = base.join("reference");
    let started = Instant::now();
    let out = start(&dir, false, recipe).output().expect("reference run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    (dir, started.elapsed())
}

/// SplitMix64, seeded: the same kill times every run of the test (unless the machine's
/// speed moves them), a different sequence with `MODELC_KILL_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

#[test]
fn random_kills_then_resume_give_the_uninterrupted_run() {
    let base = scratch("random");
    let (reference, took) = reference(&base, "small");
    let seed = std::env::var("MODELC_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(14);
    let kills: u64 = std::env::var("MODELC_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let mut rng = Rng(seed);
    let window = took.as_millis() as u64 + 50;
    let mut killed = 0;
    for round in 0..kills / 3 {
        let dir = base.join(format!("run{round}"));
        let mut resume = false;
        // Three kills per run at random moments, each into the run resumed after the last.
        for _ in 0..3 {
            // Within the time the rest of the run takes.
            let done = std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
            let left = 1.0 - done as f64 / STEPS.parse::<f64>().unwrap_or(60.0);
            let mut child: Child = start(&dir, resume, "small").spawn().expect("spawn");
            std::thread::sleep(Duration::from_millis(rng.below((window as f64 * left.max(0.2)) as u64)));
            let exited = child.try_wait().expect("wait").is_some();
            if !exited {
                child.kill().expect("SIGKILL");
                killed += 1;
            }
            let _ = child.wait();
            // After a kill before the first checkpoint, resuming is refused: start over.
            resume = dir.join("run.json").exists()
                && std::fs::read_dir(&dir).is_ok_and(|d| {
                    d.filter_map(|e| e.ok())
                        .any(|e| e.file_name().to_string_lossy().ends_with(".json") && e.file_name() != "run.json")
                });
            if !resume {
                let _ = std::fs::remove_dir_all(&dir);
            }
            // Before resuming, the rows on disk are each valid JSON up to a possible torn
            // last line, which the resume cuts.
        }
        finish(&dir, "small");
        assert_same_run(&dir, &reference, &format!("random kills, round {round}"));
    }
    eprintln!("{killed} SIGKILLs at random moments (seed {seed}, window {window} ms); every run resumed to the same weights and rows");
    assert!(killed >= kills / 2, "too few kills landed while the run was going ({killed} of {kills})");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn kills_inside_each_stage_of_the_journal_then_resume_give_the_uninterrupted_run() {
    let base = scratch("faults");
    let (reference, _) = reference(&base, "small");
    // Steps with a checkpoint (every 3) and without, for each point.
    let faults = [
        "metrics-row@7",
        "metrics-row@9",
        "metrics-torn@8",
        "metrics-torn@12",
        "checkpoint-params@6",
        "checkpoint-optimizer@9",
        "checkpoint-done@12",
        "checkpoint-params@3",
        "metrics-torn@1",
    ];
    for fault in faults {
        let dir = base.join(fault.replace('@', "-"));
        let out: Output = start(&dir, false, "small").env("MODELC_FAULT", fault).output().expect("run");
        assert_eq!(out.status.code(), None, "{fault}: the process was to be killed");
        // The rows up to the kill are on disk (the torn one aside), whatever the stage.
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics");
        let step: usize = fault.split('@').nth(1).and_then(|s| s.parse().ok()).expect("step");
        let whole = text.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()).count();
        let expect = if fault.starts_with("metrics-torn") { step - 1 } else { step };
        assert_eq!(whole, expect, "{fault}: rows on disk after the kill");
        finish(&dir, "small");
        assert_same_run(&dir, &reference, fault);
    }
    let _ = std::fs::remove_dir_all(&base);
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) with our own child's pid and a valid signal number.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({sig})");
}

/// Waits until the run in `dir` has written `n` rows (it has installed its handlers).
fn wait_for_rows(dir: &Path, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < n {
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before its rows");
        assert!(Instant::now() < deadline, "no rows after five minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigint_and_sigterm_stop_after_the_step_with_a_checkpoint() {
    let base = scratch("signals");
    let (reference, _) = reference(&base, "small");
    for (sig, code, name) in [(libc::SIGINT, 130, "SIGINT"), (libc::SIGTERM, 143, "SIGTERM")] {
        let dir = base.join(name);
        let mut child = start(&dir, false, "small").spawn().expect("spawn");
        wait_for_rows(&dir, 2, &mut child);
        signal(&child, sig);
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}:\n{err}");
        let step: u64 = err
            .split(&format!("stopped by {name} after step "))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no stop message in\n{err}"));
        assert!(dir.join(format!("step-{step}.json")).exists(), "{name}: no checkpoint of step {step}");
        assert_eq!(rows(&dir).len() as u64, step, "{name}: rows up to the stop");
        assert_eq!(finish(&dir, "small"), 1, "{name}: resumes at once");
        assert_same_run(&dir, &reference, name);
    }
    // A second signal ends the run at once, inside the step (slow steps, so both land in
    // one); the journal still resumes from the last checkpoint.
    let dir = base.join("twice");
    let mut child = command(&["train", FILE, "--recipe", "slow", "--steps", "4", "--checkpoint-every", "1", "--out"])
        .arg(&dir)
        .spawn()
        .expect("spawn");
    wait_for_rows(&dir, 1, &mut child);
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(20));
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(!err.contains("stopped by"), "the second signal waited for the step:\n{err}");
    let resumed = command(&["train", FILE, "--recipe", "slow", "--steps", "4", "--checkpoint-every", "1", "--resume"])
        .arg(&dir)
        .output()
        .expect("resume");
    assert_eq!(resumed.status.code(), Some(0), "{}", String::from_utf8_lossy(&resumed.stderr));
    let steps: Vec<u64> = rows(&dir).iter().map(|r| r["step"].as_u64().expect("step")).collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    let _ = std::fs::remove_dir_all(&base);
}
