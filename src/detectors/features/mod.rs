//! What every detector on internal features shares: fitting layer by layer
//! in a stream of batches (through a [`FeatureModel`]) or on precomputed
//! features, the calibration pass some need, multi-layer aggregation, and
//! scoring.

use std::fmt;

use ndarray::{Array1, ArrayView1, ArrayView2, Axis, concatenate};

use super::ScoreOutput;
use super::odin::Odin;
use crate::batch::Batch;
use crate::datasets::{BatchSource, require_fit_data};
use crate::error::{Error, Result};
use crate::model::{FeatureModel, LayerId, check_logits, resolve_layers};

mod aggregation;
pub(crate) mod moments;

pub use aggregation::{Aggregation, Aggregator};

/// Rows per chunk when fitting on, or scoring, precomputed features: the
/// working memory stays O(chunk · D) however many rows there are.
pub(crate) const CHUNK: usize = 4096;

/// One layer's activations for a batch of samples, with what else the
/// detectors may use: the class labels (fit data) and the logits (absent
/// on precomputed features).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerInput<'a> {
    pub(crate) features: ArrayView2<'a, f32>,
    pub(crate) labels: Option<ArrayView1<'a, i64>>,
    pub(crate) logits: Option<ArrayView2<'a, f32>>,
}

/// Accumulates one layer's statistics over the fit data.
pub(crate) trait LayerFitter {
    /// What fitting produces.
    type Fitted: LayerScorer;
    /// Adds a batch.
    fn update(&mut self, input: &LayerInput) -> Result<()>;
    /// The fitted state.
    fn finish(self) -> Result<Self::Fitted>;
}

/// A fitted layer: scores its features.
pub(crate) trait LayerScorer {
    /// The feature width it was fitted on.
    fn width(&self) -> usize;
    /// One score per row, higher = more OOD.
    fn score(&self, input: &LayerInput) -> Result<Array1<f32>>;
    /// Whether it needs a second pass over the fit data
    /// ([`calibrate`](Self::calibrate)) before scoring.
    fn needs_calibration(&self) -> bool {
        false
    }
    /// Adds a fit batch to the calibration.
    fn calibrate(&mut self, input: &LayerInput) -> Result<()> {
        let _ = input;
        Ok(())
    }
    /// Ends the calibration pass.
    fn end_calibration(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A detector's method: how to start fitting a layer.
pub(crate) trait FeatureMethod {
    /// The fitter of one layer.
    type Fitter: LayerFitter<Fitted = Self::Fitted>;
    /// The fitted layer.
    type Fitted: LayerScorer;
    /// The detector's name.
    fn name(&self) -> &'static str;
    /// Whether the fit data must carry class labels.
    fn needs_labels(&self) -> bool;
    /// A fitter for features `dim` wide; `model` is the network when
    /// fitting through one.
    fn fitter(&self, dim: usize, model: Option<&dyn FeatureModel>) -> Result<Self::Fitter>;
}

/// The layers, model, fitted layers and aggregator of a feature detector.
pub(crate) struct FeatureCore<'m, S> {
    pub(crate) layers: Vec<LayerId>,
    pub(crate) aggregation: Aggregation,
    model: Option<Box<dyn FeatureModel + 'm>>,
    fitted: Vec<S>,
    aggregator: Option<Aggregator>,
}

impl<S> fmt::Debug for FeatureCore<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeatureCore")
            .field("layers", &self.layers)
            .field("aggregation", &self.aggregation)
            .field("model", &self.model.as_ref().map(|_| "fitted"))
            .field("fitted_layers", &self.fitted.len())
            .finish()
    }
}

impl<S> Default for FeatureCore<'_, S> {
    /// The penultimate layer (`-2`), standard-deviation aggregation.
    fn default() -> Self {
        FeatureCore {
            layers: vec![LayerId::Index(-2)],
            aggregation: Aggregation::default(),
            model: None,
            fitted: Vec::new(),
            aggregator: None,
        }
    }
}

/// Checks `features` has one row per label (when labels are given) and
/// only finite values.
fn check_features(
    features: ArrayView2<f32>,
    labels: Option<ArrayView1<i64>>,
    what: &str,
) -> Result<()> {
    if let Some(labels) = labels
        && labels.len() != features.nrows()
    {
        return Err(Error::LengthMismatch {
            what: format!("rows of {what} vs labels"),
            left: features.nrows(),
            right: labels.len(),
        });
    }
    for (i, row) in features.rows().into_iter().enumerate() {
        if row.iter().any(|v| !v.is_finite()) {
            return Err(Error::NotANumber {
                what: format!("{what} (row = sample)"),
                index: i,
                hint: "features must be finite numbers (NaN or infinity found)".into(),
            });
        }
    }
    Ok(())
}

