//! The one checked boundary for what a [`FeatureModel`] returns: every
//! consumer (the feature detectors, activation shaping, the feature plots)
//! runs the model through [`CheckedFeatures`], so a model that returns the
//! wrong number of layers, rows of the wrong count, a width that changes
//! between batches, or non-finite values is an error at the batch that did
//! it, never garbage further on.

use ndarray::{Array2, Array4, ArrayView2};

use super::{FeatureModel, LayerId, ModelOutput, check_logits, resolve_layers};
use crate::error::{Error, Result};

/// A feature model and the layers asked of it, checking each batch's
/// output against the request and against the batches before.
pub(crate) struct CheckedFeatures<'a> {
    model: &'a dyn FeatureModel,
    layers: &'a [LayerId],
    /// Each layer's width: set by the first batch, or given up front.
    widths: Option<Vec<usize>>,
    /// The number of classes, set by the first batch.
    classes: Option<usize>,
}

impl<'a> CheckedFeatures<'a> {
    /// Checks that `model` has every layer of `layers` before anything
    /// runs.
    pub(crate) fn new(model: &'a dyn FeatureModel, layers: &'a [LayerId]) -> Result<Self> {
        resolve_layers(layers, &model.layer_names())?;
        Ok(CheckedFeatures {
            model,
            layers,
            widths: None,
            classes: None,
        })
    }

    /// Requires these widths, one per layer (e.g. those a detector was
    /// fitted on), instead of the first batch's.
    pub(crate) fn expecting(mut self, widths: Vec<usize>) -> Self {
        self.widths = Some(widths);
        self
    }

    /// Runs the model on `inputs` and checks what it returns: one array per
    /// requested layer, one row per input, the widths of the first batch
    /// (at least 1), finite activations, and logits with one row per input,
    /// the classes of the first batch and no NaN. Sample indices in errors
    /// are within the batch.
    pub(crate) fn forward(&mut self, inputs: Array4<f32>) -> Result<ModelOutput> {
        let n = inputs.shape()[0];
        let out = self.model.forward_features_owned(inputs, self.layers)?;
        if out.features.len() != self.layers.len() {
            return Err(Error::ShapeMismatch {
                what: "feature model output".into(),
                expected: format!(
                    "{} arrays, one per requested layer {:?}",
                    self.layers.len(),
                    self.layers
                ),
                found: format!("{} arrays", out.features.len()),
            });
        }
        self.check_logits(&out.logits, n)?;
        let widths = self
            .widths
            .get_or_insert_with(|| out.features.iter().map(|f| f.ncols()).collect());
        for ((features, id), &width) in out.features.iter().zip(self.layers).zip(widths.iter()) {
            let what = || format!("activations of {id}");
            let (rows, cols) = features.dim();
            if rows != n || cols != width || cols == 0 {
                return Err(Error::ShapeMismatch {
                    what: what(),
                    expected: format!(
                        "({n}, {width}): one row per input, the width of the fit or of the first \
                         batch, at least 1"
                    ),
                    found: format!("({rows}, {cols})"),
                });
            }
            check_finite(features.view(), &what())?;
        }
        Ok(out)
    }

    fn check_logits(&mut self, logits: &Array2<f32>, n: usize) -> Result<()> {
        if !self.model.gives_logits() && logits.dim() == (n, 0) {
            return Ok(());
        }
        check_logits(logits, n)?;
        let classes = *self.classes.get_or_insert(logits.ncols());
        if logits.ncols() != classes {
            return Err(Error::ShapeMismatch {
                what: "model output (logits)".into(),
                expected: format!("(_, {classes}) like the batches before"),
                found: format!("{:?}", logits.shape()),
            });
        }
        if let Some((i, _)) = logits
            .rows()
            .into_iter()
            .enumerate()
            .find(|(_, row)| row.iter().any(|v| v.is_nan()))
        {
            return Err(Error::NotANumber {
                what: "logits (row = sample)".into(),
                index: i,
                hint: "the model produced NaN for this input; check its inputs and weights".into(),
            });
        }
        Ok(())
    }
}

/// Errors on the first row of `features` holding NaN or an infinity,
/// naming the row.
pub(crate) fn check_finite(features: ArrayView2<f32>, what: &str) -> Result<()> {
    match features
        .rows()
        .into_iter()
        .position(|row| row.iter().any(|v| !v.is_finite()))
    {
        Some(i) => Err(Error::NotANumber {
            what: format!("{what} (row = sample)"),
            index: i,
            hint: "features must be finite numbers (NaN or infinity found)".into(),
        }),
        None => Ok(()),
    }
}
