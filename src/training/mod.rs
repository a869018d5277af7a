//! The trainer, on burn: [`train`] fits any
//! [`BurnClassifier`](crate::model::BurnClassifier) (the networks of
//! [`nets`](crate::nets) or your own) with Adam on cross-entropy, the
//! reference notebook's recipe, on whichever burn device the network was
//! built on (`Device::flex()`, the pure-Rust CPU backend, by default), with
//! a [`TrainConfig`], per-epoch progress, a history and checkpoints
//! ([`Checkpoint`], [`load_checkpoint`]).
//!
//! The trained network is a [`Model`](crate::model::Model) through
//! [`BurnModel`](crate::model::BurnModel), ready for every detector;
//! [`model::evaluate`](crate::model::evaluate) measures its accuracy.

mod config;
mod progress;
mod trainer;

pub use config::{LrSchedule, TrainConfig};
pub use trainer::{Checkpoint, EpochStats, Trained, load_checkpoint, train};