impl<'m, S: LayerScorer> FeatureCore<'m, S> {
    /// Whether fitted through a model (what [`Detector::score`] needs).
    ///
    /// [`Detector::score`]: super::Detector::score
    pub(crate) fn is_fitted(&self) -> bool {
        self.model.is_some() && !self.fitted.is_empty()
    }

    /// The fitted layers.
    pub(crate) fn fitted(&self) -> &[S] {
        &self.fitted
    }

    /// Fits every layer on `fit_data` through `model`: one streaming pass
    /// for the statistics, a second when a layer calibrates on the fit data
    /// (ViM), and one for the aggregator's fit scores when there are
    /// several layers.
    pub(crate) fn fit_model<M: FeatureMethod<Fitted = S>>(
        &mut self,
        method: &M,
        model: Box<dyn FeatureModel + 'm>,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<()> {
        // `layers` is never empty: the default is [-2] and `with_layers`
        // rejects an empty list.
        let data = require_fit_data(
            fit_data,
            &format!(
                "{} fits statistics of in-distribution features",
                method.name()
            ),
        )?;
        resolve_layers(&self.layers, &model.layer_names())?;
        let mut fitters: Vec<Option<M::Fitter>> = self.layers.iter().map(|_| None).collect();
        let mut pass = Pass::new(model.as_ref(), &self.layers, method.name());
        pass.run(data, 0, method.needs_labels(), |l, input| {
            let fitter = match &mut fitters[l] {
                Some(f) => f,
                slot => slot.insert(method.fitter(input.features.ncols(), Some(model.as_ref()))?),
            };
            fitter.update(input)
        })?;
        let mut fitted = fitters
            .into_iter()
            .map(|f| {
                f.ok_or_else(|| Error::Empty {
                    what: format!("the fit data of {}", method.name()),
                    hint: "it gave no batch".into(),
                })?
                .finish()
            })
            .collect::<Result<Vec<S>>>()?;
        if fitted.iter().any(S::needs_calibration) {
            pass.run(data, 1, false, |l, input| fitted[l].calibrate(input))?;
            for f in &mut fitted {
                f.end_calibration()?;
            }
        }
        let aggregator = if fitted.len() > 1 {
            let mut scores: Vec<Vec<f32>> = vec![Vec::new(); fitted.len()];
            pass.run(data, 2, false, |l, input| {
                scores[l].extend(fitted[l].score(input)?);
                Ok(())
            })?;
            let views: Vec<_> = scores.iter().map(ArrayView1::from).collect();
            Some(Aggregator::fit(self.aggregation, &views)?)
        } else {
            None
        };
        self.fitted = fitted;
        self.aggregator = aggregator;
        self.model = Some(model);
        Ok(())
    }

    /// Fits one layer on precomputed `features` `(N, D)` with their
    /// `labels`, in chunks. Any earlier fit (and model) is dropped.
    pub(crate) fn fit_features<M: FeatureMethod<Fitted = S>>(
        &mut self,
        method: &M,
        features: ArrayView2<f32>,
        labels: ArrayView1<i64>,
    ) -> Result<()> {
        let what = format!("fit features of {}", method.name());
        if features.nrows() == 0 {
            return Err(Error::Empty {
                what,
                hint: "fit on at least one sample".into(),
            });
        }
        check_features(features, Some(labels), &what)?;
        let chunks = || {
            features
                .axis_chunks_iter(Axis(0), CHUNK)
                .zip(labels.axis_chunks_iter(Axis(0), CHUNK))
                .map(|(features, labels)| LayerInput {
                    features,
                    labels: Some(labels),
                    logits: None,
                })
        };
        let mut fitter = method.fitter(features.ncols(), None)?;
        for input in chunks() {
            fitter.update(&input)?;
        }
        let mut fitted = fitter.finish()?;
        if fitted.needs_calibration() {
            for input in chunks() {
                fitted.calibrate(&input)?;
            }
            fitted.end_calibration()?;
        }
        self.fitted = vec![fitted];
        self.aggregator = None;
        self.model = None;
        Ok(())
    }

