//! The names most programs need: `use oodkit::prelude::*;`.

pub use crate::batch::Batch;
pub use crate::datasets::{BatchSource, OodDataset, PrepareConfig, Split};
pub use crate::detectors::{
    Aggregation, Detector, Energy, Entropy, FeatureDetector, FittedDetector, Gen, Gram,
    InputPerturbation, Knn, Mahalanobis, Mls, Odin, OutputActivation, PrincipalDims, Rmds,
    ScoreFeatures, ScoreLogits, ScoreOutput, Scorer, She, Vim,
};
pub use crate::error::{Error, Result};
pub use crate::metrics::bench_metrics;
#[cfg(feature = "burn")]
pub use crate::model::{BurnClassifier, BurnModel};
pub use crate::model::{FeatureModel, LayerId, Model};
