//! [`AnyDetector`]: a detector file loaded by the kind it holds, when the
//! program does not know it in advance (a command line, a service that is
//! handed a file).

use std::fmt;
use std::path::Path;

use super::features::PARTIAL_KIND;
use super::file::{FileInfo, Persist, describe, save_to};
use super::precomputed::Precomputed;
use super::registry::by_kind;
use super::{FittedDetector, ModelShape, ScoreOutput};
use crate::batch::Batch;
use crate::calibration::{Calibrated, Calibration, Verdict};
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::model::Model;

/// The model object every detector scores through: any [`Model`] (an
/// `OnnxModel`, a `BurnModel`, a closure model) shared between threads.
/// What a detector needs beyond the logits it finds through the model's
/// capabilities.
pub type AnyModel<'m> = dyn Model + Send + Sync + 'm;

/// A fitted detector of any kind, read from a file by the kind it holds
/// (see [`describe`]): each of the typed loaders ([`Persist::load`]) by
/// name, with or without a calibration, behind one type.
///
/// ```
/// use ndarray::{Array4, ArrayView4};
/// use oodkit::detectors::{AnyDetector, Detector, Persist};
/// use oodkit::model::from_fn_with_features;
///
/// // A "network" whose logits are its flattened inputs.
/// let model = from_fn_with_features(["pixels"], |x: ArrayView4<f32>| {
///     let n = x.shape()[0];
///     let flat = x.to_shape((n, 3))?.to_owned();
///     Ok((vec![flat.clone()], flat))
/// });
/// let fitted = oodkit::Mls::new().fit(&model, None)?.into_fitted();
/// let path = std::env::temp_dir().join(format!("oodkit-any-{}.oodkit", std::process::id()));
/// fitted.save(&path)?;
///
/// let detector = AnyDetector::load(&path)?;
/// assert_eq!(detector.kind(), "MLS");
/// assert!(!detector.is_calibrated());
/// let inputs = Array4::from_shape_vec((2, 3, 1, 1), vec![1.0, 5.0, 2.0, 0.0, 0.5, 0.0])?;
/// let scores = detector.score_batch(&model, oodkit::Batch::new(inputs))?.scores;
/// assert_eq!(scores.to_vec(), vec![-5.0, -0.5]); // minus the largest logit
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AnyDetector {
    inner: Box<dyn Erased>,
    info: Option<FileInfo>,
}

impl fmt::Debug for AnyDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.debug(f)
    }
}

