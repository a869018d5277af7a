//! A fitted detector with its calibration: verdicts at a chosen level.

use ndarray::{Array1, ArrayView1};

use super::{Calibration, Verdict, check_alpha};
use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::detectors::file::{Reader, Stored, Writer};
use crate::detectors::{FittedDetector, ModelShape, ScoreOutput};
use crate::error::{Error, Result};
use crate::model::Model;

/// A fitted detector, the [`Calibration`] of its scores on held-out
/// in-distribution data, and the level α its verdicts flag at. It scores
/// like the detector it wraps (and is a [`FittedDetector`] itself, so it
/// attaches to a model and saves to a file with the detector), and adds
/// [`verdicts`](Self::verdicts).
///
/// It remembers the input shape and the number of classes it was
/// calibrated with ([`expects`](Self::expects)): attaching a model whose
/// logits have another number of classes is an error, and so is scoring a
/// batch whose logits do.
#[derive(Debug, Clone)]
pub struct Calibrated<F> {
    fitted: F,
    calibration: Calibration,
    alpha: f64,
    expects: Option<ModelShape>,
}

impl<F: FittedDetector> Calibrated<F> {
    /// `fitted` with a calibration made elsewhere (e.g. from scores read
    /// from a file), flagging at level `alpha`. Errors when `alpha` is not
    /// in (0, 1) or the calibration has too few scores to reach it.
    pub fn new(fitted: F, calibration: Calibration, alpha: f64) -> Result<Self> {
        calibration.threshold(alpha)?;
        Ok(Calibrated {
            fitted,
            calibration,
            alpha,
            expects: None,
        })
    }

    /// Calibrates `fitted` on the scores of `id_data` through `model`;
    /// [`Scorer::calibrate`](crate::detectors::Scorer::calibrate) is the
    /// usual way in.
    pub fn fit(
        fitted: F,
        model: &dyn Model,
        id_data: &dyn BatchSource,
        alpha: f64,
    ) -> Result<Self> {
        check_alpha(alpha)?;
        let mut scores = Vec::new();
        let mut expects: Option<ModelShape> = None;
        for batch in id_data.batches()? {
            let batch = batch?;
            let offset = scores.len();
            let shape = batch.inputs.shape().to_vec();
            let out = fitted
                .score_batch(model, batch)
                .map_err(|e| e.in_batch_at(offset))?;
            match &expects {
                Some(known) => known.check_classes(&out.logits, "a calibration batch")?,
                None if model.records_input_shape() => {
                    expects = ModelShape::of(&shape, &out.logits)
                }
                None => {}
            }
            scores.extend(out.scores);
        }
        let calibration = Calibration::fit(ArrayView1::from(&scores)).map_err(|e| match e {
            Error::Empty { .. } => Error::Empty {
                what: "the calibration data".into(),
                hint: "give held-out in-distribution inputs (not the fit data)".into(),
            },
            other => other,
        })?;
        let mut calibrated = Calibrated::new(fitted, calibration, alpha)?;
        calibrated.expects = expects;
        Ok(calibrated)
    }

    /// The same calibration flagging at another level.
    pub fn with_alpha(mut self, alpha: f64) -> Result<Self> {
        self.calibration.threshold(alpha)?;
        self.alpha = alpha;
        Ok(self)
    }

    /// The level α: the false-alarm rate on in-distribution inputs.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The smallest flagged score at α (flagged iff `score >= threshold`).
    pub fn threshold(&self) -> f32 {
        // Checked reachable when α was set.
        self.calibration
            .threshold(self.alpha)
            .unwrap_or(f32::INFINITY)
    }

    /// The calibration scores.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// The detector calibrated.
    pub fn fitted(&self) -> &F {
        &self.fitted
    }

    /// The detector calibrated, the calibration dropped.
    pub fn into_fitted(self) -> F {
        self.fitted
    }

