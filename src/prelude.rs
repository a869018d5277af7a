//! The names most programs need: `use oodkit::prelude::*;`.

pub use crate::batch::Batch;
pub use crate::datasets::{BatchSource, OodDataset, PrepareConfig, Split};
pub use crate::detectors::{
    Detector, Energy, Entropy, Gen, Mls, Odin, OutputActivation, ScoreLogits, ScoreOutput,
};
pub use crate::error::{Error, Result};
pub use crate::metrics::bench_metrics;
#[cfg(feature = "burn")]
pub use crate::model::{BurnClassifier, BurnModel};
pub use crate::model::{FeatureModel, LayerId, Model};