    /// Scores precomputed features of the single fitted layer, in chunks.
    pub(crate) fn score_features(
        &self,
        detector: &'static str,
        features: ArrayView2<f32>,
    ) -> Result<Array1<f32>> {
        let fitted = match self.fitted.as_slice() {
            [] => return Err(Error::NotFitted { detector }),
            [one] => one,
            many => {
                return Err(Error::Unsupported {
                    what: format!(
                        "score_features on {detector} fitted on {} layers",
                        many.len()
                    ),
                    hint: "score a dataset with Detector::score, or fit one layer".into(),
                });
            }
        };
        let what = format!("features scored by {detector}");
        check_width(fitted.width(), features, &what)?;
        check_features(features, None, &what)?;
        let parts = features
            .axis_chunks_iter(Axis(0), CHUNK)
            .map(|features| {
                fitted.score(&LayerInput {
                    features,
                    labels: None,
                    logits: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        Ok(concatenate(Axis(0), &views)?)
    }

    /// Scores a batch through the fitted model: each layer's scores, then
    /// their aggregate. With `perturb`, the features are those of the
    /// inputs after ODIN's step (the logits returned stay those of the
    /// unperturbed inputs).
    pub(crate) fn score_batch(
        &self,
        detector: &'static str,
        batch: Batch,
        perturb: Option<&Odin>,
    ) -> Result<ScoreOutput> {
        let model = self.model.as_deref().ok_or(Error::NotFitted { detector })?;
        let n = batch.len();
        // With ODIN's step, the logits returned are the unperturbed inputs'.
        let (out, unperturbed) = match perturb {
            Some(odin) if odin.epsilon() > 0.0 => {
                let logits = model.forward(batch.inputs.view())?;
                check_logits(&logits, n)?;
                let perturbed = odin.perturb(model, batch.inputs, logits.view())?;
                (
                    model.forward_features_owned(perturbed, &self.layers)?,
                    Some(logits),
                )
            }
            _ => (
                model.forward_features_owned(batch.inputs, &self.layers)?,
                None,
            ),
        };
        check_logits(&out.logits, n)?;
        let mut per_layer = Vec::with_capacity(self.fitted.len());
        for ((fitted, features), id) in self.fitted.iter().zip(&out.features).zip(&self.layers) {
            let what = format!("activations of {id}");
            check_width(fitted.width(), features.view(), &what)?;
            check_features(features.view(), None, &what)?;
            per_layer.push(fitted.score(&LayerInput {
                features: features.view(),
                labels: None,
                logits: Some(out.logits.view()),
            })?);
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

/// A pass of a model over the fit data, layer by layer.
struct Pass<'a> {
    model: &'a dyn FeatureModel,
    layers: &'a [LayerId],
    detector: &'static str,
}

impl<'a> Pass<'a> {
    fn new(model: &'a dyn FeatureModel, layers: &'a [LayerId], detector: &'static str) -> Self {
        Pass {
            model,
            layers,
            detector,
        }
    }

    /// Runs the model on every batch of pass `pass` of `data` and hands
    /// each layer's input to `each(layer, input)`.
    fn run(
        &mut self,
        data: &dyn BatchSource,
        pass: usize,
        needs_labels: bool,
        mut each: impl FnMut(usize, &LayerInput) -> Result<()>,
    ) -> Result<()> {
        let mut offset = 0;
        for batch in data.batches_for_pass(pass as u64)? {
            let Batch { inputs, labels, .. } = batch?;
            let n = inputs.shape()[0];
            let step = || -> Result<()> {
                if needs_labels && labels.is_none() {
                    return Err(Error::invalid(
                        "fit data",
                        "batches without labels",
                        format!(
                            "{} fits class-conditional statistics: fit on a labelled dataset",
                            self.detector
                        ),
                    ));
                }
                let out = self.model.forward_features_owned(inputs, self.layers)?;
                check_logits(&out.logits, n)?;
                for (l, (features, id)) in out.features.iter().zip(self.layers).enumerate() {
                    let labels = labels.as_ref().map(|l| l.view());
                    check_features(features.view(), labels, &format!("activations of {id}"))?;
                    each(
                        l,
                        &LayerInput {
                            features: features.view(),
                            labels,
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

/// The public API every feature detector shares, on a struct with fields
/// `method` (a [`FeatureMethod`]), `core` (a [`FeatureCore`]) and, with
/// `perturbation`, `perturbation: Option<Odin<'static>>`.
macro_rules! feature_detector {
    ($ty:ident, $name:literal) => {
        $crate::detectors::features::feature_detector!(@api $ty, $name);
        $crate::detectors::features::feature_detector!(@detector $ty, $name, |_d| None);
    };
    ($ty:ident, $name:literal, perturbation) => {
        $crate::detectors::features::feature_detector!(@api $ty, $name);
        $crate::detectors::features::feature_detector!(
            @detector $ty, $name, |d| d.perturbation.as_ref()
        );
        impl $ty<'_> {
            #[doc = concat!(
                "Perturbs each input as ODIN does before its features are taken: one step ",
                "x − ε·sign(∇ₓ CE(logits(x)/T, argmax)) (ε ≥ 0, T > 0; ε = 0 turns it off, ",
                "the default). Needs a model with input gradients ",
                "([`Model::input_gradient`](crate::model::Model::input_gradient)); only ",
                "scoring through a model is perturbed, not [`score_features`](Self::score_features)."
            )]
            pub fn with_input_perturbation(
                mut self,
                epsilon: f32,
                temperature: f32,
            ) -> $crate::Result<Self> {
                self.perturbation = Some($crate::detectors::Odin::new(temperature, epsilon)?);
                Ok(self)
            }
        }
    };
    (@api $ty:ident, $name:literal) => {
        impl $ty<'_> {
            #[doc = concat!(
                "Fits ", $name, " on these layers of the model (default: `-2`, the ",
                "penultimate one); with several, their scores are combined by the ",
                "[`Aggregation`](crate::detectors::Aggregation). An empty list is an error."
            )]
            pub fn with_layers<L: Into<$crate::model::LayerId>>(
                mut self,
                layers: impl IntoIterator<Item = L>,
            ) -> $crate::Result<Self> {
                let layers: Vec<$crate::model::LayerId> =
                    layers.into_iter().map(Into::into).collect();
                if layers.is_empty() {
                    return Err($crate::Error::invalid(
                        "layers",
                        "[]",
                        "give at least one layer (e.g. -2, the penultimate one)",
                    ));
                }
                self.core.layers = layers;
                Ok(self)
            }

            /// How the scores of several layers are combined (default
            /// [`Aggregation::StdNormalized`](crate::detectors::Aggregation::StdNormalized)).
            pub fn with_aggregation(mut self, aggregation: $crate::detectors::Aggregation) -> Self {
                self.core.aggregation = aggregation;
                self
            }

            /// The layers it fits on.
            pub fn layers(&self) -> &[$crate::model::LayerId] {
                &self.core.layers
            }

            #[doc = concat!(
                "Fits ", $name, " on one layer's precomputed features `(N, D)` of ",
                "in-distribution data and their class labels (`N` of them), streaming ",
                "through them in chunks. Replaces any earlier fit, model included: score ",
                "with [`score_features`](Self::score_features). Errors on no rows, ",
                "labels of another length, and non-finite values."
            )]
            pub fn fit_features(
                &mut self,
                features: ndarray::ArrayView2<f32>,
                labels: ndarray::ArrayView1<i64>,
            ) -> $crate::Result<()> {
                self.core.fit_features(&self.method, features, labels)
            }

            #[doc = concat!(
                "Scores precomputed features `(N, D)` of the layer ", $name, " was fitted ",
                "on (higher = more OOD). Errors when not fitted, fitted on several layers, ",
                "on another width, or on non-finite values."
            )]
            pub fn score_features(
                &self,
                features: ndarray::ArrayView2<f32>,
            ) -> $crate::Result<ndarray::Array1<f32>> {
                self.core.score_features($name, features)
            }
        }
    };
    (@detector $ty:ident, $name:literal, |$d:ident| $perturbation:expr) => {
        impl<'m> $crate::detectors::Detector for $ty<'m> {
            type Network = dyn $crate::model::FeatureModel + 'm;

            fn name(&self) -> &'static str {
                $name
            }

            /// Fits on the activations of `fit_data` (required) through
            /// `model`, streaming over its batches.
            fn fit_model(
                &mut self,
                model: Box<dyn $crate::model::FeatureModel + 'm>,
                fit_data: Option<&dyn $crate::datasets::BatchSource>,
            ) -> $crate::Result<()> {
                self.core.fit_model(&self.method, model, fit_data)
            }

            fn is_fitted(&self) -> bool {
                self.core.is_fitted()
            }

            fn score_batch(
                &self,
                batch: $crate::batch::Batch,
            ) -> $crate::Result<$crate::detectors::ScoreOutput> {
                let $d = self;
                self.core.score_batch($name, batch, $perturbation)
            }
        }
    };
}
pub(crate) use feature_detector;
