//! The traits that make a feature detector: its parameters
//! ([`FeatureDetector`], with the [`FeatureOptions`] every one takes), one
//! layer's fitter ([`LayerFitter`]) and one layer's fitted state
//! ([`ScoreFeatures`]), and the checks they share.

use std::fmt;

use ndarray::{Array1, ArrayView1, ArrayView2, Axis, concatenate, s};
use rayon::prelude::*;

use super::aggregation::Aggregation;
use crate::detectors::InputPerturbation;
use crate::error::{Error, Result};
use crate::model::{LayerId, Model, check_finite};

/// Rows per chunk when fitting on, or scoring, precomputed features: the
/// working memory stays O(chunk · D) however many rows there are.
pub(crate) const CHUNK: usize = 4096;

/// One layer's activations for a batch of samples, with what else a
/// detector may use: the class labels (fit data) and the model's logits
/// (absent on precomputed features). The features are checked before a
/// fitter or scorer sees them: finite, one row per label and logit row.
#[derive(Debug, Clone, Copy)]
pub struct LayerBatch<'a> {
    /// The activations `(N, D)`.
    pub features: ArrayView2<'a, f32>,
    /// The class labels `(N,)`, when known.
    pub labels: Option<ArrayView1<'a, i64>>,
    /// The logits `(N, classes)`, when scored or fitted through a model.
    pub logits: Option<ArrayView2<'a, f32>>,
}

/// Accumulates one layer's statistics over the fit data, batch by batch:
/// one pass, or two when the second needs what the first found (ViM's α
/// is a ratio of sums over the subspace the first pass fits).
pub trait LayerFitter {
    /// What fitting produces.
    type Fitted: ScoreFeatures;
    /// Adds a batch of the first pass.
    fn update(&mut self, batch: &LayerBatch) -> Result<()>;
    /// Ends the first pass; `true` asks for a second pass over the same
    /// fit data ([`update_second`](Self::update_second)) before
    /// [`finish`](Self::finish). The default: one pass.
    fn end_first_pass(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// Adds a batch of the second pass.
    fn update_second(&mut self, batch: &LayerBatch) -> Result<()> {
        let _ = batch;
        Ok(())
    }
    /// The fitted state.
    fn finish(self) -> Result<Self::Fitted>;
}

/// What a feature detector learned of one layer: it scores that layer's
/// features (higher = more OOD), holds no model, and is `Send + Sync`.
pub trait ScoreFeatures: fmt::Debug + Send + Sync {
    /// The feature width it was fitted on.
    fn width(&self) -> usize;

    /// One score per row of a checked batch (the width fitted, finite).
    /// [`score_features`](Self::score_features) is the checked entry.
    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>>;

