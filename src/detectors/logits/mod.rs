//! The detectors on logits: MLS / MSP, Energy, Entropy, GEN and ODIN, and
//! what they share. A detector on logits learns nothing from the training
//! data, so its parameters are its whole fitted state: each implements
//! [`ScoreLogits`], and with it [`Detector`] and [`FittedDetector`].

use std::fmt;

use ndarray::{Array1, ArrayView1, ArrayView2};

use super::{Detector, FittedDetector, Logits, ModelOf, ScoreOutput};
use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::model::{Model, check_logits};

mod energy;
mod entropy;
mod generalized_entropy;
mod mls;
mod odin;
mod shaped;
mod stored;

pub use energy::Energy;
pub use entropy::Entropy;
pub use generalized_entropy::Gen;
pub use mls::{Mls, OutputActivation};
pub use odin::Odin;
pub use shaped::Shaped;

/// A detector that scores from the logits alone: logits computed once (or
/// by another program) can be scored by each of them without running the
/// network again.
///
/// Implementing it (with `Debug`, `Send` and `Sync`) makes a type a
/// [`FittedDetector`] of the [`Logits`] family: scoring runs the model,
/// checks the logits and calls [`score_logits`](Self::score_logits). A
/// detector on logits learns nothing, so its [`Detector`] impl returns its
/// parameters, as below.
///
/// ```
/// use ndarray::{Array1, ArrayView2, array};
/// use oodkit::datasets::BatchSource;
/// use oodkit::detectors::{Detector, ModelOf, ScoreLogits};
///
/// /// Minus the logit of class 0: a detector of one's own.
/// #[derive(Debug, Clone)]
/// struct FirstLogit;
///
/// impl Detector for FirstLogit {
///     type Fitted = Self;
///     fn fit_model(&self, _: &ModelOf<'_, Self>, _: Option<&dyn BatchSource>) -> oodkit::Result<Self> {
///         Ok(self.clone())
///     }
/// }
///
/// impl ScoreLogits for FirstLogit {
///     fn name(&self) -> &'static str {
///         "first logit"
///     }
///     fn score_logits(&self, logits: ArrayView2<f32>) -> oodkit::Result<Array1<f32>> {
///         Ok(logits.column(0).mapv(|v| -v))
///     }
/// }
///
/// let model = oodkit::model::from_fn(|x| Ok(x.to_shape((x.shape()[0], 2))?.to_owned()));
/// let scorer = FirstLogit.fit(&model, None)?;
/// let batch = oodkit::Batch::new(ndarray::Array4::from_elem((1, 1, 1, 2), 3.0));
/// assert_eq!(scorer.score(&batch)?.scores, array![-3.0]);
/// # Ok::<(), oodkit::Error>(())
/// ```
pub trait ScoreLogits: fmt::Debug + Send + Sync {
    /// A short name, e.g. `"MLS"`.
    fn name(&self) -> &'static str;

    /// One score per row of `logits` `(N, num_classes)`; higher = more OOD.
    /// Errors on zero classes and on NaN (naming the sample).
    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>>;

    /// Scores a batch through `model`: its logits, checked (one row per
    /// input), then [`score_logits`](Self::score_logits). Detectors that
    /// need more of the model (ODIN's input gradient) override it.
    fn score_logit_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput> {
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

    /// Whether scoring perturbs the inputs through the model's gradient
    /// (ODIN with ε > 0): such a detector needs the whole network, not
    /// only its logits.
    fn perturbs_inputs(&self) -> bool {
        false
    }
}

/// A boxed detector on logits is one too, so detectors of different types
/// can share a list (`Vec<Box<dyn ScoreLogits>>`) and be attached to a model
/// ([`FittedDetector::attach`]).
impl<T: ScoreLogits + ?Sized> ScoreLogits for Box<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        (**self).score_logits(logits)
    }

    fn score_logit_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput> {
        (**self).score_logit_batch(model, batch)
    }

    fn perturbs_inputs(&self) -> bool {
        (**self).perturbs_inputs()
    }
}

// Detectors on logits learn nothing from data: their parameters are their
// whole fitted state.
impl Detector for Mls {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read.
    fn fit_model(
        &self,
        _model: &ModelOf<'_, Self>,
        _fit_data: Option<&dyn BatchSource>,
    ) -> Result<Self> {
        Ok(*self)
    }
}

impl Detector for Energy {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read.
    fn fit_model(
        &self,
        _model: &ModelOf<'_, Self>,
        _fit_data: Option<&dyn BatchSource>,
    ) -> Result<Self> {
        Ok(*self)
    }
}

impl Detector for Entropy {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read.
    fn fit_model(
        &self,
        _model: &ModelOf<'_, Self>,
        _fit_data: Option<&dyn BatchSource>,
    ) -> Result<Self> {
        Ok(*self)
    }
}

impl Detector for Gen {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read.
    fn fit_model(
        &self,
        _model: &ModelOf<'_, Self>,
        _fit_data: Option<&dyn BatchSource>,
    ) -> Result<Self> {
        Ok(*self)
    }
}

impl Detector for Odin {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read.
    fn fit_model(
        &self,
        _model: &ModelOf<'_, Self>,
        _fit_data: Option<&dyn BatchSource>,
    ) -> Result<Self> {
        Ok(*self)
    }
}

impl<D: ScoreLogits> FittedDetector for D {
    type Family = Logits;

    fn kind(&self) -> &'static str {
        self.name()
    }

    fn score_batch(&self, model: &ModelOf<'_, D>, batch: Batch) -> Result<ScoreOutput> {
        self.score_logit_batch(model, batch)
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
    tempered_exps(row, 1.0)
}

/// [`shifted_exps`] at temperature `t`: `exp((l - max) / t)`, the max
/// taken on the logits themselves. Dividing the differences (never
/// positive) rather than the logits keeps every temperature finite: a tiny
/// `t` sends the others to 0 instead of the logits to ±inf.
pub(crate) fn tempered_exps(row: ArrayView1<f32>, t: f32) -> (f32, Vec<f32>) {
    let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps = row
        .iter()
        .map(|&v| if v == max { 1.0 } else { ((v - max) / t).exp() })
        .collect();
    (max, exps)
}
