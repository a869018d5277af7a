//! The registry: every detector kind the crate knows, declared once in the
//! detector's own file. Loading a file by its kind ([`AnyDetector::load`]),
//! the command line's `--detector` values, the examples' tables and the
//! conformance test all iterate over it; nothing else lists detectors.
//!
//! A [`Registration`] says what a kind is called (in files and on the
//! command line), what it needs (fit data, labels, capabilities of the
//! network), which parameters it takes by name, how it is built from them
//! ([`Registration::build`]) and how its fitted state is read back.
//!
//! ```
//! use ndarray::{Array1, Array2, Array4};
//! use oodkit::detectors::registry::{self, Params};
//! use oodkit::model::from_fn_with_features;
//!
//! // A network whose only feature layer is its input, its logits the same.
//! let model = from_fn_with_features(["input"], |x| {
//!     let flat = x.to_shape((x.shape()[0], 2))?.to_owned();
//!     Ok((vec![flat.clone()], flat))
//! });
//! let fit = oodkit::OodDataset::from_arrays(
//!     Array4::from_shape_vec((4, 1, 1, 2), vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9])?,
//!     Array1::from(vec![0, 0, 1, 1]),
//! )?;
//! let knn = registry::find("knn")?.build(&Params::new().set("k", 1.0))?;
//! let fitted = knn.fit(&model, Some(&fit))?;
//! assert_eq!(fitted.kind(), "KNN");
//! let far = oodkit::Batch::new(Array4::from_shape_vec((1, 1, 1, 2), vec![-1.0, -1.0])?);
//! let near = oodkit::Batch::new(Array4::from_shape_vec((1, 1, 1, 2), vec![1.0, 0.0])?);
//! assert!(fitted.score_batch(&model, far)?.scores[0] > fitted.score_batch(&model, near)?.scores[0]);
//!
//! // Parameters a kind does not take are refused, naming those it does.
//! let err = registry::find("mls")?.build(&Params::new().set("k", 3.0)).unwrap_err();
//! assert!(err.to_string().contains("takes no parameter"), "{err}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::RwLock;

use super::any::{Erased, Erasing};
use super::any_partial::{AnyPartialFit, Typed};
use super::file::{FileInfo, Persist};
use super::{
    AnyDetector, AnyModel, Detector, FeatureDetector, FittedDetector, FittedFeatures, FittedShaped,
    PartialState, PrincipalDims, ScoreFeatures, ScoreLogits, StoredState,
};
use crate::calibration::Calibrated;
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
pub use crate::model::Capability;
use crate::model::LayerId;

/// What a detector needs to be fitted and to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Fit data is required (in-distribution statistics are learned).
    pub fit_data: bool,
    /// The fit data must carry class labels.
    pub labels: bool,
    /// What of the network it uses besides the logits (with its default
    /// parameters: ODIN with ε = 0 needs no gradient).
    pub capabilities: &'static [Capability],
}

impl Needs {
    /// Only the logits, no fit data.
    pub const LOGITS: Needs = Needs {
        fit_data: false,
        labels: false,
        capabilities: &[],
    };
}

/// One parameter a kind takes by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// Its name, e.g. `"k"` (the command line's flag is `--k`).
    pub name: &'static str,
    /// What it sets, with its default.
    pub doc: &'static str,
}

/// A parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A number (counts are whole numbers).
    Number(f64),
    /// A word, e.g. a statistic's name.
    Text(String),
}

impl From<f64> for ParamValue {
    fn from(v: f64) -> Self {
        ParamValue::Number(v)
    }
}

impl From<usize> for ParamValue {
    fn from(v: usize) -> Self {
        ParamValue::Number(v as f64)
    }
}

impl From<&str> for ParamValue {
    fn from(v: &str) -> Self {
        ParamValue::Text(v.to_owned())
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Number(v) => write!(f, "{v}"),
            ParamValue::Text(v) => write!(f, "{v:?}"),
        }
    }
}

