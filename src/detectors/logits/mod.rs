//! The detectors on logits: MLS / MSP, Energy, Entropy, GEN and ODIN, and
//! what they share. Most learn nothing from the training data, so their
//! parameters are their whole fitted state: each implements
//! [`ScoreLogits`], and with it [`Detector`] and [`FittedDetector`].
//! Temperature scaling, KLM and OpenMax learn from in-distribution logits:
//! their [`Detector`] returns another type ([`FittedTemperatureScaling`],
//! [`FittedKlm`], [`FittedOpenMax`]) that implements [`ScoreLogits`].
//! RankFeat and MC dropout score through the network itself
//! ([`MapEditing::forward_editing_map`](crate::model::MapEditing::forward_editing_map), [`StochasticPasses::forward_stochastic`](crate::model::StochasticPasses::forward_stochastic)).

use rayon::prelude::*;
use std::fmt;

use ndarray::{Array1, ArrayView1, ArrayView2};

pub(crate) use super::softmax::{shifted_exps, tempered_exp_sum, tempered_exps};
use super::{Detector, FittedDetector, ScoreOutput};
use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::model::{Model, check_logits};

pub(super) mod energy;
pub(super) mod entropy;
pub(super) mod generalized_entropy;
pub(super) mod klm;
pub(super) mod mc_dropout;
pub(super) mod mls;
pub(super) mod odin;
pub(super) mod openmax;
pub(super) mod rankfeat;
mod shaped;
mod stored;
pub use stored::StoredLogits;
pub(super) mod temperature;

pub use energy::Energy;
pub use entropy::Entropy;
pub use generalized_entropy::Gen;
pub use klm::{FittedKlm, Klm};
pub use mc_dropout::{McDropout, McStatistic};
pub use mls::{Mls, OutputActivation};
pub use odin::Odin;
pub use openmax::{FittedOpenMax, OpenMax, Weibull};
pub use rankfeat::RankFeat;
pub use shaped::{FittedShaped, Shaped};
pub use temperature::{FittedTemperatureScaling, TemperatureScaling};

/// A detector that scores from the logits alone: logits computed once (or
/// by another program) can be scored by each of them without running the
/// network again.
///
/// Implementing it (with `Debug`, `Send` and `Sync`) makes a type a
/// [`FittedDetector`]: scoring runs the model,
/// checks the logits and calls [`score_logits`](Self::score_logits). A
/// detector on logits learns nothing, so its [`Detector`] impl returns its
/// parameters, as below.
///
/// ```
/// use ndarray::{Array1, ArrayView2, array};
/// use oodkit::datasets::BatchSource;
/// use oodkit::detectors::{Detector, ScoreLogits};
/// use oodkit::model::Model;
///
/// /// Minus the logit of class 0: a detector of one's own.
/// #[derive(Debug, Clone)]
/// struct FirstLogit;
///
/// impl Detector for FirstLogit {
///     type Fitted = Self;
///     fn fit_model(&self, _: &dyn Model, _: Option<&dyn BatchSource>) -> oodkit::Result<Self> {
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

    /// Errors when `model` lacks a capability scoring needs (ODIN's input
    /// gradient, RankFeat's feature map); checked at fit and attach. The
    /// default: the logits serve.
    fn check_model(&self, model: &dyn Model) -> Result<()> {
        let _ = model;
        Ok(())
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

    fn check_model(&self, model: &dyn Model) -> Result<()> {
        (**self).check_model(model)
    }
}

// Detectors on logits learn nothing from data: their parameters are their
// whole fitted state.
impl Detector for Mls {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read.
    fn fit_model(&self, _model: &dyn Model, _fit_data: Option<&dyn BatchSource>) -> Result<Self> {
        Ok(*self)
    }
}

impl Detector for Energy {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read.
    fn fit_model(&self, _model: &dyn Model, _fit_data: Option<&dyn BatchSource>) -> Result<Self> {
        Ok(*self)
    }
}

impl Detector for Entropy {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read.
    fn fit_model(&self, _model: &dyn Model, _fit_data: Option<&dyn BatchSource>) -> Result<Self> {
        Ok(*self)
    }
}

impl Detector for Gen {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read.
    fn fit_model(&self, _model: &dyn Model, _fit_data: Option<&dyn BatchSource>) -> Result<Self> {
        Ok(*self)
    }
}

impl Detector for Odin {
    type Fitted = Self;

    /// Keeps the parameters: the model is not run and the fit data, if
    /// any, not read. With a step (ε > 0), errors when the model gives no
    /// input gradients.
    fn fit_model(&self, model: &dyn Model, _fit_data: Option<&dyn BatchSource>) -> Result<Self> {
        ScoreLogits::check_model(self, model)?;
        Ok(*self)
    }
}

impl<D: ScoreLogits> FittedDetector for D {
    fn kind(&self) -> &'static str {
        self.name()
    }

    fn score_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput> {
        self.score_logit_batch(model, batch)
    }

    fn check_model(&self, model: &dyn Model) -> Result<()> {
        ScoreLogits::check_model(self, model)
    }
}

