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
use crate::linalg::with_sequential_products;
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

    /// Merges `other` into this fitter: the same detector's fitter for the
    /// same layer, fed another shard of the fit data (on another thread,
    /// process or machine). Finishing the merged fitter gives the state
    /// one pass over both shards gives, up to rounding: statistics merge
    /// exactly (moments by Chan et al.'s pairwise update), stored rows
    /// concatenate (this shard's, then `other`'s).
    ///
    /// Both must be in the same pass. For a detector with a second pass
    /// (ViM), merge the shards' first passes, end the first pass on the
    /// merged fitter, give each shard a clone of it for its second pass,
    /// and merge those clones. [`FeatureDetector::fit_shards`] does all of
    /// this for shards in memory. Errors when the two differ in settings,
    /// width or pass.
    fn merge(&mut self, other: Self) -> Result<()>
    where
        Self: Sized;
}

/// The error of a [`LayerFitter::merge`] of two fitters that cannot be
/// one fit: `why` says how they differ.
pub(crate) fn cannot_merge(detector: &str, why: impl fmt::Display) -> Error {
    Error::custom(format!(
        "cannot merge these partial fits of {detector}: {why}. Merge only fitters made by one \
         detector (the same settings) for the same layer, each fed its own shard, in the same pass"
    ))
}