/// Parameters by name, and the layers a feature detector fits on: what a
/// command line, a configuration file or Python keywords give. A kind
/// reads the names it takes; those absent keep their defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    values: BTreeMap<String, ParamValue>,
    layers: Option<Vec<LayerId>>,
}

impl Params {
    /// No parameter: every default.
    pub fn new() -> Self {
        Params::default()
    }

    /// Sets parameter `name`.
    pub fn set(mut self, name: &str, value: impl Into<ParamValue>) -> Self {
        self.values.insert(name.to_owned(), value.into());
        self
    }

    /// The layers a feature detector fits on (default: `-2`, the
    /// penultimate one); ignored by the detectors on logits.
    pub fn with_layers(mut self, layers: Vec<LayerId>) -> Self {
        self.layers = Some(layers);
        self
    }

    /// The layers given, if any.
    pub fn layers(&self) -> Option<&[LayerId]> {
        self.layers.as_deref()
    }

    /// The names given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Only the parameters among `names` (the layers kept): what a kind
    /// takes of parameters set for several kinds at once.
    pub fn only(&self, names: &[Param]) -> Params {
        Params {
            values: self
                .values
                .iter()
                .filter(|(k, _)| names.iter().any(|p| p.name == k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            layers: self.layers.clone(),
        }
    }

    /// The number `name`, if given; an error when it is a word or not
    /// finite.
    pub fn number(&self, name: &str) -> Result<Option<f64>> {
        match self.values.get(name) {
            None => Ok(None),
            Some(ParamValue::Number(v)) if v.is_finite() => Ok(Some(*v)),
            Some(other) => Err(Error::InvalidParameter {
                name: "parameter",
                value: format!("{name} = {other}"),
                reason: "must be a finite number".into(),
            }),
        }
    }

    /// The number `name` as `f32`, if given.
    pub fn number_f32(&self, name: &str) -> Result<Option<f32>> {
        Ok(self.number(name)?.map(|v| v as f32))
    }

    /// The whole non-negative number `name`, if given.
    pub fn count(&self, name: &str) -> Result<Option<usize>> {
        match self.number(name)? {
            None => Ok(None),
            Some(v) if v >= 0.0 && v.fract() == 0.0 && v <= usize::MAX as f64 => {
                Ok(Some(v as usize))
            }
            Some(v) => Err(Error::InvalidParameter {
                name: "parameter",
                value: format!("{name} = {v}"),
                reason: "must be a whole number, 0 or more".into(),
            }),
        }
    }

    /// The word `name`, if given.
    pub fn text(&self, name: &str) -> Result<Option<&str>> {
        match self.values.get(name) {
            None => Ok(None),
            Some(ParamValue::Text(v)) => Ok(Some(v)),
            Some(other) => Err(Error::InvalidParameter {
                name: "parameter",
                value: format!("{name} = {other}"),
                reason: "must be a word".into(),
            }),
        }
    }
}

/// `name = value, ...`, in name order (the layers apart).
impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.values.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name} = {value}")?;
        }
        Ok(())
    }
}

/// Builds a kind's detector from parameters: reads the names it takes
/// from [`Params`] and wraps the detector with [`built`].
pub type BuildFn = fn(&Params) -> Result<BoxedDetector>;

/// Reads a kind's fitted detector from a file (its header read as `info`):
/// [`load_logits`], [`load_features`] or [`load_as`] for the kind's types.
pub type LoadFn = fn(&Path, &FileInfo) -> Result<AnyDetector>;

/// A detector's parameters behind one type, as a [`BuildFn`] returns them
/// ([`built`] makes one).
pub struct BoxedDetector(Box<dyn FitAny>);

