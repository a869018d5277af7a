//! The detectors on internal features — Mahalanobis, RMDS, KNN, ViM, SHE,
//! Gram, and the OpenOOD post-hoc methods DICE, VRA, fDBD, NCI, NNGuide,
//! GradNorm, Residual, GMM (those that read the last layer share a checked
//! `Head`) — and what they share: fitting layer by layer in a stream of
//! batches (through a [`FeatureModel`]) or on precomputed features, the
//! calibration pass some need, multi-layer aggregation, and scoring.
//!
//! Three traits make a feature detector, and a new one needs only them:
//! - [`FeatureDetector`], its parameters: how to start fitting one layer,
//!   and the [`FeatureOptions`] (layers, aggregation, input step) every
//!   feature detector takes;
//! - [`LayerFitter`], one layer's statistics accumulated batch by batch;
//! - [`ScoreFeatures`], what was learned of one layer: it scores that
//!   layer's features, holds no model and is `Send + Sync`.
//!
//! Fitted through a model ([`Detector::fit`]), the layers' fitted states
//! are kept in a [`FittedFeatures`] with the layers they came from and the
//! aggregator that combines them.

use std::fmt;

use ndarray::{Array1, ArrayView1, ArrayView2, Axis, concatenate};

use super::{
    Aggregation, Aggregator, Detector, FittedDetector, InputPerturbation, ModelShape, ScoreOutput,
};
use crate::batch::Batch;
use crate::datasets::{BatchSource, require_fit_data};
use crate::error::{Error, Result};
use crate::model::{
    CheckedFeatures, FeatureModel, LayerId, Model, check_finite, check_logits, features_of,
    input_gradient_of,
};

pub(crate) mod aggregation;
pub(super) mod dice;
pub(super) mod fdbd;
pub(super) mod gmm;
pub(super) mod gradnorm;
pub(super) mod gram;
mod head;
pub(super) mod knn;
pub(super) mod mahalanobis;
pub(crate) mod moments;
pub(super) mod nci;
pub(super) mod nnguide;
mod quantile;
pub(super) mod residual;
pub(super) mod she;
mod stored;
pub(super) mod vim;
pub(super) mod vra;

pub use dice::{Dice, DiceFitter, DiceHead};
pub use fdbd::{Fdbd, FdbdBoundaries, FdbdFitter, FdbdNormalizer};
pub use gmm::{ClassMixture, Gmm, GmmFitter};
pub use gradnorm::{GradNorm, GradNormFitter, GradNormHead};
pub use gram::{Gram, GramBounds, GramFitter};
pub use knn::{Knn, KnnFitter, KnnIndex};
pub use mahalanobis::{ClassGaussians, GaussianFitter, Mahalanobis, Rmds};
pub use nci::{Nci, NciCentre, NciFitter};
pub use nnguide::{GuideBank, NnGuide, NnGuideFitter};
pub use residual::{Residual, ResidualFitter, ResidualSpace};
pub use she::{She, SheFitter, SheMeans};
pub use vim::{PrincipalDims, Vim, VimFitter, VimSubspace};
pub use vra::{Rectification, Vra, VraFitter, VraThresholds};

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

/// Accumulates one layer's statistics over the fit data, batch by batch.
pub trait LayerFitter {
    /// What fitting produces.
    type Fitted: ScoreFeatures;
    /// Adds a batch.
    fn update(&mut self, batch: &LayerBatch) -> Result<()>;
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

    /// Whether it needs a second pass over the fit data
    /// ([`calibrate`](Self::calibrate)) before scoring (ViM's α).
    fn needs_calibration(&self) -> bool {
        false
    }

    /// Adds a fit batch to the calibration.
    fn calibrate(&mut self, batch: &LayerBatch) -> Result<()> {
        let _ = batch;
        Ok(())
    }

