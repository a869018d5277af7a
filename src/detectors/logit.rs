//! What every detector on logits shares: the model it was fitted on,
//! scoring a batch through it, the checks on a logits matrix, and a stable
//! softmax.

use std::fmt;

use ndarray::{Array1, ArrayView1, ArrayView2};

use super::{ScoreLogits, ScoreOutput};
use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::model::{Model, check_logits};

/// The model a logit detector was fitted on, if any.
#[derive(Default)]
pub(super) struct FittedModel<'m>(Option<Box<dyn Model + 'm>>);

impl fmt::Debug for FittedModel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "fitted"
        } else {
            "not fitted"
        })
    }
}

impl<'m> FittedModel<'m> {
    pub(super) fn set(&mut self, model: Box<dyn Model + 'm>) {
        self.0 = Some(model);
    }

    pub(super) fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The model, or [`Error::NotFitted`] naming `detector`.
    pub(super) fn get(&self, detector: &'static str) -> Result<&(dyn Model + 'm)> {
        self.0.as_deref().ok_or(Error::NotFitted { detector })
    }

    /// Runs the model on `batch` and scores its logits with `scorer`.
    pub(super) fn score_batch(
        &self,
        detector: &'static str,
        batch: Batch,
        scorer: &dyn ScoreLogits,
    ) -> Result<ScoreOutput> {
        let model = self.get(detector)?;
        let n = batch.len();
        let logits = model.forward_owned(batch.inputs)?;
        check_logits(&logits, n)?;
        let scores = scorer.score_logits(logits.view())?;
        Ok(ScoreOutput {
            scores,
            logits,
            labels: batch.labels,
        })
    }
}

/// `score` of each row of `logits`, after checking there is at least one
/// class and no NaN (the error names the row).
pub(super) fn score_rows(
    logits: ArrayView2<f32>,
    score: impl Fn(ArrayView1<f32>) -> f32,
) -> Result<Array1<f32>> {
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
                hint: "the model produced NaN for this input; check its inputs and weights".into(),
            });
        }
        scores.push(score(row));
    }
    Ok(Array1::from(scores))
}

/// A row's largest value and `exp(l - max)` of each entry, entries equal to
/// the max counting 1 exactly: an infinite max gives the softmax's limit
/// instead of `inf - inf = NaN`. The softmax is `exps / exps.sum()`.
pub(super) fn shifted_exps(row: ArrayView1<f32>) -> (f32, Vec<f32>) {
    let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps = row
        .iter()
        .map(|&v| if v == max { 1.0 } else { (v - max).exp() })
        .collect();
    (max, exps)
}

/// Implements [`Detector`](super::Detector) for a logit detector: a type with
/// a `model: FittedModel<'m>` field that implements
/// [`ScoreLogits`](super::ScoreLogits). `$name` may be an expression of
/// `self` (MLS and MSP share a type).
macro_rules! logit_detector {
    ($detector:ident, |$this:ident| $name:expr) => {
        impl<'m> $crate::detectors::Detector for $detector<'m> {
            type Network = dyn $crate::model::Model + 'm;

            fn name(&self) -> &'static str {
                let $this = self;
                $name
            }

            /// Keeps the model; the fit data, if any, is not read.
            fn fit_model(
                &mut self,
                model: Box<dyn $crate::model::Model + 'm>,
                _fit_data: Option<&dyn $crate::datasets::BatchSource>,
            ) -> $crate::error::Result<()> {
                self.model.set(model);
                Ok(())
            }

            fn is_fitted(&self) -> bool {
                self.model.is_set()
            }

            fn score_batch(
                &self,
                batch: $crate::batch::Batch,
            ) -> $crate::error::Result<$crate::detectors::ScoreOutput> {
                self.model.score_batch(self.name(), batch, self)
            }
        }
    };
}

pub(super) use logit_detector;