    /// Scores precomputed features `(N, D)` of the layer it was fitted on,
    /// in chunks. Errors on another width and on non-finite values. A
    /// score beyond f32's range (features far off fit data of almost no
    /// spread) is ±f32::MAX.
    fn score_features(&self, features: ArrayView2<f32>) -> Result<Array1<f32>> {
        check_width(self.width(), features, "features to score")?;
        check_finite(features, "features to score")?;
        if features.nrows() == 0 {
            // Nothing to score, as the logit detectors answer.
            return Ok(Array1::zeros(0));
        }
        Ok(saturated(score_in_parts(
            self,
            &LayerBatch {
                features,
                labels: None,
                logits: None,
            },
        )?))
    }
}

/// `state`'s scores of `batch`, its rows cut into parts scored on every
/// core (rayon's pool) and joined in order: parts of at most [`CHUNK`]
/// rows, at least two per thread when there are rows enough, so that both
/// cores of a small machine stay busy to the end.
pub(crate) fn score_in_parts<S: ScoreFeatures + ?Sized>(
    state: &S,
    batch: &LayerBatch,
) -> Result<Array1<f32>> {
    let rows = batch.features.nrows();
    let threads = rayon::current_num_threads();
    let part = rows
        .div_ceil(2 * threads)
        .clamp(MIN_PART.min(rows.max(1)), CHUNK);
    if rows <= part {
        return state.score_layer(batch);
    }
    let starts: Vec<usize> = (0..rows).step_by(part).collect();
    let parts = starts
        .par_iter()
        .map(|&start| {
            let range = start..(start + part).min(rows);
            state.score_layer(&LayerBatch {
                features: batch.features.slice(s![range.clone(), ..]),
                labels: batch.labels.map(|l| l.slice_move(s![range.clone()])),
                logits: batch.logits.map(|l| l.slice_move(s![range.clone(), ..])),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    Ok(concatenate(Axis(0), &views)?)
}

/// The fewest rows a part of [`score_in_parts`] takes (fewer are not worth
/// a thread).
const MIN_PART: usize = 64;

/// What every feature detector takes besides its own parameters: the
/// layers it fits on (default `-2`, the penultimate one), how several
/// layers' scores are combined, and an optional input step before the
/// features are taken.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureOptions {
    pub(super) layers: Vec<LayerId>,
    pub(super) aggregation: Aggregation,
    pub(super) perturbation: Option<InputPerturbation>,
}

impl Default for FeatureOptions {
    /// The penultimate layer, standard-deviation aggregation, no input
    /// step.
    fn default() -> Self {
        FeatureOptions {
            layers: vec![LayerId::Index(-2)],
            aggregation: Aggregation::default(),
            perturbation: None,
        }
    }
}

impl FeatureOptions {
    /// The layers, never empty.
    pub fn layers(&self) -> &[LayerId] {
        &self.layers
    }

    /// How several layers' scores are combined.
    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    /// The input step, if any.
    pub fn perturbation(&self) -> Option<InputPerturbation> {
        self.perturbation
    }
}

/// A feature detector's parameters: how to fit one layer, and the shared
/// [`FeatureOptions`]. Implementing it gives a type the builder methods
/// below, [`fit_features`](Self::fit_features) on precomputed features,
/// and [`Detector`](crate::detectors::Detector): the whole flow through a model (streaming fit of
/// every layer, a second pass where one is needed, aggregation).
pub trait FeatureDetector: Clone + fmt::Debug {
    /// The fitter of one layer.
    type Fitter: LayerFitter<Fitted = Self::Fitted>;
    /// What is learned of one layer.
    type Fitted: ScoreFeatures;

    /// A short name, e.g. `"KNN"`.
    fn name(&self) -> &'static str;

    /// Whether the fit data must carry class labels.
    fn needs_labels(&self) -> bool;

    /// A fitter for one layer's features, `width` wide; `model` is the
    /// network when fitting through one (ViM reads its last layer).
    fn fitter(&self, width: usize, model: Option<&dyn Model>) -> Result<Self::Fitter>;

    /// What fitting through `model` learns when no fit data is given, for
    /// a detector that needs only the model (GradNorm reads its last
    /// layer); `None`, the default, when fit data is required.
    fn fit_without_data(&self, model: &dyn Model) -> Option<Result<Self::Fitted>> {
        let _ = model;
        None
    }

    /// The shared options.
    fn options(&self) -> &FeatureOptions;

    /// Errors when `fit_samples` samples cannot be enough for these
    /// parameters ([`Detector::check_fit_size`](crate::detectors::Detector::check_fit_size)).
    /// Fine by default.
    fn check_fit_size(&self, fit_samples: usize) -> Result<()> {
        let _ = fit_samples;
        Ok(())
    }

    /// The shared options, to change.
    fn options_mut(&mut self) -> &mut FeatureOptions;

    /// Fits on these layers of the model (default: `-2`, the penultimate
    /// one); with several, their scores are combined by the
    /// [`Aggregation`]. An empty list is an error.
    fn with_layers<L: Into<LayerId>>(mut self, layers: impl IntoIterator<Item = L>) -> Result<Self>
    where
        Self: Sized,
    {
        let layers: Vec<LayerId> = layers.into_iter().map(Into::into).collect();
        if layers.is_empty() {
            return Err(Error::invalid(
                "layers",
                "[]",
                "give at least one layer (e.g. -2, the penultimate one)",
            ));
        }
        self.options_mut().layers = layers;
        Ok(self)
    }

    /// How the scores of several layers are combined (default
    /// [`Aggregation::StdNormalized`]).
    fn with_aggregation(mut self, aggregation: Aggregation) -> Self
    where
        Self: Sized,
    {
        self.options_mut().aggregation = aggregation;
        self
    }

    /// Perturbs each input by this [`InputPerturbation`] before its
    /// features are taken (Mahalanobis and SHE do in their papers). Needs a
    /// model with input gradients
    /// ([`InputGradient::input_gradient`](crate::model::InputGradient::input_gradient)(crate::model::InputGradient::input_gradient));
    /// only scoring through a model is perturbed, not
    /// [`score_features`](ScoreFeatures::score_features).
    fn with_input_perturbation(mut self, step: InputPerturbation) -> Self
    where
        Self: Sized,
    {
        self.options_mut().perturbation = (!step.is_off()).then_some(step);
        self
    }

    /// The layers it fits on.
    fn layers(&self) -> &[LayerId] {
        &self.options().layers
    }

    /// Fits one layer's precomputed features `(N, D)` of in-distribution
    /// data and their class labels (`N` of them), streaming through them in
    /// chunks; score the result with
    /// [`score_features`](ScoreFeatures::score_features). Errors on no
    /// rows, labels of another length, and non-finite values.
    fn fit_features(
        &self,
        features: ArrayView2<f32>,
        labels: ArrayView1<i64>,
    ) -> Result<Self::Fitted> {
        let what = format!("fit features of {}", self.name());
        if features.nrows() == 0 {
            return Err(Error::Empty {
                what,
                hint: "fit on at least one sample".into(),
            });
        }
        if features.ncols() == 0 {
            return Err(Error::ShapeMismatch {
                what,
                expected: "(N, D) with D ≥ 1".into(),
                found: format!("{:?}", features.shape()),
            });
        }
        check_labels_len(features, labels, &what)?;
        check_finite(features, &what)?;
        let chunks = || {
            features
                .axis_chunks_iter(Axis(0), CHUNK)
                .zip(labels.axis_chunks_iter(Axis(0), CHUNK))
                .map(|(features, labels)| LayerBatch {
                    features,
                    labels: Some(labels),
                    logits: None,
                })
        };
        let mut fitter = self.fitter(features.ncols(), None)?;
        for batch in chunks() {
            fitter.update(&batch)?;
        }
        if fitter.end_first_pass()? {
            for batch in chunks() {
                fitter.update_second(&batch)?;
            }
        }
        fitter.finish()
    }
}

/// Scores beyond f32's range (a distance of 10⁴⁰ to fit features of
/// nearly no spread) as ±f32::MAX, the nearest scores there are: the
/// order is kept and no infinity reaches the metrics.
pub(super) fn saturated(mut scores: Array1<f32>) -> Array1<f32> {
    scores.mapv_inplace(|s| s.clamp(-f32::MAX, f32::MAX));
    scores
}

/// Errors unless `labels` has one entry per row of `features`.
pub(super) fn check_labels_len(
    features: ArrayView2<f32>,
    labels: ArrayView1<i64>,
    what: &str,
) -> Result<()> {
    if labels.len() != features.nrows() {
        return Err(Error::LengthMismatch {
            what: format!("rows of {what} vs labels"),
            left: features.nrows(),
            right: labels.len(),
        });
    }
    Ok(())
}

/// Errors unless `features` is `width` wide.
pub(super) fn check_width(width: usize, features: ArrayView2<f32>, what: &str) -> Result<()> {
    if features.ncols() != width {
        return Err(Error::ShapeMismatch {
            what: what.into(),
            expected: format!("(N, {width}), the width at fit time"),
            found: format!("{:?}", features.shape()),
        });
    }
    Ok(())
}
