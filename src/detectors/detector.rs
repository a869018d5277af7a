//! The detector traits: hyper-parameters ([`Detector`]) apart from what
//! fitting learns ([`FittedDetector`]), and the two together with a model
//! ([`Scorer`]), the way linfa splits parameters and fitted models.

use std::fmt;

use ndarray::{Array1, Array2, Array4};

use super::{AnyModel, ScoreOutput};
use crate::batch::Batch;
use crate::calibration::Calibrated;
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::model::Model;

/// What a fitted detector saw of the model it was fitted or calibrated
/// through: the shape of one input and the number of classes. A detector
/// that knows it checks a model it is attached to by one forward pass of a
/// zero input of that shape, so a model that does not match is an error at
/// [`attach`](FittedDetector::attach), not garbage at scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "UncheckedShape")]
pub struct ModelShape {
    /// One input's shape `(C, H, W)`.
    pub input: [usize; 3],
    /// The number of classes (logits per input).
    pub classes: usize,
}

/// A shape as a file holds it: no dimension may be 0.
#[derive(serde::Deserialize)]
struct UncheckedShape {
    input: [usize; 3],
    classes: usize,
}

impl TryFrom<UncheckedShape> for ModelShape {
    type Error = Error;

    fn try_from(shape: UncheckedShape) -> Result<Self> {
        if shape.input.contains(&0) || shape.classes == 0 {
            return Err(Error::invalid(
                "model shape",
                format!("input {:?}, {} classes", shape.input, shape.classes),
                "an input dimension or the number of classes is 0",
            ));
        }
        Ok(ModelShape {
            input: shape.input,
            classes: shape.classes,
        })
    }
}

impl ModelShape {
    /// The shape of a batch's inputs and logits.
    pub(crate) fn of(inputs: &[usize], logits: &Array2<f32>) -> Option<Self> {
        match *inputs {
            [_, c, h, w] => Some(ModelShape {
                input: [c, h, w],
                classes: logits.ncols(),
            }),
            _ => None,
        }
    }

    /// One zero input of this shape.
    pub(crate) fn zero_input(&self) -> Array4<f32> {
        let [c, h, w] = self.input;
        Array4::zeros((1, c, h, w))
    }

    /// Errors unless `logits` has this many classes.
    pub(crate) fn check_classes(&self, logits: &Array2<f32>, what: &str) -> Result<()> {
        if logits.ncols() == self.classes {
            return Ok(());
        }
        Err(Error::ShapeMismatch {
            what: format!("the model's logits ({what})"),
            expected: format!(
                "(_, {}): the number of classes the detector was fitted or calibrated with",
                self.classes
            ),
            found: format!("{:?}", logits.shape()),
        })
    }

    /// Runs one zero input through `model` and checks its classes.
    pub(crate) fn probe(&self, model: &dyn Model) -> Result<()> {
        let logits = model.forward_owned(self.zero_input())?;
        self.check_classes(&logits, "the model attached")
    }
}

/// An OOD detector's hyper-parameters: [`fit`](Self::fit) it on a trained
/// model (and fit data, for detectors that learn statistics of the
/// in-distribution data) to get a [`Scorer`].
///
/// What fitting learns is a value of its own, [`Self::Fitted`]: it holds no
/// model, is `Send + Sync`, and can be kept, cloned or attached to a model
/// again ([`FittedDetector::attach`]).
pub trait Detector {
    /// What fitting learns.
    type Fitted: FittedDetector;

    /// Learns what the detector needs from `model` and `fit_data` (read
    /// only by the detectors that need in-distribution statistics).
    /// A model that lacks a capability the detector needs (see
    /// [`Model`]) is an error naming it.
    fn fit_model(
        &self,
        model: &dyn Model,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<Self::Fitted>;

    /// Errors when `fit_samples` in-distribution samples cannot be enough
    /// for these parameters (e.g. NNGuide's bank smaller than its k), so
    /// the mistake shows before a pass over the data. Fine by default.
    fn check_fit_size(&self, fit_samples: usize) -> Result<()> {
        let _ = fit_samples;
        Ok(())
    }

    /// Fits on `model` (by value or by reference: `&model` works) and
    /// `fit_data`, and keeps the model beside what was learned, ready to
    /// [`score`](Scorer::score).
    fn fit<'m, M>(
        &self,
        model: M,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<Scorer<'m, Self::Fitted>>
    where
        M: Model + Send + Sync + 'm,
        Self: Sized,
    {
        let model: Box<AnyModel<'m>> = Box::new(model);
        let fitted = self.fit_model(&*model, fit_data)?;
        Ok(Scorer { model, fitted })
    }
}

/// What a detector learned from in-distribution data (for detectors on
/// logits, only their parameters): it scores batches through a model,
/// holds none itself, and is `Send + Sync`.
pub trait FittedDetector: Send + Sync + fmt::Debug {
    /// The detector's short name, e.g. `"MLS"`: what kind of detector
    /// this was fitted as (named `kind` so it never clashes with
    /// [`ScoreLogits::name`](super::ScoreLogits::name) on the same type).
    fn kind(&self) -> &'static str;

    /// Scores one batch through `model`.
    fn score_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput>;

    /// The input shape and class count the fit (or a calibration) saw
    /// through a model, when it recorded them. The default: none.
    fn expects(&self) -> Option<ModelShape> {
        None
    }

    /// Errors when `model` cannot serve this fit (e.g. it lacks a layer the
    /// detector was fitted on). The default accepts any model.
    fn check_model(&self, model: &dyn Model) -> Result<()> {
        let _ = model;
        Ok(())
    }

