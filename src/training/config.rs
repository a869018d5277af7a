//! [`TrainConfig`]: what a training run does.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How the learning rate moves over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// The base learning rate throughout.
    Constant,
    /// Cosine decay from the base rate to `final_lr`, stepped once per
    /// optimisation step over the whole run.
    Cosine {
        /// The rate reached at the last step.
        final_lr: f64,
    },
}

impl LrSchedule {
    /// The rate at optimisation step `step` (from 0) of `total_steps`.
    pub fn rate(&self, base: f64, step: usize, total_steps: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine { final_lr } => {
                let progress = if total_steps <= 1 {
                    0.0
                } else {
                    step.min(total_steps - 1) as f64 / (total_steps - 1) as f64
                };
                final_lr + 0.5 * (base - final_lr) * (1.0 + (PI * progress).cos())
            }
        }
    }
}

/// A training run: epochs, Adam's settings, the learning-rate schedule, the
/// seed, where checkpoints go, and whether to draw a progress bar.
///
/// The defaults are the reference notebook's: Adam with learning rate 1e-3,
/// betas 0.9 / 0.999 and epsilon 1e-7 (Keras' values), a constant rate,
/// cross-entropy on the logits.
///
/// ```
/// use oodkit::training::{LrSchedule, TrainConfig};
///
/// let config = TrainConfig::new(5)
///     .with_learning_rate(1e-3)
///     .with_schedule(LrSchedule::Cosine { final_lr: 0.0 })
///     .with_seed(0)
///     .with_progress(false);
/// assert_eq!(config.epochs, 5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training batches.
    pub epochs: usize,
    /// Adam's base learning rate.
    pub learning_rate: f64,
    /// Adam's first-moment decay.
    pub beta_1: f32,
    /// Adam's second-moment decay.
    pub beta_2: f32,
    /// Adam's epsilon.
    pub epsilon: f32,
    /// How the rate moves over the run.
    pub schedule: LrSchedule,
    /// Seeds the device's random numbers (dropout masks, and any parameter
    /// still to be initialised) when the run starts.
    pub seed: u64,
    /// Where to keep the `best` and `last` checkpoints, if anywhere.
    pub save_dir: Option<PathBuf>,
    /// Whether to draw a progress bar per epoch on standard error (only ever
    /// drawn on a terminal).
    pub progress: bool,
}

impl TrainConfig {
    /// `epochs` passes with the reference notebook's settings.
    pub fn new(epochs: usize) -> Self {
        TrainConfig {
            epochs,
            learning_rate: 1e-3,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            schedule: LrSchedule::Constant,
            seed: 0,
            save_dir: None,
            progress: true,
        }
    }

    /// Sets the base learning rate.
    pub fn with_learning_rate(mut self, learning_rate: f64) -> Self {
        self.learning_rate = learning_rate;
        self
    }

    /// Sets Adam's betas and epsilon.
    pub fn with_adam(mut self, beta_1: f32, beta_2: f32, epsilon: f32) -> Self {
        (self.beta_1, self.beta_2, self.epsilon) = (beta_1, beta_2, epsilon);
        self
    }

    /// Sets the learning-rate schedule.
    pub fn with_schedule(mut self, schedule: LrSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Keeps checkpoints in `dir` (created if missing).
    pub fn with_save_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.save_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Whether to draw progress bars.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// Checks every setting, saying which is wrong.
    pub(super) fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", 0, "train for at least one epoch"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::invalid(
                "learning_rate",
                self.learning_rate,
                "must be a positive number",
            ));
        }
        for (name, beta) in [("beta_1", self.beta_1), ("beta_2", self.beta_2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::invalid(name, beta, "must be in [0, 1)"));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(Error::invalid(
                "epsilon",
                self.epsilon,
                "must be a positive number",
            ));
        }
        if let LrSchedule::Cosine { final_lr } = self.schedule
            && !(final_lr.is_finite() && (0.0..=self.learning_rate).contains(&final_lr))
        {
            return Err(Error::invalid(
                "final_lr",
                final_lr,
                "the cosine schedule decays to a rate in [0, learning_rate]",
            ));
        }
        Ok(())
    }
}
