//! Fault injection for the kill-and-resume tests: `MODELC_FAULT=POINT@STEP[,...]` makes
//! the process kill itself with SIGKILL at that point of that step (`metrics-row`: after
//! the step's row is written; `metrics-torn`: halfway through writing it;
//! `checkpoint-params`, `checkpoint-optimizer`: after that file of the step's checkpoint;
//! `checkpoint-done`: after its sidecar). Unset, every point is one check of a cached
//! empty list.

use std::sync::OnceLock;

fn points() -> &'static [(String, u64)] {
    static POINTS: OnceLock<Vec<(String, u64)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let spec = std::env::var("MODELC_FAULT").unwrap_or_default();
        spec.split(',')
            .filter_map(|p| {
                let (name, step) = p.trim().split_once('@')?;
                Some((name.to_string(), step.parse().ok()?))
            })
            .collect()
    })
}

fn armed(name: &str, step: u64) -> bool {
    points().iter().any(|(n, s)| n == name && *s == step)
}

/// Dies here, as `kill -9` would, if `MODELC_FAULT` names this point and step.
pub fn point(name: &str, step: u64) {
    if armed(name, step) {
        die();
    }
}

/// `metrics-torn@STEP`: writes half of the row, then dies.
pub fn torn_row(file: &mut std::fs::File, line: &[u8], step: u64) {
    if armed("metrics-torn", step) {
        use std::io::Write;
        let _ = file.write_all(&line[..line.len() / 2]);
        die();
    }
}

fn die() -> ! {
    #[cfg(unix)]
    // SAFETY: kill(2) on our own pid with a valid signal number has no preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}