    /// Scores every batch of `data` through `model`, the results in input
    /// order. Errors when the data is empty or the model returns outputs of
    /// the wrong shape (including a width that changes between batches).
    fn score(&self, model: &dyn Model, data: &dyn BatchSource) -> Result<ScoreOutput> {
        let mut all = ScoreCollector::default();
        for batch in data.batches()? {
            let offset = all.scores.len();
            let part = self
                .score_batch(model, batch?)
                .map_err(|e| e.in_batch_at(offset))?;
            all.push(part)?;
        }
        all.finish()
    }

    /// Attaches a model (by value or reference) to score through, after
    /// [`check_model`](Self::check_model).
    fn attach<'m, M>(self, model: M) -> Result<Scorer<'m, Self>>
    where
        M: Model + Send + Sync + 'm,
        Self: Sized,
    {
        let model: Box<AnyModel<'m>> = Box::new(model);
        self.check_model(&*model)?;
        Ok(Scorer {
            model,
            fitted: self,
        })
    }
}

/// A fitted detector with the model it scores through: what
/// [`Detector::fit`] returns. `Send + Sync` (the model is), so one scorer
/// can serve several threads.
pub struct Scorer<'m, F: FittedDetector> {
    model: Box<AnyModel<'m>>,
    fitted: F,
}

impl<F: FittedDetector> fmt::Debug for Scorer<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scorer")
            .field("fitted", &self.fitted)
            .finish_non_exhaustive()
    }
}

impl<'m, F: FittedDetector> Scorer<'m, F> {
    /// The detector's name, e.g. `"MLS"`.
    pub fn name(&self) -> &'static str {
        self.fitted.kind()
    }

    /// Scores every batch of `data` (a prepared dataset, a whole
    /// [`OodDataset`](crate::datasets::OodDataset), a single
    /// [`Batch`]), streaming: nothing but the outputs grows with the data.
    /// Scores are in input order, higher = more OOD.
    pub fn score(&self, data: &dyn BatchSource) -> Result<ScoreOutput> {
        self.fitted.score(&*self.model, data)
    }

    /// Scores one batch.
    pub fn score_batch(&self, batch: Batch) -> Result<ScoreOutput> {
        self.fitted.score_batch(&*self.model, batch)
    }

    /// What was learned.
    pub fn fitted(&self) -> &F {
        &self.fitted
    }

    /// The model scored through.
    pub fn model(&self) -> &AnyModel<'m> {
        &self.model
    }

    /// What was learned, the model dropped.
    pub fn into_fitted(self) -> F {
        self.fitted
    }

    /// Calibrates on the scores of `id_data`, held-out in-distribution
    /// inputs (never the fit data), for verdicts at level `alpha` (the
    /// false-alarm rate, e.g. 0.05); see [`calibration`](crate::calibration)
    /// for the guarantee.
    pub fn calibrate(
        self,
        id_data: &dyn BatchSource,
        alpha: f64,
    ) -> Result<Scorer<'m, Calibrated<F>>> {
        let fitted = Calibrated::fit(self.fitted, &*self.model, id_data, alpha)?;
        Ok(Scorer {
            model: self.model,
            fitted,
        })
    }
}

impl<F: FittedDetector> Scorer<'_, Calibrated<F>> {
    /// The verdict on every input of `data`, in input order: score,
    /// p-value, whether it is flagged OOD at the calibrated α, predicted
    /// class.
    pub fn verdicts(&self, data: &dyn BatchSource) -> Result<Vec<crate::calibration::Verdict>> {
        self.fitted.verdicts(&*self.model, data)
    }

    /// The verdicts on one batch (e.g. a single input).
    pub fn verdict_batch(&self, batch: Batch) -> Result<Vec<crate::calibration::Verdict>> {
        self.fitted.verdict_batch(&*self.model, batch)
    }
}

/// Concatenates per-batch outputs, checking that every batch has the same
/// number of classes; labels are kept while every batch has them.
#[derive(Debug)]
struct ScoreCollector {
    scores: Vec<f32>,
    logits: Vec<f32>,
    width: Option<usize>,
    labels: Option<Vec<i64>>,
    batches: usize,
}

impl Default for ScoreCollector {
    fn default() -> Self {
        ScoreCollector {
            scores: Vec::new(),
            logits: Vec::new(),
            width: None,
            labels: Some(Vec::new()),
            batches: 0,
        }
    }
}

impl ScoreCollector {
    fn push(&mut self, part: ScoreOutput) -> Result<()> {
        let width = part.logits.ncols();
        if let Some(expected) = self.width.filter(|&w| w != width) {
            return Err(Error::ShapeMismatch {
                what: format!("logits of batch {}", self.batches),
                expected: format!("(_, {expected}) like the batches before"),
                found: format!("{:?}", part.logits.shape()),
            });
        }
        self.width = Some(width);
        match (&mut self.labels, part.labels) {
            (Some(all), Some(labels)) => all.extend(labels),
            _ => self.labels = None,
        }
        self.scores.extend(part.scores);
        self.logits.extend(part.logits.iter());
        self.batches += 1;
        Ok(())
    }

    fn finish(self) -> Result<ScoreOutput> {
        let width = self.width.ok_or_else(|| Error::Empty {
            what: "the data to score".into(),
            hint: "it yielded no batch".into(),
        })?;
        let n = self.scores.len();
        if n == 0 {
            return Err(Error::Empty {
                what: "the data to score".into(),
                hint: format!("its {} batches hold no input", self.batches),
            });
        }
        let logits = Array2::from_shape_vec((n, width), self.logits)?;
        Ok(ScoreOutput {
            scores: Array1::from(self.scores),
            logits,
            labels: self.labels.map(Array1::from),
        })
    }
}