impl fmt::Debug for BoxedDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A detector kind: its names, needs and parameters, how it is built and
/// how its files are read. Declared in the detector's own file and listed
/// once in the registry.
pub struct Registration {
    kind: &'static str,
    name: &'static str,
    summary: &'static str,
    params: &'static [Param],
    needs: Needs,
    build: BuildFn,
    load: LoadFn,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// A registration: the kind written in files (e.g. `"KNN"`), the name
    /// on the command line (`"knn"`), one line on what it scores, the
    /// parameters it takes by name, what it needs, how it is built from
    /// parameters and how its files are read. The crate's detectors declare
    /// theirs in their files; declare yours as a `static` and [`register`]
    /// it.
    pub const fn new(
        kind: &'static str,
        name: &'static str,
        summary: &'static str,
        params: &'static [Param],
        needs: Needs,
        build: BuildFn,
        load: LoadFn,
    ) -> Self {
        Registration {
            kind,
            name,
            summary,
            params,
            needs,
            build,
            load,
        }
    }

    /// The kind written in files, e.g. `"KNN"`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The name on the command line, e.g. `"knn"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One line on what it scores.
    pub fn summary(&self) -> &'static str {
        self.summary
    }

    /// The parameters it takes by name.
    pub fn params(&self) -> &'static [Param] {
        self.params
    }

    /// What it needs.
    pub fn needs(&self) -> Needs {
        self.needs
    }

    /// The detector with `params` (absent ones at their defaults). Errors
    /// on a parameter this kind does not take, and on values its
    /// constructor refuses.
    pub fn build(&'static self, params: &Params) -> Result<UnfittedDetector> {
        if let Some(unknown) = params
            .names()
            .find(|n| !self.params.iter().any(|p| p.name == *n))
        {
            let takes: Vec<&str> = self.params.iter().map(|p| p.name).collect();
            return Err(Error::InvalidParameter {
                name: "parameter",
                value: unknown.to_owned(),
                reason: if takes.is_empty() {
                    format!("{} takes no parameter", self.name)
                } else {
                    format!(
                        "{} takes no parameter of that name; it takes {}",
                        self.name,
                        takes.join(", ")
                    )
                },
            });
        }
        Ok(UnfittedDetector {
            inner: (self.build)(params)?.0,
            registration: self,
        })
    }

    /// Reads its file (called by [`AnyDetector::load`] after the header
    /// named this kind).
    pub(crate) fn load(&self, path: &Path, info: &FileInfo) -> Result<AnyDetector> {
        (self.load)(path, info)
    }
}

/// A detector built from a [`Registration`], not fitted yet: fit it on any
/// model to get an [`AnyDetector`].
pub struct UnfittedDetector {
    inner: Box<dyn FitAny>,
    registration: &'static Registration,
}

impl fmt::Debug for UnfittedDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UnfittedDetector")
            .field(&self.inner)
            .finish()
    }
}

impl UnfittedDetector {
    /// The kind's registration.
    pub fn registration(&self) -> &'static Registration {
        self.registration
    }

    /// Fits on `model` and `fit_data` (read only by the kinds that need
    /// it), as the typed detector's [`Detector::fit`] does.
    pub fn fit(
        &self,
        model: &AnyModel<'_>,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<AnyDetector> {
        Ok(AnyDetector::fitted(self.inner.fit(model, fit_data)?))
    }

    /// Fits on arrays computed elsewhere — features of one or more layers
    /// (a forward hook's), logits, labels — as it would through the
    /// network (see [`Precomputed`](super::Precomputed)). The fitted
    /// detector records no input shape: its file serves the network the
    /// arrays came from as well as more arrays.
    pub fn fit_precomputed(&self, data: &super::Precomputed<'_>) -> Result<AnyDetector> {
        self.check_fit_size(data.len())?;
        if self.inner.fits_in_place(data) {
            // One layer's features alone: fitted on the array where it
            // lies (the fit of the model path, without its row copies).
            let mut partial = self.partial_fit_precomputed(data)?;
            if partial.end_first_pass()? {
                partial.update_precomputed(data)?;
            }
            return partial.finish();
        }
        self.fit(data, Some(&data.source()))
    }

    /// The first pass of a partial fit on one shard of precomputed
    /// features (and labels): what a cluster's worker runs. Save it, merge
    /// the shards' where they meet ([`load_partial`](Self::load_partial)),
    /// finish. Feature detectors only, on one layer.
    pub fn partial_fit_precomputed(&self, data: &super::Precomputed<'_>) -> Result<AnyPartialFit> {
        self.inner
            .partial_fit(data)
            .unwrap_or_else(|| Err(self.no_partial_fits()))
    }

    /// Reads a partial fit of this detector (saved by a worker). The
    /// detector's parameters must be those the workers used: merging
    /// checks them.
    pub fn load_partial(&self, path: impl AsRef<Path>) -> Result<AnyPartialFit> {
        self.inner
            .load_partial(path.as_ref())
            .unwrap_or_else(|| Err(self.no_partial_fits()))
    }

    /// The error of a kind without partial fits (not a feature detector).
    fn no_partial_fits(&self) -> Error {
        Error::Unsupported {
            what: format!("partial fits of {}", self.registration.kind()),
            hint: "partial fits are those of the feature detectors: fit this one on all the \
                   data at once"
                .into(),
        }
    }

    /// Errors when `fit_samples` in-distribution samples cannot be enough
    /// for its parameters ([`Detector::check_fit_size`]): check before a
    /// long pass over the data.
    pub fn check_fit_size(&self, fit_samples: usize) -> Result<()> {
        self.inner.check_fit_size(fit_samples)
    }
}

