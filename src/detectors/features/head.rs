//! The last layer — weights W `(classes, D)` and bias b — that the
//! detectors working between the penultimate features and the logits read
//! (DICE, VRA, fDBD, NCI, GradNorm, Residual): taken from the model
//! ([`LastLayer::head_parameters`](crate::model::LastLayer::head_parameters)) or given by the caller, checked once,
//! saved with the fitted state.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, CowArray, Ix2};

use super::LayerBatch;
use serde::{Deserialize, Serialize};

use crate::detectors::file::array;
pub(crate) use crate::detectors::softmax::logsumexp;
use crate::error::{Error, Result};
use crate::linalg::gemm;
use crate::model::{Model, check_finite, check_head, last_layer_of};

/// A checked last layer: W `(classes, D)`, b `(classes,)`, finite.
/// In files: `head_weights` and `head_bias` beside the state's arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Head {
    #[serde(rename = "head_weights", with = "array")]
    pub(crate) weights: Array2<f32>,
    #[serde(rename = "head_bias", with = "array")]
    pub(crate) bias: Array1<f32>,
}

impl Head {
    /// Checks shapes (one bias per row of W, neither empty) and values.
    pub(crate) fn new(weights: Array2<f32>, bias: Array1<f32>, detector: &str) -> Result<Self> {
        let what = format!("{detector} head weights and bias");
        check_head(&weights, &bias, &what)?;
        check_finite(weights.view(), &what)?;
        check_finite(bias.view().insert_axis(ndarray::Axis(0)), &what)?;
        Ok(Head { weights, bias })
    }

    /// The head given to the detector, else the model's, checked against
    /// the feature width `width`. Without either (precomputed features and
    /// no head given) it says how to give one.
    pub(crate) fn resolve(
        given: Option<&Head>,
        model: Option<&dyn Model>,
        width: usize,
        detector: &str,
        constructor: &str,
    ) -> Result<Head> {
        let head = match (given, model) {
            (Some(head), _) => head.clone(),
            (None, Some(model)) => {
                let (weights, bias) = last_layer_of(model, detector)?;
                Head::new(weights, bias, detector)?
            }
            (None, None) => {
                return Err(Error::Unsupported {
                    what: format!("{detector} on precomputed features without the last layer"),
                    hint: format!("give it the head: {constructor}.with_head(weights, bias)"),
                });
            }
        };
        if head.width() != width {
            return Err(Error::ShapeMismatch {
                what: format!("{detector} head weights vs the features"),
                expected: format!("(num_classes, {width}): the layer fitted must feed the head"),
                found: format!("{:?}", head.weights.shape()),
            });
        }
        Ok(head)
    }

    /// The feature width D.
    pub(crate) fn width(&self) -> usize {
        self.weights.ncols()
    }

    /// The number of classes.
    pub(crate) fn classes(&self) -> usize {
        self.weights.nrows()
    }

    /// The logits f·Wᵀ + b of features `(N, D)`.
    pub(crate) fn logits(&self, features: ArrayView2<f32>) -> Array2<f32> {
        gemm(features, self.weights.view(), true) + &self.bias
    }

    /// The batch's logits through the model, else the head's on its
    /// features (precomputed features).
    pub(crate) fn logits_of<'a>(&self, batch: &LayerBatch<'a>) -> CowArray<'a, f32, Ix2> {
        match batch.logits {
            Some(logits) => logits.into(),
            None => self.logits(batch.features).into(),
        }
    }

    /// Errors unless W and b agree and are not empty (a head read back).
    pub(crate) fn validate(&self) -> Result<()> {
        check_head(&self.weights, &self.bias, "the stored last layer")
    }

    /// [`validate`](Self::validate), and that a vector of the state,
    /// `what` (e.g. "NCI's mean"), has the head's `len` features.
    pub(crate) fn validate_with(&self, len: usize, what: &str) -> Result<()> {
        if len != self.width() {
            return Err(Error::custom(format!(
                "{what} has {len} features, its last layer {}",
                self.width()
            )));
        }
        self.validate()
    }
}

/// The index of a row's largest entry (the first of ties).
pub(crate) fn argmax_row(row: ArrayView1<f32>) -> usize {
    crate::metrics::argmax(row.iter().copied())
}