impl AnyDetector {
    /// Reads the detector file at `path`, whatever kind it holds (the
    /// [`registry`](super::registry) says how each kind is read). Errors as
    /// the typed loaders do (missing, corrupt, newer format), and on a
    /// state fitted on precomputed features (it names no layer of a
    /// model: score such features with the state's
    /// [`score_features`](super::ScoreFeatures::score_features)).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let info = describe(path)?;
        if info.kind == PARTIAL_KIND {
            return Err(Error::WrongFile {
                path: path.to_path_buf(),
                expected: "a fitted detector".into(),
                found: format!(
                    "a partial fit of {} (one shard's)",
                    info.metadata["partial"]["detector"]
                        .as_str()
                        .unwrap_or("a detector")
                ),
                hint: "merge the partial fits of every shard and finish them into a detector \
                       (PartialFit::merge, PartialFit::finish), then save that"
                    .into(),
            });
        }
        let registration = by_kind(&info.kind).ok_or_else(|| Error::WrongFile {
            path: path.to_path_buf(),
            expected: "a detector this oodkit knows".into(),
            found: format!("a {} detector", info.kind),
            hint: format!(
                "it was written by oodkit {}; read it with that version or a newer one",
                info.crate_version
            ),
        })?;
        let mut loaded = registration.load(path, &info)?;
        loaded.info = Some(info);
        Ok(loaded)
    }

    /// A detector just fitted (no file behind it).
    pub(crate) fn fitted(inner: Box<dyn Erased>) -> Self {
        AnyDetector { inner, info: None }
    }

    /// Writes the detector (with its calibration, if any) to `path`, as
    /// [`Persist::save`] does for the typed detector.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.inner.save(path.as_ref(), None)
    }

    /// Like [`save`](Self::save), with `annotations` in the file (see
    /// [`Persist::save_annotated`]).
    pub fn save_annotated(
        &self,
        path: impl AsRef<Path>,
        annotations: &serde_json::Value,
    ) -> Result<()> {
        self.inner.save(path.as_ref(), Some(annotations))
    }

    /// Calibrates on the scores of `id_data` through `model`, held-out
    /// in-distribution inputs (never the fit data), for verdicts at level
    /// `alpha`; a calibration it held is replaced. See
    /// [`Scorer::calibrate`](super::Scorer::calibrate).
    pub fn calibrate(
        self,
        model: &AnyModel<'_>,
        id_data: &dyn BatchSource,
        alpha: f64,
    ) -> Result<Self> {
        Ok(AnyDetector {
            inner: self.inner.calibrate(model, id_data, alpha)?,
            info: None,
        })
    }

    /// What the file's header says (kind, versions, metadata), as
    /// [`describe`] read it; `None` for a detector fitted or calibrated
    /// here rather than loaded.
    pub fn info(&self) -> Option<&FileInfo> {
        self.info.as_ref()
    }

    /// The input shape and class count the fit (or the calibration) saw
    /// through a model, when it recorded them: inputs of another shape
    /// were prepared otherwise than the statistics the detector holds.
    pub fn expects(&self) -> Option<ModelShape> {
        self.inner.expects()
    }

    /// The detector's kind, e.g. `"KNN"` (as [`FittedDetector::kind`]).
    pub fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    /// Whether the file held a calibration, so that [`verdicts`](Self::verdicts)
    /// can decide.
    pub fn is_calibrated(&self) -> bool {
        self.inner.calibration().is_some()
    }

    /// The calibration and its false-alarm rate α, when there is one.
    pub fn calibration(&self) -> Option<(&Calibration, f64)> {
        self.inner.calibration()
    }

    /// Errors when `model` cannot serve this detector: a missing layer,
    /// another feature width, another input shape or class count than the
    /// fit recorded (see [`FittedDetector::check_model`]). Run it once
    /// before scoring a new model.
    pub fn check_model(&self, model: &AnyModel<'_>) -> Result<()> {
        self.inner.check_model(model)
    }

    /// Scores one batch through `model`.
    pub fn score_batch(&self, model: &AnyModel<'_>, batch: Batch) -> Result<ScoreOutput> {
        self.inner.score_batch(model, batch)
    }

    /// Scores every batch of `data` through `model`, in input order.
    pub fn score(&self, model: &AnyModel<'_>, data: &dyn BatchSource) -> Result<ScoreOutput> {
        self.inner.score(model, data)
    }

    /// The verdicts on scored inputs (see [`Calibration::verdicts`]; the
    /// class is the predicted one). Errors when the file held no
    /// calibration.
    pub fn verdicts_of(&self, out: &ScoreOutput) -> Result<Vec<Verdict>> {
        let (calibration, alpha) = self.calibrated()?;
        // No logits (features computed elsewhere, alone): no class.
        let classes = (out.logits.ncols() > 0).then(|| out.predictions());
        calibration.verdicts(out.scores.view(), classes.as_ref().map(|c| c.view()), alpha)
    }

    /// The calibration, or an error saying how to get one.
    fn calibrated(&self) -> Result<(&Calibration, f64)> {
        self.inner.calibration().ok_or_else(|| Error::Unsupported {
            what: format!("a decision from an uncalibrated {} detector", self.kind()),
            hint: "calibrate it on in-distribution data (Scorer::calibrate, or `oodkit fit \
                   --calibrate DIR`) and save that"
                .into(),
        })
    }

    /// Scores `data` through `model` and decides on each input. Errors
    /// when the file held no calibration.
    pub fn verdicts(&self, model: &AnyModel<'_>, data: &dyn BatchSource) -> Result<Vec<Verdict>> {
        self.calibrated()?;
        self.verdicts_of(&self.score(model, data)?)
    }

    /// Scores arrays computed elsewhere (features of the layers it was
    /// fitted on, logits, as the detector reads them), in row order.
    pub fn score_precomputed(&self, data: &Precomputed<'_>) -> Result<ScoreOutput> {
        self.score(data, &data.source())
    }

    /// Calibrates on the scores of held-out in-distribution arrays
    /// computed elsewhere, for verdicts at level `alpha` (see
    /// [`calibrate`](Self::calibrate)).
    pub fn calibrate_precomputed(self, data: &Precomputed<'_>, alpha: f64) -> Result<Self> {
        self.calibrate(data, &data.source(), alpha)
    }

    /// Scores arrays computed elsewhere and decides on each row. Errors
    /// when the detector holds no calibration.
    pub fn verdicts_precomputed(&self, data: &Precomputed<'_>) -> Result<Vec<Verdict>> {
        self.verdicts(data, &data.source())
    }
}

