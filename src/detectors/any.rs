//! [`AnyDetector`]: a detector file loaded by the kind it holds, when the
//! program does not know it in advance (a command line, a service that is
//! handed a file).

use std::fmt;
use std::path::Path;

use super::file::{FileInfo, Persist, describe};
use super::{
    ClassGaussians, ClassMixture, DiceHead, Energy, Entropy, FdbdBoundaries, Features,
    FittedDetector, FittedFeatures, Gen, GradNormHead, GramBounds, GuideBank, KnnIndex, Logits,
    Mls, ModelShape, NciCentre, Odin, ResidualSpace, ScoreFeatures, ScoreOutput, Shaped, SheMeans,
    VimSubspace, VraThresholds,
};
use super::{KlMatching, McDropout, OpenMaxModel, RankFeat, TemperedSoftmax};
use crate::batch::Batch;
use crate::calibration::{Calibrated, Calibration, Verdict};
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::model::FeatureModel;

/// The model every [`AnyDetector`] scores through: any [`FeatureModel`]
/// (an `OnnxModel`, a `BurnModel`, a closure model); the logit
/// detectors read only its logits.
pub type AnyModel<'m> = dyn FeatureModel + Send + Sync + 'm;

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
    info: FileInfo,
}

impl fmt::Debug for AnyDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.debug(f)
    }
}

impl AnyDetector {
    /// Reads the detector file at `path`, whatever kind it holds. Errors as
    /// the typed loaders do (missing, corrupt, newer format), and on a
    /// state fitted on precomputed features (it names no layer of a
    /// model: score such features with the state's
    /// [`score_features`](super::ScoreFeatures::score_features)).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let info = describe(path)?;
        let inner = match (info.kind.as_str(), info.shaped) {
            ("MLS" | "MSP", false) => load::<Mls, ViaLogits<()>>(path, info.calibrated),
            ("Energy", false) => load::<Energy, ViaLogits<()>>(path, info.calibrated),
            ("Entropy", false) => load::<Entropy, ViaLogits<()>>(path, info.calibrated),
            ("GEN", false) => load::<Gen, ViaLogits<()>>(path, info.calibrated),
            ("ODIN", false) => load::<Odin, ViaLogits<()>>(path, info.calibrated),
            ("TemperatureScaling", false) => {
                load::<TemperedSoftmax, ViaLogits<()>>(path, info.calibrated)
            }
            ("KLM", false) => load::<KlMatching, ViaLogits<()>>(path, info.calibrated),
            ("OpenMax", false) => load::<OpenMaxModel, ViaLogits<()>>(path, info.calibrated),
            ("RankFeat", false) => load::<RankFeat, ViaLogits<()>>(path, info.calibrated),
            ("MCDropout", false) => load::<McDropout, ViaLogits<()>>(path, info.calibrated),
            ("TemperatureScaling", true) => {
                load::<Shaped<TemperedSoftmax>, ViaFeatures<()>>(path, info.calibrated)
            }
            ("MLS" | "MSP", true) => load::<Shaped<Mls>, ViaFeatures<()>>(path, info.calibrated),
            ("Energy", true) => load::<Shaped<Energy>, ViaFeatures<()>>(path, info.calibrated),
            ("Entropy", true) => load::<Shaped<Entropy>, ViaFeatures<()>>(path, info.calibrated),
            ("GEN", true) => load::<Shaped<Gen>, ViaFeatures<()>>(path, info.calibrated),
            ("ODIN", true) => load::<Shaped<Odin>, ViaFeatures<()>>(path, info.calibrated),
            ("Mahalanobis" | "RMDS", _) => {
                load::<FittedFeatures<ClassGaussians>, ViaFeatures<()>>(path, info.calibrated)
            }
            ("KNN", _) => load::<FittedFeatures<KnnIndex>, ViaFeatures<()>>(path, info.calibrated),
            ("ViM", _) => {
                load::<FittedFeatures<VimSubspace>, ViaFeatures<()>>(path, info.calibrated)
            }
            ("SHE", _) => load::<FittedFeatures<SheMeans>, ViaFeatures<()>>(path, info.calibrated),
            ("Gram", _) => {
                load::<FittedFeatures<GramBounds>, ViaFeatures<()>>(path, info.calibrated)
            }
            ("DICE", _) => load::<FittedFeatures<DiceHead>, ViaFeatures<()>>(path, info.calibrated),
            ("VRA", _) => {
                load::<FittedFeatures<VraThresholds>, ViaFeatures<()>>(path, info.calibrated)
            }
            ("fDBD", _) => {
                load::<FittedFeatures<FdbdBoundaries>, ViaFeatures<()>>(path, info.calibrated)
            }
            ("NCI", _) => load::<FittedFeatures<NciCentre>, ViaFeatures<()>>(path, info.calibrated),
            ("GradNorm", _) => {
                load::<FittedFeatures<GradNormHead>, ViaFeatures<()>>(path, info.calibrated)
            }
            ("Residual", _) => {
                load::<FittedFeatures<ResidualSpace>, ViaFeatures<()>>(path, info.calibrated)
            }
            ("NNGuide", _) => {
                load::<FittedFeatures<GuideBank>, ViaFeatures<()>>(path, info.calibrated)
            }
            ("GMM", _) => {
                load::<FittedFeatures<ClassMixture>, ViaFeatures<()>>(path, info.calibrated)
            }
            (other, _) => Err(Error::WrongFile {
                path: path.to_path_buf(),
                expected: "a detector this oodkit knows".into(),
                found: format!("a {other} detector"),
                hint: format!(
                    "it was written by oodkit {}; read it with that version or a newer one",
                    info.crate_version
                ),
            }),
        }?;
        Ok(AnyDetector { inner, info })
    }

    /// What the file's header says (kind, versions, metadata), as
    /// [`describe`] read it.
    pub fn info(&self) -> &FileInfo {
        &self.info
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
        let classes = out.predictions();
        calibration.verdicts(out.scores.view(), Some(classes.view()), alpha)
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
}