/// A detector's parameters behind one type: fits through any model.
pub(crate) trait FitAny: Send + Sync + fmt::Debug {
    fn fit(
        &self,
        model: &AnyModel<'_>,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<Box<dyn Erased>>;

    fn check_fit_size(&self, fit_samples: usize) -> Result<()>;

    /// A partial fit on a shard of precomputed features (feature
    /// detectors); `None` for a kind without partial fits.
    fn partial_fit(&self, data: &super::Precomputed<'_>) -> Option<Result<AnyPartialFit>> {
        let _ = data;
        None
    }

    /// Whether a fit on `data` is the partial fit of all of it, finished:
    /// a feature detector on one layer, without an input step, on
    /// features without logits or head (what the model path then gives
    /// the fitter is the same features, without logits).
    fn fits_in_place(&self, data: &super::Precomputed<'_>) -> bool {
        let _ = data;
        false
    }

    /// A partial fit read from its file; `None` as for
    /// [`partial_fit`](Self::partial_fit).
    fn load_partial(&self, path: &Path) -> Option<Result<AnyPartialFit>> {
        let _ = path;
        None
    }
}

/// A feature detector in the registry: fits as any detector does, and
/// has partial fits.
#[derive(Debug)]
struct FeatureKind<D>(D);

impl<D> FitAny for FeatureKind<D>
where
    D: FeatureDetector + Send + Sync + fmt::Debug + 'static,
    D::Fitter: PartialState + Send + Sync + 'static,
    D::Fitted: StoredState + 'static,
    FittedFeatures<D::Fitted>: Persist,
    Calibrated<FittedFeatures<D::Fitted>>: Persist,
{
    fn fit(
        &self,
        model: &AnyModel<'_>,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<Box<dyn Erased>> {
        FitAny::fit(&self.0, model, fit_data)
    }

    fn check_fit_size(&self, fit_samples: usize) -> Result<()> {
        Detector::check_fit_size(&self.0, fit_samples)
    }

    fn fits_in_place(&self, data: &super::Precomputed<'_>) -> bool {
        use crate::model::FeatureModel;
        self.0.layers().len() == 1
            && self.0.options().perturbation().is_none()
            && !data.gives_logits()
    }

    fn partial_fit(&self, data: &super::Precomputed<'_>) -> Option<Result<AnyPartialFit>> {
        Some(Typed::fit(&self.0, data).map(|typed| AnyPartialFit {
            inner: Box::new(typed),
            kind: self.0.name(),
        }))
    }

    fn load_partial(&self, path: &Path) -> Option<Result<AnyPartialFit>> {
        Some(Typed::load(&self.0, path).map(|typed| AnyPartialFit {
            inner: Box::new(typed),
            kind: self.0.name(),
        }))
    }
}

/// Boxes a feature detector for a [`BuildFn`], with its partial fits
/// ([`UnfittedDetector::partial_fit_precomputed`]): for a
/// [`FeatureDetector`] whose fitter saves ([`PartialState`]).
pub fn built_features<D>(detector: D) -> Result<BoxedDetector>
where
    D: FeatureDetector + Send + Sync + fmt::Debug + 'static,
    D::Fitter: PartialState + Send + Sync + 'static,
    D::Fitted: StoredState + 'static,
    FittedFeatures<D::Fitted>: Persist,
    Calibrated<FittedFeatures<D::Fitted>>: Persist,
{
    Ok(BoxedDetector(Box::new(FeatureKind(detector))))
}

impl<D> FitAny for D
where
    D: Detector + Send + Sync + fmt::Debug,
    D::Fitted: Persist + 'static,
    Calibrated<D::Fitted>: Persist,
{
    fn fit(
        &self,
        model: &AnyModel<'_>,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<Box<dyn Erased>> {
        Ok(Erasing::boxed(self.fit_model(model, fit_data)?))
    }

    fn check_fit_size(&self, fit_samples: usize) -> Result<()> {
        Detector::check_fit_size(self, fit_samples)
    }
}

/// Boxes `detector` for a [`BuildFn`]: any [`Detector`] whose fitted
/// state saves ([`Persist`]: a [`StoredLogits`](super::StoredLogits), or
/// a [`FittedFeatures`] of a [`StoredState`]).
pub fn built<D>(detector: D) -> Result<BoxedDetector>
where
    D: Detector + Send + Sync + fmt::Debug + 'static,
    D::Fitted: Persist + 'static,
    Calibrated<D::Fitted>: Persist,
{
    Ok(BoxedDetector(Box::new(detector)))
}

/// Reads a file of fitted detector `F` (calibrated or not): a [`LoadFn`]
/// for a kind with one fitted type.
pub fn load_as<F>(path: &Path, info: &FileInfo) -> Result<AnyDetector>
where
    F: FittedDetector + Persist + 'static,
    Calibrated<F>: Persist,
{
    Ok(AnyDetector::fitted(if info.calibrated {
        Erasing::boxed_calibrated(Calibrated::<F>::load(path)?)
    } else {
        Erasing::boxed(F::load(path)?)
    }))
}

/// Every registered kind: the crate's, in the order the command line lists
/// them, then those [`register`]ed, in their order.
pub fn all() -> Vec<&'static Registration> {
    let added = ADDED
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    REGISTRY.iter().chain(added.iter().copied()).collect()
}