    /// Ends the calibration pass.
    fn end_calibration(&mut self) -> Result<()> {
        Ok(())
    }

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
        let parts = features
            .axis_chunks_iter(Axis(0), CHUNK)
            .map(|features| {
                self.score_layer(&LayerBatch {
                    features,
                    labels: None,
                    logits: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        Ok(saturated(concatenate(Axis(0), &views)?))
    }
}

/// What every feature detector takes besides its own parameters: the
/// layers it fits on (default `-2`, the penultimate one), how several
/// layers' scores are combined, and an optional input step before the
/// features are taken.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureOptions {
    layers: Vec<LayerId>,
    aggregation: Aggregation,
    perturbation: Option<InputPerturbation>,
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
/// and [`Detector`]: the whole flow through a model (streaming fit of
/// every layer, calibration, aggregation).
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
        let mut fitted = fitter.finish()?;
        if fitted.needs_calibration() {
            for batch in chunks() {
                fitted.calibrate(&batch)?;
            }
            fitted.end_calibration()?;
        }
        Ok(fitted)
    }
}

/// What a feature detector learned through a model: one fitted state per
/// layer, the layers they came from, the aggregator that combines several,
/// and the input step. Holds no model; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct FittedFeatures<S> {
    name: &'static str,
    layers: Vec<LayerId>,
    states: Vec<S>,
    aggregator: Option<Aggregator>,
    perturbation: Option<InputPerturbation>,
    expects: Option<ModelShape>,
}

impl<S: ScoreFeatures> FittedFeatures<S> {
    /// The parts of a fit, checked against each other: what loading a
    /// saved detector rebuilds it from.
    pub(crate) fn from_parts(
        name: &'static str,
        layers: Vec<LayerId>,
        states: Vec<S>,
        aggregator: Option<Aggregator>,
        perturbation: Option<InputPerturbation>,
        expects: Option<ModelShape>,
    ) -> Result<Self> {
        if layers.is_empty() || layers.len() != states.len() {
            return Err(Error::LengthMismatch {
                what: format!("layers vs fitted layer states of {name}"),
                left: layers.len(),
                right: states.len(),
            });
        }
        match (&aggregator, states.len()) {
            (None, 1) => {}
            (Some(agg), n) if n > 1 && agg.layers() == n => {}
            (agg, n) => {
                return Err(Error::LengthMismatch {
                    what: format!("fitted layers of {name} vs layers its aggregator combines"),
                    left: n,
                    right: agg.as_ref().map_or(0, Aggregator::layers),
                });
            }
        }
        Ok(FittedFeatures {
            name,
            layers,
            states,
            aggregator,
            perturbation,
            expects,
        })
    }

    /// The input shape and classes seen at fit time (through a model).
    pub fn expects(&self) -> Option<ModelShape> {
        self.expects
    }

    /// The layers fitted on, in order.
    pub fn layers(&self) -> &[LayerId] {
        &self.layers
    }

    /// Each layer's fitted state, in the order of [`layers`](Self::layers).
    pub fn states(&self) -> &[S] {
        &self.states
    }

    /// The aggregator of the layers' scores, with several layers.
    pub fn aggregator(&self) -> Option<&Aggregator> {
        self.aggregator.as_ref()
    }

    /// The input step applied before the features are taken, if any.
    pub fn perturbation(&self) -> Option<InputPerturbation> {
        self.perturbation
    }

    /// Each layer's feature width.
    pub fn widths(&self) -> Vec<usize> {
        self.states.iter().map(ScoreFeatures::width).collect()
    }

    /// Scores precomputed features `(N, D)` of the one layer fitted on
    /// ([`ScoreFeatures::score_features`] of its state). Errors when fitted
    /// on several layers (their scores combine only through a model), on
    /// another width, or on non-finite values.
    pub fn score_features(&self, features: ArrayView2<f32>) -> Result<Array1<f32>> {
        match self.states.as_slice() {
            [one] => one.score_features(features),
            many => Err(Error::Unsupported {
                what: format!(
                    "score_features on {} fitted on {} layers",
                    self.name,
                    many.len()
                ),
                hint: "score a dataset through the model, or fit one layer".into(),
            }),
        }
    }
}