/// Errors unless the two fitters' `what` agree.
pub(crate) fn merge_check<T: PartialEq + fmt::Debug>(
    detector: &str,
    what: &str,
    mine: &T,
    other: &T,
) -> Result<()> {
    if mine == other {
        Ok(())
    } else {
        Err(cannot_merge(
            detector,
            format!("their {what} differ ({mine:?} and {other:?})"),
        ))
    }
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
            with_sequential_products(|| {
                state.score_layer(&LayerBatch {
                    features: batch.features.slice(s![range.clone(), ..]),
                    labels: batch.labels.map(|l| l.slice_move(s![range.clone()])),
                    logits: batch.logits.map(|l| l.slice_move(s![range.clone(), ..])),
                })
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
    type Fitter: LayerFitter<Fitted = Self::Fitted> + Clone + Send + Sync;
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
        check_fit_features(features, labels, &what)?;
        let mut fitter = self.fitter(features.ncols(), None)?;
        for batch in fit_chunks(features, labels) {
            fitter.update(&batch)?;
        }
        if fitter.end_first_pass()? {
            for batch in fit_chunks(features, labels) {
                fitter.update_second(&batch)?;
            }
        }
        fitter.finish()
    }

    /// The first pass of one layer's fit over a shard of its precomputed
    /// fit features `(N, D)` and labels, as a worker of a cluster runs it:
    /// save the [`PartialFit`](super::PartialFit), merge it with the other
    /// shards' where they meet, and finish it. Errors as
    /// [`fit_features`](Self::fit_features) does.
    fn partial_fit(
        &self,
        features: ArrayView2<f32>,
        labels: ArrayView1<i64>,
    ) -> Result<super::PartialFit<Self>>
    where
        Self: Sized,
    {
        let mut partial = super::PartialFit::new(self, features.ncols())?;
        partial.update(features, labels)?;
        Ok(partial)
    }

    /// Fits one layer on `shards` of its precomputed fit features, each
    /// `(features, labels)`: every shard on its own thread, the partial
    /// fits merged ([`LayerFitter::merge`]), a second pass (ViM) likewise.
    /// The state is the one [`fit_features`](Self::fit_features) gives on
    /// all the rows in the shards' order, up to rounding (NNGuide: see its
    /// fitter's merge). A cluster engine's workers do the same with
    /// [`fitter`](Self::fitter), [`LayerFitter::update`] and
    /// [`LayerFitter::merge`]. Errors on no shard, a shard of no rows,
    /// shards of different widths, and what `fit_features` refuses.
    ///
    /// ```
    /// use ndarray::{Array1, Array2, s};
    /// use oodkit::detectors::{FeatureDetector, Mahalanobis, ScoreFeatures};
    ///
    /// let features = Array2::from_shape_fn((40, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
    /// let labels: Array1<i64> = (0..40).map(|i| i % 2).collect();
    /// let shards: Vec<_> = (0..4)
    ///     .map(|k| (features.slice(s![k * 10..(k + 1) * 10, ..]), labels.slice(s![k * 10..(k + 1) * 10])))
    ///     .collect();
    /// let detector = Mahalanobis::new();
    /// let sharded = detector.fit_shards(&shards)?;
    /// let whole = detector.fit_features(features.view(), labels.view())?;
    /// let (a, b) = (sharded.score_features(features.view())?, whole.score_features(features.view())?);
    /// assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)));
    /// # Ok::<(), oodkit::Error>(())
    /// ```
    fn fit_shards(&self, shards: &[(ArrayView2<f32>, ArrayView1<i64>)]) -> Result<Self::Fitted>
    where
        Self: Sync,
    {
        let Some(((first, _), _)) = shards.split_first() else {
            return Err(Error::Empty {
                what: format!("the shards of fit features of {}", self.name()),
                hint: "give at least one shard".into(),
            });
        };
        let width = first.ncols();
        for (i, (features, labels)) in shards.iter().enumerate() {
            let what = format!("shard {i} of the fit features of {}", self.name());
            check_fit_features(*features, *labels, &what)?;
            check_width(width, *features, &what)?;
        }
        let firsts = shards
            .par_iter()
            .map(|(features, labels)| {
                with_sequential_products(|| {
                    let mut fitter = self.fitter(width, None)?;
                    for batch in fit_chunks(*features, *labels) {
                        fitter.update(&batch)?;
                    }
                    Ok(fitter)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut merged = merge_all(firsts)?;
        if merged.end_first_pass()? {
            let seconds = shards
                .par_iter()
                .map(|(features, labels)| {
                    with_sequential_products(|| {
                        let mut fitter = merged.clone();
                        for batch in fit_chunks(*features, *labels) {
                            fitter.update_second(&batch)?;
                        }
                        Ok(fitter)
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            merged = merge_all(seconds)?;
        }
        merged.finish()
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

/// Checks one layer's fit features `(N, D)` and labels: rows and columns,
/// one label per row, finite values.
pub(super) fn check_fit_features(
    features: ArrayView2<f32>,
    labels: ArrayView1<i64>,
    what: &str,
) -> Result<()> {
    if features.nrows() == 0 {
        return Err(Error::Empty {
            what: what.into(),
            hint: "fit on at least one sample".into(),
        });
    }
    if features.ncols() == 0 {
        return Err(Error::ShapeMismatch {
            what: what.into(),
            expected: "(N, D) with D ≥ 1".into(),
            found: format!("{:?}", features.shape()),
        });
    }
    check_labels_len(features, labels, what)?;
    check_finite(features, what)
}

/// Fit features and labels as batches of at most [`CHUNK`] rows.
pub(super) fn fit_chunks<'a>(
    features: ArrayView2<'a, f32>,
    labels: ArrayView1<'a, i64>,
) -> impl Iterator<Item = LayerBatch<'a>> {
    (0..features.nrows()).step_by(CHUNK).map(move |start| {
        let end = (start + CHUNK).min(features.nrows());
        LayerBatch {
            features: features.slice_move(s![start..end, ..]),
            labels: Some(labels.slice_move(s![start..end])),
            logits: None,
        }
    })
}

/// The fitters merged in order (at least one).
fn merge_all<F: LayerFitter>(fitters: Vec<F>) -> Result<F> {
    let mut fitters = fitters.into_iter();
    let mut merged = fitters
        .next()
        .ok_or_else(|| Error::custom("no partial fit to merge"))?;
    for other in fitters {
        merged.merge(other)?;
    }
    Ok(merged)
}