/// Reads `F` (calibrated or not) from `path` and erases it behind `W`.
fn load<F, W>(path: &Path, calibrated: bool) -> Result<Box<dyn Erased>>
where
    F: Persist + FittedDetector + 'static,
    Calibrated<F>: Persist,
    W: Wrap<F> + Wrap<Calibrated<F>>,
{
    Ok(if calibrated {
        <W as Wrap<Calibrated<F>>>::wrap(Calibrated::<F>::load(path)?)
    } else {
        <W as Wrap<F>>::wrap(F::load(path)?)
    })
}

/// What [`AnyDetector`] needs of a fitted detector, the model type fixed.
trait Erased: Send + Sync {
    fn kind(&self) -> &'static str;
    fn check_model(&self, model: &AnyModel<'_>) -> Result<()>;
    fn score_batch(&self, model: &AnyModel<'_>, batch: Batch) -> Result<ScoreOutput>;
    fn score(&self, model: &AnyModel<'_>, data: &dyn BatchSource) -> Result<ScoreOutput>;
    fn calibration(&self) -> Option<(&Calibration, f64)>;
    fn expects(&self) -> Option<ModelShape>;
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// Boxes a fitted detector as [`Erased`].
trait Wrap<F> {
    fn wrap(fitted: F) -> Box<dyn Erased>;
}

/// What a fitted detector recorded beside its state: a calibration, the
/// model shape it saw.
trait Recorded {
    fn calibration(&self) -> Option<(&Calibration, f64)> {
        None
    }
    fn expects(&self) -> Option<ModelShape> {
        None
    }
}

impl Recorded for Mls {}
impl Recorded for Energy {}
impl Recorded for Entropy {}
impl Recorded for Gen {}
impl Recorded for Odin {}
impl Recorded for TemperedSoftmax {}
impl Recorded for KlMatching {}
impl Recorded for OpenMaxModel {}
impl Recorded for RankFeat {}
impl Recorded for McDropout {}
impl<D> Recorded for Shaped<D> {}
impl<S: ScoreFeatures> Recorded for FittedFeatures<S> {
    fn expects(&self) -> Option<ModelShape> {
        FittedFeatures::expects(self)
    }
}
impl<F: FittedDetector + Recorded> Recorded for Calibrated<F> {
    fn calibration(&self) -> Option<(&Calibration, f64)> {
        Some((Calibrated::calibration(self), self.alpha()))
    }
    fn expects(&self) -> Option<ModelShape> {
        Calibrated::expects(self).or_else(|| self.fitted().expects())
    }
}

/// A detector of the [`Logits`] family: the model is used as a plain
/// [`Model`](crate::model::Model).
struct ViaLogits<F>(F);

/// A detector of the [`Features`] family.
struct ViaFeatures<F>(F);

impl<F> Wrap<F> for ViaLogits<()>
where
    F: FittedDetector<Family = Logits> + Recorded + 'static,
{
    fn wrap(fitted: F) -> Box<dyn Erased> {
        Box::new(ViaLogits(fitted))
    }
}

impl<F> Wrap<F> for ViaFeatures<()>
where
    F: FittedDetector<Family = Features> + Recorded + 'static,
{
    fn wrap(fitted: F) -> Box<dyn Erased> {
        Box::new(ViaFeatures(fitted))
    }
}

/// The same forwarding for both families: only the model's view differs,
/// and the coercion of `&AnyModel` to it is implicit.
macro_rules! erased_via {
    ($($via:ident: $family:ty),*) => {$(
        impl<F: FittedDetector<Family = $family> + Recorded> Erased for $via<F> {
            fn kind(&self) -> &'static str {
                self.0.kind()
            }
            fn check_model(&self, model: &AnyModel<'_>) -> Result<()> {
                self.0.check_model(model)
            }
            fn score_batch(&self, model: &AnyModel<'_>, batch: Batch) -> Result<ScoreOutput> {
                self.0.score_batch(model, batch)
            }
            fn score(&self, model: &AnyModel<'_>, data: &dyn BatchSource) -> Result<ScoreOutput> {
                self.0.score(model, data)
            }
            fn calibration(&self) -> Option<(&Calibration, f64)> {
                self.0.calibration()
            }
            fn expects(&self) -> Option<ModelShape> {
                self.0.expects()
            }
            fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple("AnyDetector").field(&self.0).finish()
            }
        }
    )*};
}

erased_via!(ViaLogits: Logits, ViaFeatures: Features);
