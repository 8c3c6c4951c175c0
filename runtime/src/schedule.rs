//! Learning-rate schedules: a peak rate shaped by phases, as recipes write them:
//! `warmup(100) then cosine(to: 0.1)`, `linear`, `constant`, `wsd`, `inverse_sqrt`.

#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Linear from 0 to the peak over `steps`.
    Warmup {
        steps: u64,
    },
    /// Cosine from the peak down to `to` × peak at the last step.
    Cosine {
        to: f64,
    },
    /// Linear from the peak down to `to` × peak.
    Linear {
        to: f64,
    },
    Constant,
    /// Warmup-stable-decay: constant, then a linear decay over the last `decay` fraction.
    Wsd {
        decay: f64,
        to: f64,
    },
    /// peak · sqrt(w / step) after the warmup `w`.
    InverseSqrt,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub total: u64,
    pub phases: Vec<Phase>,
}

impl Schedule {
    /// The rate at `step` (1-based).
    pub fn lr(&self, step: u64) -> f64 {
        let warm = self.phases.iter().find_map(|p| if let Phase::Warmup { steps } = p { Some(*steps) } else { None });
        let warm = warm.unwrap_or(0);
        if step <= warm {
            return self.peak * step as f64 / warm.max(1) as f64;
        }
        let after = self.phases.iter().find(|p| !matches!(p, Phase::Warmup { .. })).cloned().unwrap_or(Phase::Constant);
        let span = self.total.saturating_sub(warm).max(1) as f64;
        let x = ((step - warm) as f64 / span).clamp(0.0, 1.0);
        self.peak
            * match after {
                Phase::Warmup { .. } | Phase::Constant => 1.0,
                Phase::Cosine { to } => to + (1.0 - to) * 0.5 * (1.0 + (std::f64::consts::PI * x).cos()),
                Phase::Linear { to } => 1.0 - (1.0 - to) * x,
                Phase::Wsd { decay, to } => {
                    let start = 1.0 - decay;
                    if x <= start {
                        1.0
                    } else {
                        1.0 - (1.0 - to) * (x - start) / decay.max(1e-12)
                    }
                }
                Phase::InverseSqrt => (warm.max(1) as f64 / step as f64).sqrt(),
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_reaches_its_floor() {
        let s =
            Schedule { peak: 1.0, total: 110, phases: vec![Phase::Warmup { steps: 10 }, Phase::Cosine { to: 0.1 }] };
        assert_eq!(s.lr(5), 0.5);
        assert_eq!(s.lr(10), 1.0);
        assert!((s.lr(60) - 0.55).abs() < 1e-12);
        assert!((s.lr(110) - 0.1).abs() < 1e-12);
        let l = Schedule { peak: 2.0, total: 100, phases: vec![Phase::Linear { to: 0.0 }] };
        assert!((l.lr(50) - 1.0).abs() < 1e-12);
    }
}