    pub(crate) fn from_parts(
        fitted: F,
        calibration: Calibration,
        alpha: f64,
        expects: Option<ModelShape>,
    ) -> Result<Self> {
        let mut calibrated = Calibrated::new(fitted, calibration, alpha)?;
        calibrated.expects = expects;
        Ok(calibrated)
    }

    /// The verdicts on one batch through `model`.
    pub fn verdict_batch(&self, model: &dyn Model, batch: Batch) -> Result<Vec<Verdict>> {
        let out = self.score_batch(model, batch)?;
        self.verdicts_of(&out)
    }

    /// The verdicts on every input of `data` through `model`, in order.
    pub fn verdicts(&self, model: &dyn Model, data: &dyn BatchSource) -> Result<Vec<Verdict>> {
        let out = self.score(model, data)?;
        self.verdicts_of(&out)
    }

    fn verdicts_of(&self, out: &ScoreOutput) -> Result<Vec<Verdict>> {
        let classes = out.predictions();
        self.calibration
            .verdicts(out.scores.view(), Some(classes.view()), self.alpha)
    }
}

impl<F: FittedDetector> FittedDetector for Calibrated<F> {
    fn kind(&self) -> &'static str {
        self.fitted.kind()
    }

    fn expects(&self) -> Option<ModelShape> {
        self.expects.or_else(|| self.fitted.expects())
    }

    fn score_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput> {
        let out = self.fitted.score_batch(model, batch)?;
        if let Some(expects) = &self.expects {
            expects.check_classes(&out.logits, "a batch to score")?;
        }
        Ok(out)
    }

    /// The detector's own check, then one zero input through the model
    /// when the calibration saw the model's shape.
    fn check_model(&self, model: &dyn Model) -> Result<()> {
        self.fitted.check_model(model)?;
        match &self.expects {
            Some(expects) => expects.probe(model),
            None => Ok(()),
        }
    }
}

/// The `calibration` header entry; the scores are the array
/// `calibration.scores`.
#[derive(serde::Serialize, serde::Deserialize)]
struct CalibrationHeader {
    alpha: f64,
    /// How many calibration scores there are.
    scores: usize,
    expects: Option<ModelShape>,
}

/// In a file: the detector's own entries, the calibration scores
/// (`calibration.scores`) and a `calibration` header entry (α, the model
/// shape).
impl<F: FittedDetector + Stored> Stored for Calibrated<F> {
    fn kind_name(&self) -> &'static str {
        self.fitted.kind_name()
    }

    fn accepts(kind: &str) -> bool {
        F::accepts(kind)
    }

    fn expected_kind() -> String {
        format!("calibrated {}", F::expected_kind())
    }

    fn write(&self, file: &mut Writer) -> Result<()> {
        self.fitted.write(file)?;
        file.array(
            "calibration.scores",
            &ArrayView1::from(self.calibration.scores()),
        );
        let header = file.state(
            "",
            &CalibrationHeader {
                alpha: self.alpha,
                scores: self.calibration.len(),
                expects: self.expects,
            },
        )?;
        file.set("calibration", header);
        Ok(())
    }

    fn read(file: &Reader) -> Result<Self> {
        let Some(entry) = file.entry("calibration") else {
            return Err(Error::WrongFile {
                path: file.path().to_path_buf(),
                expected: "a calibrated detector".into(),
                found: format!("an uncalibrated {} detector", file.kind()),
                hint: "calibrate it on held-out ID data (Scorer::calibrate) and save it again, \
                       or load it as the detector alone"
                    .into(),
            });
        };
        let fitted = F::read(file)?;
        let header: CalibrationHeader = file.header("calibration", entry)?;
        let scores: Array1<f32> = file.array("calibration.scores", &[Some(header.scores)])?;
        let calibration = Calibration::fit(scores.view())
            .map_err(|e| file.corrupt(format!("its calibration scores: {e}")))?;
        Calibrated::from_parts(fitted, calibration, header.alpha, header.expects)
            .map_err(|e| file.corrupt(format!("its calibration: {e}")))
    }
}