/// Adds a kind defined outside the crate: [`find`], [`AnyDetector::load`]
/// and [`all`] know it from then on (in this process). Errors when its kind
/// or its name is taken (by the crate's detectors or one registered
/// before), or is empty.
///
/// A detector of your own implements the crate's traits —
/// [`FeatureDetector`] with a [`StoredState`] fitted
/// state, or [`ScoreLogits`] with [`StoredLogits`](super::StoredLogits) —
/// and its registration names [`built`] and [`load_features`] /
/// [`load_logits`]; the example `own_detector` shows one end to end.
pub fn register(registration: &'static Registration) -> Result<()> {
    let mut added = ADDED
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (kind, name) = (registration.kind, registration.name);
    if kind.is_empty() || name.is_empty() {
        return Err(Error::invalid(
            "registration",
            format!("kind {kind:?}, name {name:?}"),
            "a detector needs a kind (in files) and a name (on the command line)",
        ));
    }
    if let Some(taken) = REGISTRY
        .iter()
        .chain(added.iter().copied())
        .find(|r| r.kind == kind || r.name == name || r.kind == name || r.name == kind)
    {
        return Err(Error::invalid(
            "registration",
            format!("kind {kind:?}, name {name:?}"),
            format!(
                "taken by the detector {} (kind {}): choose another kind and name",
                taken.name, taken.kind
            ),
        ));
    }
    added.push(registration);
    Ok(())
}

