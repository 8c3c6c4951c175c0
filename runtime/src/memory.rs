//! Memory checked before allocating: an executable's plan for its calls (persistent
//! buffers, the call's inputs, the peak of its live values) against what its device has
//! free and a user's `--memory-limit`, refused with the numbers and the remedies before
//! the first call, instead of an allocator abort halfway through it.

use crate::executable::Executable;

/// What one call needs at its peak, in bytes, as the backend that runs it stores values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The executable's persistent buffers (parameters, optimizer state, accumulators).
    pub buffers: u64,
    /// The call's inputs, as the host hands them over.
    pub inputs: u64,
    /// The most bytes of intermediate values alive at once.
    pub peak: u64,
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.buffers.saturating_add(self.inputs).saturating_add(self.peak)
    }
}

/// Host memory free now: `MemAvailable`, or less where a cgroup limit leaves less, and
/// where the number comes from.
pub fn host_available() -> Option<(u64, String)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?;
    let mut best = (kib.trim().parse::<u64>().ok()?.saturating_mul(1024), "MemAvailable in /proc/meminfo".to_string());
    let cgroup = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok()?.trim().parse::<u64>().ok();
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current")) {
        let left = max.saturating_sub(current);
        if left < best.0 {
            best = (left, "the cgroup's memory.max".to_string());
        }
    }
    Some(best)
}

/// `8GiB`, `512MiB`, `1.5G`, `4096` (bytes): powers of 1024 for both spellings, as
/// memory is counted; a clear error otherwise.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{text}` is not a size: write one such as `8GiB`, `512MiB` or a number of bytes"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown unit `{other}` in `{text}` (use B, KiB, MiB, GiB or TiB)")),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}`: a memory limit is at least one byte"));
    }
    Ok(bytes as u64)
}

/// `1.5 GiB`, `312 MiB`, `900 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = bytes as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit < UNITS.len() - 1 {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

/// One call an executable is about to make: its program and the shapes of its inputs.
pub struct PlannedCall<'a> {
    pub program: &'a str,
    pub inputs: Vec<(&'a str, Vec<usize>)>,
}

/// The largest plan among `calls`, checked against the memory the executable has and the
/// `limit`; an error with the numbers and `remedies` (what to change, in the caller's
/// terms) when it does not fit. The plan and the budget (bytes, and its source) on success.
pub fn check(
    exe: &dyn Executable,
    calls: &[PlannedCall],
    limit: Option<u64>,
    remedies: &str,
) -> Result<(MemoryPlan, Option<(u64, String)>), String> {
    let mut worst = MemoryPlan::default();
    let mut worst_program = "";
    for call in calls {
        let plan = exe.plan(call.program, &call.inputs)?;
        if plan.total() > worst.total() {
            (worst, worst_program) = (plan, call.program);
        }
    }
    let available = exe.memory_available();
    let budget = match (limit, available) {
        (Some(l), Some((a, src))) if a < l => Some((a, src)),
        (Some(l), _) => Some((l, "--memory-limit".to_string())),
        (None, a) => a,
    };
    if let Some((bytes, source)) = &budget {
        if worst.total() > *bytes {
            return Err(format!(
                "not enough memory: the `{worst_program}` call needs {} at its peak ({} of buffers, {} of inputs, {} of intermediate values, as the `{}` backend stores them), and {} is available ({source})\n  help: {remedies}",
                human(worst.total()),
                human(worst.buffers),
                human(worst.inputs),
                human(worst.peak),
                exe.backend(),
                human(*bytes),
            ));
        }
    }
    Ok((worst, budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("8 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("0").is_err());
        assert_eq!(human(1536 << 20), "1.5 GiB");
        assert_eq!(human(900), "900 B");
    }

    #[test]
    fn the_host_reports_some_memory() {
        let (bytes, source) = host_available().expect("/proc/meminfo");
        assert!(bytes > 0, "{source}");
    }
}
