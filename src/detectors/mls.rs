//! MLS (maximum logit score) and MSP (maximum softmax probability).

use std::fmt;

use ndarray::{Array1, ArrayView1, ArrayView2};

use super::{Detector, ScoreLogits, ScoreOutput};
use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::model::{Model, check_logits};

/// What is applied to the logits before taking their maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OutputActivation {
    /// The logits as they are: MLS.
    #[default]
    Identity,
    /// Softmax probabilities: MSP.
    Softmax,
}

/// Maximum logit score: an input is as OOD as its largest logit is small.
///
/// Score = −max logit; with [`OutputActivation::Softmax`] (see
/// [`Mls::msp`]) score = −max softmax probability, the MSP baseline of
/// Hendrycks & Gimpel. The softmax is computed stably: logits of 1000 or
/// −1000 are fine.
///
/// MLS needs no statistics of the training data: [`fit`](Detector::fit)
/// only keeps the model, and its fit data, if any, is not read.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{Mls, ScoreLogits};
///
/// let logits = array![[2.0_f32, 0.0], [0.0, 0.0]];
/// assert_eq!(Mls::new().score_logits(logits.view())?.to_vec(), vec![-2.0, -0.0]);
/// assert_eq!(Mls::msp().score_logits(logits.view())?[1], -0.5);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[doc(alias = "MLS")]
#[doc(alias = "MSP")]
pub struct Mls<'m> {
    activation: OutputActivation,
    model: Option<Box<dyn Model + 'm>>,
}

impl fmt::Debug for Mls<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mls")
            .field("activation", &self.activation)
            .field("fitted", &self.model.is_some())
            .finish()
    }
}

impl Default for Mls<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'m> Mls<'m> {
    /// MLS: score = −max logit.
    pub fn new() -> Self {
        Self::with_activation(OutputActivation::Identity)
    }

    /// MSP: score = −max softmax probability.
    #[doc(alias = "MSP")]
    pub fn msp() -> Self {
        Self::with_activation(OutputActivation::Softmax)
    }

    /// MLS with `activation` applied to the logits first.
    pub fn with_activation(activation: OutputActivation) -> Self {
        Mls {
            activation,
            model: None,
        }
    }

    /// The output activation.
    pub fn activation(&self) -> OutputActivation {
        self.activation
    }

    fn score_row(&self, row: ArrayView1<f32>) -> f32 {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        match self.activation {
            OutputActivation::Identity => -max,
            OutputActivation::Softmax => {
                // max softmax = exp(max) / sum exp(l) = 1 / sum exp(l - max).
                // Entries equal to the max count 1 exactly, so an infinite
                // max gives its limit instead of inf - inf = NaN.
                let sum: f32 = row
                    .iter()
                    .map(|&v| if v == max { 1.0 } else { (v - max).exp() })
                    .sum();
                -1.0 / sum
            }
        }
    }
}

impl ScoreLogits for Mls<'_> {
    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        if logits.ncols() == 0 {
            return Err(Error::ShapeMismatch {
                what: "logits".into(),
                expected: "(N, num_classes) with at least one class".into(),
                found: format!("{:?}", logits.shape()),
            });
        }
        let mut scores = Vec::with_capacity(logits.nrows());
        for (i, row) in logits.rows().into_iter().enumerate() {
            if row.iter().any(|v| v.is_nan()) {
                return Err(Error::NotANumber {
                    what: "logits (row = sample)".into(),
                    index: i,
                    hint: "the model produced NaN for this input; check its inputs and weights"
                        .into(),
                });
            }
            scores.push(self.score_row(row));
        }
        Ok(Array1::from(scores))
    }
}

impl<'m> Detector for Mls<'m> {
    type Network = dyn Model + 'm;

    fn name(&self) -> &'static str {
        match self.activation {
            OutputActivation::Identity => "MLS",
            OutputActivation::Softmax => "MSP",
        }
    }

    fn fit_model(
        &mut self,
        model: Box<dyn Model + 'm>,
        _fit_data: Option<&dyn BatchSource>,
    ) -> Result<()> {
        self.model = Some(model);
        Ok(())
    }

    fn is_fitted(&self) -> bool {
        self.model.is_some()
    }

    fn score_batch(&self, batch: Batch) -> Result<ScoreOutput> {
        let model = self.model.as_ref().ok_or(Error::NotFitted {
            detector: self.name(),
        })?;
        let n = batch.len();
        let logits = model.forward_owned(batch.inputs)?;
        check_logits(&logits, n)?;
        let scores = self.score_logits(logits.view())?;
        Ok(ScoreOutput {
            scores,
            logits,
            labels: batch.labels,
        })
    }
}