/// The kind named `name` on the command line (e.g. `"knn"`) or in files
/// (e.g. `"KNN"`). Errors listing the names there are.
pub fn find(name: &str) -> Result<&'static Registration> {
    let all = all();
    all.iter()
        .copied()
        .find(|r| r.name == name || r.kind == name)
        .ok_or_else(|| Error::InvalidParameter {
            name: "detector",
            value: name.to_owned(),
            reason: format!(
                "no detector of that name; the detectors are {}",
                all.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
            ),
        })
}

/// The kind written in files as `kind`, if registered.
pub(crate) fn by_kind(kind: &str) -> Option<&'static Registration> {
    all().into_iter().find(|r| r.kind == kind)
}

/// Kinds [`register`]ed at run time.
static ADDED: RwLock<Vec<&'static Registration>> = RwLock::new(Vec::new());

/// The registry: one line per detector file.
static REGISTRY: &[Registration] = &[
    super::logits::mls::MLS,
    super::logits::mls::MSP,
    super::logits::energy::REGISTRATION,
    super::logits::entropy::REGISTRATION,
    super::logits::generalized_entropy::REGISTRATION,
    super::logits::temperature::REGISTRATION,
    super::logits::klm::REGISTRATION,
    super::logits::openmax::REGISTRATION,
    super::logits::rankfeat::REGISTRATION,
    super::logits::mc_dropout::REGISTRATION,
    super::logits::odin::REGISTRATION,
    super::features::mahalanobis::MAHALANOBIS,
    super::features::mahalanobis::RMDS,
    super::features::knn::REGISTRATION,
    super::features::vim::REGISTRATION,
    super::features::she::REGISTRATION,
    super::features::gram::REGISTRATION,
    super::features::dice::REGISTRATION,
    super::features::vra::REGISTRATION,
    super::features::fdbd::REGISTRATION,
    super::features::nci::REGISTRATION,
    super::features::nnguide::REGISTRATION,
    super::features::gradnorm::REGISTRATION,
    super::features::residual::REGISTRATION,
    super::features::gmm::REGISTRATION,
];

/// Reads a logit detector's file, plain or on shaped logits (a [`LoadFn`]).
pub fn load_logits<D>(path: &Path, info: &FileInfo) -> Result<AnyDetector>
where
    D: ScoreLogits + Persist + 'static,
    Calibrated<D>: Persist,
    FittedShaped<D>: Persist,
    Calibrated<FittedShaped<D>>: Persist,
{
    if info.shaped {
        load_as::<FittedShaped<D>>(path, info)
    } else {
        load_as::<D>(path, info)
    }
}

/// Reads a feature detector's file fitted through a model (a [`LoadFn`]).
pub fn load_features<S>(path: &Path, info: &FileInfo) -> Result<AnyDetector>
where
    S: ScoreFeatures + 'static,
    FittedFeatures<S>: Persist,
    Calibrated<FittedFeatures<S>>: Persist,
{
    load_as::<FittedFeatures<S>>(path, info)
}

/// `detector` on the layers of `params`, when it names any.
pub(crate) fn on_layers<D: FeatureDetector>(detector: D, params: &Params) -> Result<D> {
    match params.layers() {
        Some(layers) => detector.with_layers(layers.to_vec()),
        None => Ok(detector),
    }
}

/// The parameter `dims` as a principal subspace: a whole number is a count,
/// a number in (0, 1) a fraction of the variance.
pub(crate) fn principal_dims(params: &Params) -> Result<Option<PrincipalDims>> {
    match params.number("dims")? {
        None => Ok(None),
        Some(v) if v > 0.0 && v < 1.0 => Ok(Some(PrincipalDims::Explained(v))),
        Some(_) => Ok(Some(PrincipalDims::Count(
            params.count("dims")?.unwrap_or(0),
        ))),
    }
}

/// The `dims` parameter of ViM and Residual.
pub(crate) const DIMS: Param = Param {
    name: "dims",
    doc: "the principal subspace: a number of dimensions (64) or the fraction of variance it \
          explains (0.99) [default: 0.99]",
};