/// What [`AnyDetector`] needs of a fitted detector, the model type fixed.
pub(crate) trait Erased: Send + Sync {
    fn kind(&self) -> &'static str;
    fn check_model(&self, model: &AnyModel<'_>) -> Result<()>;
    fn score_batch(&self, model: &AnyModel<'_>, batch: Batch) -> Result<ScoreOutput>;
    fn score(&self, model: &AnyModel<'_>, data: &dyn BatchSource) -> Result<ScoreOutput>;
    fn calibration(&self) -> Option<(&Calibration, f64)>;
    fn expects(&self) -> Option<ModelShape>;
    fn save(&self, path: &Path, annotations: Option<&serde_json::Value>) -> Result<()>;
    fn calibrate(
        self: Box<Self>,
        model: &AnyModel<'_>,
        id_data: &dyn BatchSource,
        alpha: f64,
    ) -> Result<Box<dyn Erased>>;
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// A fitted detector of type `F`, calibrated or not, behind [`Erased`]:
/// the model is seen as `F`'s family sees it.
pub(crate) enum Erasing<F> {
    Plain(F),
    Calibrated(Calibrated<F>),
}

impl<F> Erasing<F>
where
    F: FittedDetector + Persist + 'static,
    Calibrated<F>: Persist,
{
    pub(crate) fn boxed(fitted: F) -> Box<dyn Erased> {
        Box::new(Erasing::Plain(fitted))
    }

    pub(crate) fn boxed_calibrated(fitted: Calibrated<F>) -> Box<dyn Erased> {
        Box::new(Erasing::Calibrated(fitted))
    }
}

impl<F> Erased for Erasing<F>
where
    F: FittedDetector + Persist + 'static,
    Calibrated<F>: Persist,
{
    fn kind(&self) -> &'static str {
        match self {
            Erasing::Plain(f) => f.kind(),
            Erasing::Calibrated(c) => c.kind(),
        }
    }

    fn check_model(&self, model: &AnyModel<'_>) -> Result<()> {
        match self {
            Erasing::Plain(f) => f.check_model(model),
            Erasing::Calibrated(c) => c.check_model(model),
        }
    }

    fn score_batch(&self, model: &AnyModel<'_>, batch: Batch) -> Result<ScoreOutput> {
        match self {
            Erasing::Plain(f) => f.score_batch(model, batch),
            Erasing::Calibrated(c) => c.score_batch(model, batch),
        }
    }

    fn score(&self, model: &AnyModel<'_>, data: &dyn BatchSource) -> Result<ScoreOutput> {
        match self {
            Erasing::Plain(f) => f.score(model, data),
            Erasing::Calibrated(c) => c.score(model, data),
        }
    }

    fn calibration(&self) -> Option<(&Calibration, f64)> {
        match self {
            Erasing::Plain(_) => None,
            Erasing::Calibrated(c) => Some((c.calibration(), c.alpha())),
        }
    }

    fn expects(&self) -> Option<ModelShape> {
        match self {
            Erasing::Plain(f) => f.expects(),
            Erasing::Calibrated(c) => c.expects(),
        }
    }

    fn save(&self, path: &Path, annotations: Option<&serde_json::Value>) -> Result<()> {
        match self {
            Erasing::Plain(f) => save_to(f, path, annotations),
            Erasing::Calibrated(c) => save_to(c, path, annotations),
        }
    }

    fn calibrate(
        self: Box<Self>,
        model: &AnyModel<'_>,
        id_data: &dyn BatchSource,
        alpha: f64,
    ) -> Result<Box<dyn Erased>> {
        let fitted = match *self {
            Erasing::Plain(f) => f,
            Erasing::Calibrated(c) => c.into_fitted(),
        };
        Ok(Erasing::boxed_calibrated(Calibrated::fit(
            fitted, model, id_data, alpha,
        )?))
    }

    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Erasing::Plain(d) => f.debug_tuple("AnyDetector").field(d).finish(),
            Erasing::Calibrated(c) => f.debug_tuple("AnyDetector").field(c).finish(),
        }
    }
}