/// The logits (and labels, which `labels` requires) of every fit batch
/// through `model`, for the logit detectors that learn from in-distribution
/// data (KLM, temperature scaling, OpenMax). Errors without fit data, on a
/// batch without labels when they are required, and on NaN logits.
pub(crate) fn fit_logits(
    model: &dyn Model,
    fit_data: Option<&dyn BatchSource>,
    detector: &str,
    labels: bool,
) -> Result<(ndarray::Array2<f32>, Option<Array1<i64>>)> {
    let data = crate::datasets::require_fit_data(
        fit_data,
        &format!("{detector} fits statistics of in-distribution logits"),
    )?;
    let mut rows: Vec<f32> = Vec::new();
    let mut classes = None;
    let mut all_labels: Vec<i64> = Vec::new();
    let mut offset = 0;
    for batch in data.batches()? {
        let Batch {
            inputs,
            labels: batch_labels,
            ..
        } = batch?;
        let n = inputs.shape()[0];
        let step = || -> Result<ndarray::Array2<f32>> {
            let logits = model.forward_owned(inputs)?;
            check_logits(&logits, n)?;
            if *classes.get_or_insert(logits.ncols()) != logits.ncols() {
                return Err(Error::ShapeMismatch {
                    what: "logits of a fit batch".into(),
                    expected: format!("(N, {}), as the first batch", classes.unwrap_or(0)),
                    found: format!("{:?}", logits.shape()),
                });
            }
            if labels {
                match &batch_labels {
                    Some(l) if l.len() == n => all_labels.extend(l.iter()),
                    Some(l) => {
                        return Err(Error::LengthMismatch {
                            what: "inputs vs labels of a fit batch".into(),
                            left: n,
                            right: l.len(),
                        });
                    }
                    None => {
                        return Err(Error::missing(
                            "class labels of the fit batches",
                            format!("{detector} fits on labelled in-distribution data"),
                        ));
                    }
                }
            }
            Ok(logits)
        };
        let logits = step().map_err(|e| e.in_batch_at(offset))?;
        rows.extend(logits.iter());
        offset += n;
    }
    let classes = classes.ok_or_else(|| Error::Empty {
        what: format!("the fit data of {detector}"),
        hint: "it gave no batch".into(),
    })?;
    let logits = ndarray::Array2::from_shape_vec((offset, classes), rows)?;
    check_fit_logits(logits.view(), None, detector)?;
    Ok((logits, labels.then(|| Array1::from(all_labels))))
}

/// Errors on empty or NaN fit logits, and on labels of another length.
pub(crate) fn check_fit_logits(
    logits: ArrayView2<f32>,
    labels: Option<ArrayView1<i64>>,
    detector: &str,
) -> Result<()> {
    if logits.nrows() == 0 || logits.ncols() == 0 {
        return Err(Error::Empty {
            what: format!("the fit logits of {detector} {:?}", logits.shape()),
            hint: "fit on at least one sample of at least one class".into(),
        });
    }
    if let Some(labels) = labels
        && labels.len() != logits.nrows()
    {
        return Err(Error::LengthMismatch {
            what: format!("rows of the fit logits of {detector} vs labels"),
            left: logits.nrows(),
            right: labels.len(),
        });
    }
    crate::model::check_finite(logits, &format!("the fit logits of {detector}"))
}

/// Errors unless `logits` are `width` classes wide (as the first pass).
pub(crate) fn check_logits_width(logits: &ndarray::Array2<f32>, width: usize) -> Result<()> {
    if logits.ncols() != width {
        return Err(Error::ShapeMismatch {
            what: "logits of a pass".into(),
            expected: format!("(N, {width}), as the first pass"),
            found: format!("{:?}", logits.shape()),
        });
    }
    Ok(())
}

/// Errors unless every label is a class of logits `classes` wide.
pub(crate) fn check_label_range(labels: ArrayView1<i64>, classes: usize) -> Result<()> {
    match labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
        Some(&label) => Err(Error::InvalidLabel {
            label,
            reason: format!("the logits have {classes} classes: labels must be in 0..{classes}"),
        }),
        None => Ok(()),
    }
}

/// `score` of each row of `logits`, after checking there is at least one
/// class and no NaN (the error names the row).
pub(super) fn score_rows(
    logits: ArrayView2<f32>,
    score: impl Fn(ArrayView1<f32>) -> f32 + Sync,
) -> Result<Array1<f32>> {
    if logits.ncols() == 0 {
        return Err(Error::ShapeMismatch {
            what: "logits".into(),
            expected: "(N, num_classes) with at least one class".into(),
            found: format!("{:?}", logits.shape()),
        });
    }
    // Parts of rows on every core; a part is worth a thread from about
    // 64 Ki logits on.
    let rows = logits.nrows();
    let part = (PART_VALUES / logits.ncols()).clamp(1, rows.max(1));
    let starts: Vec<usize> = (0..rows).step_by(part).collect();
    let score_part = |&start: &usize| -> Result<Vec<f32>> {
        let end = (start + part).min(rows);
        let mut scores = Vec::with_capacity(end - start);
        for (i, row) in logits
            .slice(ndarray::s![start..end, ..])
            .rows()
            .into_iter()
            .enumerate()
        {
            if row.iter().any(|v| v.is_nan()) {
                return Err(Error::NotANumber {
                    what: "logits (row = sample)".into(),
                    index: start + i,
                    hint: "the model produced NaN for this input; check its inputs and weights"
                        .into(),
                });
            }
            scores.push(score(row));
        }
        Ok(scores)
    };
    // In order, so the first NaN reported is the first in the logits.
    let parts: Vec<Result<Vec<f32>>> = if starts.len() > 1 {
        starts.par_iter().map(score_part).collect()
    } else {
        starts.iter().map(score_part).collect()
    };
    let mut scores = Vec::with_capacity(rows);
    for part in parts {
        scores.extend(part?);
    }
    Ok(Array1::from(scores))
}

/// Logits per part of [`score_rows`]'s parallel work.
const PART_VALUES: usize = 1 << 16;
