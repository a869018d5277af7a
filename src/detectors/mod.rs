//! OOD detectors: fit on a trained classifier, then score data.
//!
//! On logits (any [`Model`](crate::model::Model)): [`Mls`] (and MSP),
//! [`Energy`], [`Entropy`], [`Gen`], [`Odin`]. On internal features (a
//! [`FeatureModel`](crate::model::FeatureModel), fitted on
//! in-distribution data): [`Mahalanobis`], [`Rmds`], [`Knn`], [`Vim`],
//! [`She`], [`Gram`]; each also fits and scores precomputed features
//! (`fit_features` / `score_features`), and one fitted on several layers
//! combines them by an [`Aggregation`].
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
//! let mut mls = Mls::new();
//! mls.fit(&model, None)?;
//! let scores_in = mls.score(&ds_in)?.scores;
//! let scores_out = mls.score(&ds_out)?.scores;
//! let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr"])?;
//! println!("{report}");
//! assert_eq!(report.get("auroc"), Some(1.0));
//! # Ok::<(), oodkit::Error>(())
//! ```

use ndarray::{Array1, Array2, ArrayView2};

use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::model::IntoModel;

mod energy;
mod entropy;
mod features;
mod generalized_entropy;
mod gram;
mod knn;
mod logit;
mod mahalanobis;
mod mls;
mod odin;
mod she;
mod vim;

pub use energy::Energy;
pub use entropy::Entropy;
pub use features::{Aggregation, Aggregator};
pub use generalized_entropy::Gen;
pub use gram::Gram;
pub use knn::Knn;
pub use mahalanobis::{Mahalanobis, Rmds};
pub use mls::{Mls, OutputActivation};
pub use odin::Odin;
pub use she::She;
pub use vim::{PrincipalDims, Vim};

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
            .map(|row| crate::model::argmax(row.iter().copied()) as i64)
            .collect()
    }
}

/// An OOD detector.
///
/// [`fit`](Self::fit) it on a trained model (with fit data for detectors
/// that need statistics of the in-distribution data), then
/// [`score`](Self::score) any [`BatchSource`]. Scoring streams batch by
/// batch: nothing but the outputs grows with the data.
pub trait Detector {
    /// What the detector needs from the network: `dyn Model` for detectors
    /// on logits, `dyn FeatureModel` for detectors on internal activations.
    type Network: ?Sized;

    /// A short name, e.g. `"MLS"`.
    fn name(&self) -> &'static str;

    /// Fits on a model already boxed; [`fit`](Self::fit) is the usual entry.
    fn fit_model(
        &mut self,
        model: Box<Self::Network>,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<()>;

    /// Fits the detector on `model` (by value or by reference: `&model`
    /// works), and on `fit_data` when the detector needs in-distribution
    /// statistics. Fitting again replaces the earlier fit.
    fn fit<M>(&mut self, model: M, fit_data: Option<&dyn BatchSource>) -> Result<()>
    where
        M: IntoModel<Self::Network>,
        Self: Sized,
    {
        self.fit_model(model.into_model(), fit_data)
    }

    /// Whether [`fit`](Self::fit) has succeeded.
    fn is_fitted(&self) -> bool;

    /// Scores one batch.
    fn score_batch(&self, batch: Batch) -> Result<ScoreOutput>;

    /// Scores every batch of `data`, the results in input order. Errors
    /// when the detector is not fitted, the data is empty, or the model
    /// returns logits of the wrong shape (including a width that changes
    /// between batches).
    fn score(&self, data: &dyn BatchSource) -> Result<ScoreOutput> {
        if !self.is_fitted() {
            return Err(Error::NotFitted {
                detector: self.name(),
            });
        }
        let mut all = ScoreCollector::default();
        for batch in data.batches()? {
            let offset = all.scores.len();
            let part = self
                .score_batch(batch?)
                .map_err(|e| e.in_batch_at(offset))?;
            all.push(part)?;
        }
        all.finish()
    }
}

/// Detectors that score from the logits alone: logits computed once (or by
/// another program) can be scored by each of them without running the
/// network again.
pub trait ScoreLogits {
    /// One score per row of `logits` `(N, num_classes)`; higher = more OOD.
    /// Errors on zero classes and on NaN (naming the sample).
    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>>;
}

/// Concatenates per-batch outputs, checking that every batch has the same
/// number of classes; labels are kept while every batch has them.
#[derive(Debug)]
struct ScoreCollector {
    scores: Vec<f32>,
    logits: Vec<f32>,
    width: Option<usize>,
    labels: Option<Vec<i64>>,
    batches: usize,
}

impl Default for ScoreCollector {
    fn default() -> Self {
        ScoreCollector {
            scores: Vec::new(),
            logits: Vec::new(),
            width: None,
            labels: Some(Vec::new()),
            batches: 0,
        }
    }
}

impl ScoreCollector {
    fn push(&mut self, part: ScoreOutput) -> Result<()> {
        let width = part.logits.ncols();
        if self.width.is_some_and(|w| w != width) {
            return Err(Error::ShapeMismatch {
                what: format!("logits of batch {}", self.batches),
                expected: format!("(_, {}) like the batches before", self.width.unwrap_or(0)),
                found: format!("{:?}", part.logits.shape()),
            });
        }
        self.width = Some(width);
        match (&mut self.labels, part.labels) {
            (Some(all), Some(labels)) => all.extend(labels),
            _ => self.labels = None,
        }
        self.scores.extend(part.scores);
        self.logits.extend(part.logits.iter());
        self.batches += 1;
        Ok(())
    }

    fn finish(self) -> Result<ScoreOutput> {
        let width = self.width.ok_or_else(|| Error::Empty {
            what: "the data to score".into(),
            hint: "it yielded no batch".into(),
        })?;
        let n = self.scores.len();
        let logits = Array2::from_shape_vec((n, width), self.logits)?;
        Ok(ScoreOutput {
            scores: Array1::from(self.scores),
            logits,
            labels: self.labels.map(Array1::from),
        })
    }
}