impl<S: ScoreFeatures> FittedDetector for FittedFeatures<S> {
    fn kind(&self) -> &'static str {
        self.name
    }

    fn expects(&self) -> Option<ModelShape> {
        self.expects
    }

    /// Resolves every fitted layer on the model and, when the fit saw the
    /// model's input shape, runs one zero input through it to check each
    /// layer's width and the number of classes.
    fn check_model(&self, model: &dyn Model) -> Result<()> {
        let checked = CheckedFeatures::new(features_of(model, self.name)?, &self.layers)?;
        if self.perturbation.is_some() {
            input_gradient_of(model, &format!("{} with an input step", self.name))?;
        }
        let Some(expects) = &self.expects else {
            return Ok(());
        };
        let out = checked
            .expecting(self.widths())
            .forward(expects.zero_input())?;
        expects.check_classes(&out.logits, "the model attached")
    }

    /// Each layer's scores, then their aggregate. With an input step, the
    /// features are those of the perturbed inputs (the logits returned
    /// stay those of the unperturbed ones).
    fn score_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput> {
        let mut checked = CheckedFeatures::new(features_of(model, self.name)?, &self.layers)?
            .expecting(self.widths());
        let n = batch.len();
        let (out, unperturbed) = match self.perturbation {
            Some(step) => {
                let logits = model.forward(batch.inputs.view())?;
                check_logits(&logits, n)?;
                let perturbed = step.perturb(model, batch.inputs, logits.view())?;
                (checked.forward(perturbed)?, Some(logits))
            }
            None => (checked.forward(batch.inputs)?, None),
        };
        let mut per_layer = Vec::with_capacity(self.states.len());
        for (state, features) in self.states.iter().zip(&out.features) {
            per_layer.push(saturated(state.score_layer(&LayerBatch {
                features: features.view(),
                labels: None,
                logits: Some(out.logits.view()),
            })?));
        }
        let scores = match &self.aggregator {
            Some(agg) => {
                let views: Vec<_> = per_layer.iter().map(|s| s.view()).collect();
                agg.aggregate(&views)?
            }
            None => per_layer.pop().unwrap_or_default(),
        };
        Ok(ScoreOutput {
            scores,
            logits: unperturbed.unwrap_or(out.logits),
            labels: batch.labels,
        })
    }
}

impl<D: FeatureDetector> Detector for D {
    type Fitted = FittedFeatures<D::Fitted>;

