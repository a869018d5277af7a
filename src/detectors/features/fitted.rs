//! [`FittedFeatures`]: what a feature detector learned through a model,
//! one state per layer with the layers, the aggregator and the input step,
//! and how it scores a batch.

use ndarray::{Array1, ArrayView2};

use super::aggregation::Aggregator;
use super::traits::{saturated, score_in_parts};
use super::{LayerBatch, ScoreFeatures};
use crate::batch::Batch;
use crate::detectors::{FittedDetector, InputPerturbation, ModelShape, ScoreOutput};
use crate::error::{Error, Result};
use crate::model::{CheckedFeatures, LayerId, Model, check_logits, features_of, input_gradient_of};

/// What a feature detector learned through a model: one fitted state per
/// layer, the layers they came from, the aggregator that combines several,
/// and the input step. Holds no model; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct FittedFeatures<S> {
    pub(super) name: &'static str,
    pub(super) layers: Vec<LayerId>,
    pub(super) states: Vec<S>,
    pub(super) aggregator: Option<Aggregator>,
    pub(super) perturbation: Option<InputPerturbation>,
    pub(super) expects: Option<ModelShape>,
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
            per_layer.push(saturated(score_in_parts(
                state,
                &LayerBatch {
                    features: features.view(),
                    labels: None,
                    logits: (out.logits.ncols() > 0).then(|| out.logits.view()),
                },
            )?));
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
