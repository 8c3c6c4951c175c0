//! SIGINT and SIGTERM during training → a request to stop: the loop finishes the current
//! step, writes a checkpoint and returns; a second signal ends the process at once (the
//! run directory is a journal, so that loses at most the steps since the last checkpoint).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The stop flag and the number of the signal that set it.
type Flags = (Arc<AtomicBool>, Arc<AtomicUsize>);

/// The stop flag the training loop polls, and which signal set it.
pub struct Stop {
    pub flag: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl Stop {
    /// The stop flag, cleared; the handlers are installed once per process (a process that
    /// trains many times, as tests and the fuzzer do, reuses them).
    pub fn install() -> Result<Stop, String> {
        static INSTALLED: std::sync::OnceLock<Result<Flags, String>> = std::sync::OnceLock::new();
        let (flag, signal) = INSTALLED.get_or_init(Self::register).clone()?;
        flag.store(false, Ordering::SeqCst);
        signal.store(0, Ordering::SeqCst);
        Ok(Stop { flag, signal })
    }

    fn register() -> Result<Flags, String> {
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        #[cfg(unix)]
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // First registered, first run: with the flag already set (a second signal),
            // exit now with the conventional status; otherwise set it.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&flag))
                .and_then(|_| signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
                .map_err(|e| format!("cannot install the signal handlers: {e}"))?;
        }
        Ok((flag, signal))
    }

    /// The signal's name and the exit status that reports it (130 for SIGINT, 143 for
    /// SIGTERM), once one arrived.
    pub fn received(&self) -> Option<(&'static str, i32)> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            2 => Some(("SIGINT", 130)),
            15 => Some(("SIGTERM", 143)),
            other => Some(("a signal", 128 + other as i32)),
        }
    }
}