    /// Fits every layer of the options on `fit_data` (required) through
    /// `model`, streaming over its batches.
    fn fit_model(
        &self,
        model: &dyn Model,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<Self::Fitted> {
        fit_layers(self, model, fit_data)
    }
}

/// Fits `detector` on every layer it names, on `fit_data` through `model`:
/// one streaming pass for the statistics, a second when a layer calibrates
/// on the fit data (ViM), and one for the aggregator's fit scores when
/// there are several layers.
fn fit_layers<D: FeatureDetector>(
    detector: &D,
    model: &dyn Model,
    fit_data: Option<&dyn BatchSource>,
) -> Result<FittedFeatures<D::Fitted>> {
    let name = detector.name();
    let layers = detector.layers();
    let features = features_of(model, name)?;
    if detector.options().perturbation.is_some() {
        input_gradient_of(model, &format!("{name} with an input step"))?;
    }
    if fit_data.is_none()
        && layers.len() == 1
        && let Some(state) = detector.fit_without_data(model)
    {
        let state = state?;
        CheckedFeatures::new(features, layers)?;
        return FittedFeatures::from_parts(
            name,
            layers.to_vec(),
            vec![state],
            None,
            detector.options().perturbation,
            None,
        );
    }
    let data = require_fit_data(
        fit_data,
        &format!("{name} fits statistics of in-distribution features"),
    )?;
    let mut fitters: Vec<Option<D::Fitter>> = layers.iter().map(|_| None).collect();
    let mut pass = Pass::new(features, layers, name)?;
    pass.run(data, 0, detector.needs_labels(), |l, batch| {
        let fitter = match &mut fitters[l] {
            Some(f) => f,
            slot => slot.insert(detector.fitter(batch.features.ncols(), Some(model))?),
        };
        fitter.update(batch)
    })?;
    let mut states = fitters
        .into_iter()
        .map(|f| {
            f.ok_or_else(|| Error::Empty {
                what: format!("the fit data of {name}"),
                hint: "it gave no batch".into(),
            })?
            .finish()
        })
        .collect::<Result<Vec<_>>>()?;
    if states.iter().any(ScoreFeatures::needs_calibration) {
        pass.run(data, 1, false, |l, batch| states[l].calibrate(batch))?;
        for state in &mut states {
            state.end_calibration()?;
        }
    }
    let aggregator = if states.len() > 1 {
        let mut scores: Vec<Vec<f32>> = vec![Vec::new(); states.len()];
        pass.run(data, 2, false, |l, batch| {
            scores[l].extend(states[l].score_layer(batch)?);
            Ok(())
        })?;
        let views: Vec<_> = scores.iter().map(ArrayView1::from).collect();
        Some(Aggregator::fit(detector.options().aggregation, &views)?)
    } else {
        None
    };
    Ok(FittedFeatures {
        name,
        layers: layers.to_vec(),
        states,
        aggregator,
        perturbation: detector.options().perturbation,
        expects: pass.shape,
    })
}

/// Scores beyond f32's range (a distance of 10⁴⁰ to fit features of
/// nearly no spread) as ±f32::MAX, the nearest scores there are: the
/// order is kept and no infinity reaches the metrics.
fn saturated(mut scores: Array1<f32>) -> Array1<f32> {
    scores.mapv_inplace(|s| s.clamp(-f32::MAX, f32::MAX));
    scores
}

/// Errors unless `labels` has one entry per row of `features`.
fn check_labels_len(features: ArrayView2<f32>, labels: ArrayView1<i64>, what: &str) -> Result<()> {
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
fn check_width(width: usize, features: ArrayView2<f32>, what: &str) -> Result<()> {
    if features.ncols() != width {
        return Err(Error::ShapeMismatch {
            what: what.into(),
            expected: format!("(N, {width}), the width at fit time"),
            found: format!("{:?}", features.shape()),
        });
    }
    Ok(())
}

/// Passes of a model over the fit data, layer by layer, through the
/// checked boundary (the widths of the first pass hold for the others).
struct Pass<'a> {
    checked: CheckedFeatures<'a>,
    detector: &'static str,
    /// The first batch's input shape and classes.
    shape: Option<ModelShape>,
}

impl<'a> Pass<'a> {
    fn new(
        model: &'a dyn FeatureModel,
        layers: &'a [LayerId],
        detector: &'static str,
    ) -> Result<Self> {
        Ok(Pass {
            checked: CheckedFeatures::new(model, layers)?,
            detector,
            shape: None,
        })
    }

    /// Runs the model on every batch of pass `pass` of `data` and hands
    /// each layer's batch to `each(layer, batch)`.
    fn run(
        &mut self,
        data: &dyn BatchSource,
        pass: usize,
        needs_labels: bool,
        mut each: impl FnMut(usize, &LayerBatch) -> Result<()>,
    ) -> Result<()> {
        let mut offset = 0;
        for batch in data.batches_for_pass(pass as u64)? {
            let Batch { inputs, labels, .. } = batch?;
            let n = inputs.shape()[0];
            let step = || -> Result<()> {
                if needs_labels && labels.is_none() {
                    return Err(Error::missing(
                        "class labels of the fit batches",
                        format!(
                            "{} fits class-conditional statistics: fit on a labelled dataset",
                            self.detector
                        ),
                    ));
                }
                if let Some(labels) = &labels
                    && labels.len() != n
                {
                    return Err(Error::LengthMismatch {
                        what: "inputs vs labels of a fit batch".into(),
                        left: n,
                        right: labels.len(),
                    });
                }
                let input_shape = inputs.shape().to_vec();
                let out = self.checked.forward(inputs)?;
                if self.shape.is_none() {
                    self.shape = ModelShape::of(&input_shape, &out.logits);
                }
                for (l, features) in out.features.iter().enumerate() {
                    each(
                        l,
                        &LayerBatch {
                            features: features.view(),
                            labels: labels.as_ref().map(|l| l.view()),
                            logits: Some(out.logits.view()),
                        },
                    )?;
                }
                Ok(())
            };
            step().map_err(|e| e.in_batch_at(offset))?;
            offset += n;
        }
        Ok(())
    }
}
