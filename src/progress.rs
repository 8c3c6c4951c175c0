//! Training progress on stderr: a bar on a terminal, a plain line every few steps in logs.

use modelc_runtime::train::StepReport;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    every: u64,
}

impl Progress {
    pub fn new(steps: u64, start: u64) -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(steps);
            bar.set_position(start - 1);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
            {
                bar.set_style(style);
            }
            bar
        });
        Progress { bar, every: (steps / 20).max(1) }
    }

    pub fn step(&mut self, s: &StepReport) {
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("loss {:.4}  {:.0} tokens/s", s.loss, s.tokens_per_s));
                bar.set_position(s.step);
            }
            None if s.step == 1 || s.step % self.every == 0 || s.step == s.steps => eprintln!(
                "step {:>5}/{}  loss {:.4}  lr {:.2e}  grad_norm {:.3}  {:.0} tokens/s",
                s.step, s.steps, s.loss, s.lr, s.grad_norm, s.tokens_per_s
            ),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
