//! The names most programs need: `use oodkit::prelude::*;`.

pub use crate::batch::Batch;
pub use crate::datasets::{BatchSource, OodDataset, PrepareConfig, Split};
pub use crate::detectors::{
    Aggregation, Detector, Dice, Energy, Entropy, Fdbd, FeatureDetector, FittedDetector, Gen, Gmm,
    GradNorm, Gram, InputPerturbation, Knn, Mahalanobis, Mls, Nci, NnGuide, Odin, OutputActivation,
    PrincipalDims, Residual, Rmds, ScoreFeatures, ScoreLogits, ScoreOutput, Scorer, She, Vim, Vra,
};
pub use crate::error::{Error, Result};
pub use crate::metrics::bench_metrics;
#[cfg(feature = "burn")]
pub use crate::model::{BurnClassifier, BurnModel};
pub use crate::model::{FeatureModel, LayerId, Model};
