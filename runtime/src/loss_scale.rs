//! Loss scaling for mixed precision. The backward pass is seeded with the scale instead of
//! 1, so cotangents that would underflow f16 (below 2^-24) stay representable; gradients
//! are divided by it before the optimizer. Dynamic scaling (PyTorch's `GradScaler`): on an
//! inf/NaN gradient the step is skipped and the scale halved; after `growth_interval`
//! clean steps in a row it doubles.

#[derive(Clone, Debug, PartialEq)]
pub struct LossScale {
    pub scale: f64,
    /// `None`: a static scale.
    pub growth_interval: Option<u64>,
    /// Clean steps since the last change.
    pub clean: u64,
}

impl LossScale {
    /// PyTorch's defaults: 2^16, doubling after 2000 clean steps.
    pub fn dynamic(init: f64, growth_interval: u64) -> LossScale {
        LossScale { scale: init, growth_interval: Some(growth_interval), clean: 0 }
    }

    pub fn fixed(scale: f64) -> LossScale {
        LossScale { scale, growth_interval: None, clean: 0 }
    }

    /// After a step's gradients are known: whether to apply the step. Updates the scale.
    pub fn update(&mut self, finite: bool) -> bool {
        let Some(interval) = self.growth_interval else { return finite };
        if !finite {
            self.scale /= 2.0;
            self.clean = 0;
            return false;
        }
        self.clean += 1;
        if self.clean >= interval {
            self.scale *= 2.0;
            self.clean = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_doubles_after_clean_steps() {
        let mut s = LossScale::dynamic(1024.0, 3);
        assert!(!s.update(false));
        assert_eq!(s.scale, 512.0);
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 512.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.clean), (1024.0, 0));
        let mut f = LossScale::fixed(8.0);
        assert!(!f.update(false));
        assert_eq!(f.scale, 8.0);
    }
}
