//! OOD detectors: fit on a trained classifier, then score data.
//!
//! Two families. On logits (any [`Model`](crate::model::Model)), in
//! [`logits`]: [`Mls`] (and MSP), [`Energy`], [`Entropy`], [`Gen`],
//! [`Odin`], and three that learn from in-distribution logits,
//! [`TemperatureScaling`], [`Klm`] and [`OpenMax`], each of which scores
//! precomputed logits ([`ScoreLogits`]); and two that need the network
//! itself, [`RankFeat`] and [`McDropout`]. On
//! internal features (a [`FeatureModel`](crate::model::FeatureModel),
//! fitted on in-distribution data), in [`features`]: [`Mahalanobis`],
//! [`Rmds`], [`Knn`], [`Vim`], [`She`], [`Gram`], and the OpenOOD post-hoc
//! methods [`Dice`], [`Vra`], [`Fdbd`], [`Nci`], [`NnGuide`], [`GradNorm`],
//! [`Residual`], [`Gmm`]; each also fits and scores
//! precomputed features ([`FeatureDetector::fit_features`],
//! [`ScoreFeatures::score_features`]), and one fitted on several layers
//! combines them by an [`Aggregation`].
//!
//! A detector's parameters ([`Detector`]) and what it learns
//! ([`FittedDetector`]) are different values, as in linfa:
//! [`fit`](Detector::fit) returns a [`Scorer`], the fitted state with the
//! model it scores through. The fitted state holds no model and is
//! `Send + Sync`: keep it ([`Scorer::into_fitted`]) and attach it to a
//! model again ([`FittedDetector::attach`]), save it to a file and load it
//! back ([`Persist`], [`file`](mod@file)), calibrate it for decisions with a known
//! false-alarm rate ([`Scorer::calibrate`],
//! [`calibration`](crate::calibration)).
//!
//! **Score sign**: every detector returns scores where *higher means more
//! OOD* (MLS scores −max logit, MSP −max softmax probability), the
//! convention [`metrics`](crate::metrics) expects.
//!
//! The flow, as in the Python toolkit:
//!
//! ```
//! # use ndarray::{Array1, Array2, Array4, ArrayView4, Axis};
//! use oodkit::prelude::*;
//!
//! // A "network" whose logits are (mean pixel, 1 - mean pixel): confident on
//! // dark and on bright images, unsure on grey ones.
//! let model = oodkit::model::from_fn(|x: ArrayView4<f32>| -> oodkit::Result<Array2<f32>> {
//!     let n = x.shape()[0];
//!     let pixels = x.len() / n;
//!     let mean = x.to_shape((n, pixels))?.sum_axis(Axis(1)) / pixels as f32;
//!     Ok(ndarray::stack![Axis(1), mean.mapv(|m| 10.0 * m), mean.mapv(|m| 10.0 * (1.0 - m))])
//! });
//! let images = |values: &[f32]| {
//!     Array4::from_shape_fn((values.len(), 1, 2, 2), |(i, ..)| values[i])
//! };
//! let ds_in = OodDataset::from_arrays(images(&[0.0, 0.05, 0.95, 1.0]), Array1::from(vec![1, 1, 0, 0]))?;
//! let ds_out = OodDataset::from_arrays(images(&[0.4, 0.5, 0.6]), Array1::zeros(3))?;
//!
//! let mls = Mls::new().fit(&model, None)?;
//! let scores_in = mls.score(&ds_in)?.scores;
//! let scores_out = mls.score(&ds_out)?.scores;
//! let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr"])?;
//! println!("{report}");
//! assert_eq!(report.get("auroc"), Some(1.0));
//! # Ok::<(), oodkit::Error>(())
//! ```

use ndarray::{Array1, Array2};

use crate::metrics::argmax;

mod any;
mod any_partial;
mod detector;
pub mod features;
pub mod file;
pub mod logits;
mod perturbation;
pub mod precomputed;
pub mod registry;
mod softmax;

pub use any::{AnyDetector, AnyModel};
pub use any_partial::AnyPartialFit;
pub use detector::{Detector, FittedDetector, ModelShape, Scorer};
pub use features::aggregation::{Aggregation, Aggregator};
pub use features::{
    Dice, Fdbd, FdbdNormalizer, FeatureDetector, FeatureOptions, FittedDice, FittedFdbd,
    FittedFeatures, FittedGmm, FittedGradNorm, FittedGram, FittedKnn, FittedMahalanobis, FittedNci,
    FittedNnGuide, FittedResidual, FittedShe, FittedVim, FittedVra, Gmm, GradNorm, Gram, Hnsw, Knn,
    LayerBatch, LayerFitter, Mahalanobis, Nci, NnGuide, PartialFit, PartialState, PrincipalDims,
    Rectification, Residual, Rmds, ScoreFeatures, She, StoredState, Vim, Vra,
};
pub use file::Persist;
pub use logits::{
    Energy, Entropy, FittedKlm, FittedOpenMax, FittedShaped, FittedTemperatureScaling, Gen, Klm,
    McDropout, McStatistic, Mls, Odin, OpenMax, OutputActivation, RankFeat, ScoreLogits, Shaped,
    StoredLogits, TemperatureScaling, Weibull,
};
pub use perturbation::InputPerturbation;
pub use precomputed::Precomputed;

/// What scoring returns: one score per input, in input order, and what the
/// Python toolkit returns beside them (its "info" dict).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOutput {
    /// OOD scores, higher = more OOD.
    pub scores: Array1<f32>,
    /// The logits the model produced, `(N, num_classes)`.
    pub logits: Array2<f32>,
    /// The class labels, when every scored batch carried them.
    pub labels: Option<Array1<i64>>,
}

impl ScoreOutput {
    /// Number of scored inputs.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether nothing was scored.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// The predicted class of each input (argmax of its logits).
    pub fn predictions(&self) -> Array1<i64> {
        self.logits
            .rows()
            .into_iter()
            .map(|row| argmax(row.iter().copied()) as i64)
            .collect()
    }
}
