//! The divergence guard: a step with a non-finite loss or gradient norm is skipped
//! (by the trainer); `max_bad_steps` of them in a row stop the run, since by then
//! the parameters themselves have most likely gone bad.

use std::path::Path;

use anyhow::{Result, bail};

pub struct DivergenceGuard {
    max_bad_steps: usize,
    /// Consecutive skipped steps so far.
    streak: usize,
}

impl DivergenceGuard {
    pub fn new(max_bad_steps: usize) -> DivergenceGuard {
        DivergenceGuard {
            max_bad_steps,
            streak: 0,
        }
    }

    pub fn good_step(&mut self) {
        self.streak = 0;
    }

    /// Counts a skipped step and returns the warning for the user; an error once
    /// `max_bad_steps` came in a row.
    pub fn bad_step(&mut self, step: usize, last_checkpoint: Option<&Path>) -> Result<String> {
        self.streak += 1;
        let warning = format!(
            "step {step}: non-finite loss or gradient norm, update skipped ({} of at most {} in a row)",
            self.streak, self.max_bad_steps
        );
        if self.streak >= self.max_bad_steps {
            bail!(
                "training diverged: {} steps in a row (up to step {step}) had a non-finite loss or gradient norm; last good checkpoint: {}",
                self.streak,
                last_checkpoint.map_or("none".into(), |p| p.display().to_string())
            );
        }
        Ok(warning)
    }

    /// An error when the run ended (at `step`) on skipped steps: no checkpoint
    /// holds them, so the run did not finish; names the steps and the last good
    /// checkpoint.
    pub fn check_end(&self, step: usize, last_checkpoint: Option<&Path>) -> Result<()> {
        if self.streak > 0 {
            bail!(
                "training did not finish: steps {} to {step} had a non-finite loss or gradient norm (updates skipped), so no checkpoint was written after them; last good checkpoint: {}",
                step + 1 - self.streak,
                last_checkpoint.map_or("none".into(), |p| p.display().to_string())
            );
        }
        Ok(())
    }

    /// No skipped step since the last good one: the state is fit to checkpoint.
    pub fn is_clear(&self) -> bool {
        self.streak == 0
    }
}
