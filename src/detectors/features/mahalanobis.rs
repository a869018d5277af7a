//! Mahalanobis (Lee et al., NeurIPS 2018) and its relative form RMDS (Ren
//! et al., 2021): class-conditional Gaussians with one shared covariance.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip, s};

use super::PartialState;
use super::derived::Derived;
use super::moments::ClassMoments;
use super::stored::StoredState;
use super::traits::merge_check;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, Needs, Registration, built_features, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::linalg::{gemm, lanes_squared_distance, symmetric_pinv_and_root, symmetric_root};
use crate::model::Model;
use serde::{Deserialize, Serialize};

/// Mahalanobis: class means μ_c and one shared (tied) covariance Σ of the
/// in-distribution features, Σ = (1/N) Σ_c Σ_{i∈c} (f_i − μ_c)(f_i − μ_c)ᵀ;
/// score = −max_c −½ (f − μ_c)ᵀ Σ⁺ (f − μ_c) = ½ min_c of the squared
/// Mahalanobis distance (higher = more OOD).
///
/// Σ⁺ is the pseudo-inverse, so a singular covariance (a constant
/// feature, fewer samples than dimensions) works. The statistics stream
/// in `f64` (memory O(D² + classes·D), not O(N·D)); scoring computes
/// ((F − m)·Σ⁺ ∘ (F − m)) row sums and a product with the means, with
/// no N × N matrix. The fit data needs labels; every class needs at least
/// two samples.
/// [`with_input_perturbation`](FeatureDetector::with_input_perturbation)
/// adds ODIN's input step (off by default).
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{FeatureDetector, Mahalanobis, ScoreFeatures};
///
/// // Two classes around (0, 0) and (10, 0), unit spread in x and y.
/// let fit = array![[-1.0_f32, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0],
///                  [9.0, 0.0], [11.0, 0.0], [10.0, -1.0], [10.0, 1.0]];
/// let labels = array![0_i64, 0, 0, 0, 1, 1, 1, 1];
/// let fitted = Mahalanobis::new().fit_features(fit.view(), labels.view())?;
/// let scores = fitted.score_features(array![[0.0_f32, 0.0], [5.0, 5.0]].view())?;
/// // Σ = I / 2: (5, 5) is at squared distance 2·50 from either mean.
/// assert!(scores[0].abs() < 1e-5);
/// assert!((scores[1] - 50.0).abs() < 1e-3);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases** (not errors): Identical fit features (no spread):
/// the pseudo-inverse of a zero covariance is zero and every input scores 0
/// (useless). One class: the distance to the mean under the class
/// covariance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mahalanobis {
    options: FeatureOptions,
}

impl Mahalanobis {
    /// Mahalanobis on the penultimate layer, without input perturbation.
    pub fn new() -> Self {
        Self::default()
    }
}

impl FeatureDetector for Mahalanobis {
    type Fitter = GaussianFitter;
    type Fitted = FittedMahalanobis;

    fn name(&self) -> &'static str {
        "Mahalanobis"
    }

    fn needs_labels(&self) -> bool {
        true
    }

    fn fitter(&self, width: usize, _model: Option<&dyn Model>) -> Result<GaussianFitter> {
        Ok(GaussianFitter::new(width, false))
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// RMDS, the relative Mahalanobis distance: the class-wise term of
/// [`Mahalanobis`] minus that of a background Gaussian fitted on all the
/// in-distribution features (mean m, covariance Σ₀ = (1/N) Σ_i (f_i − m)(f_i − m)ᵀ):
/// score = ½ min_c [(f − μ_c)ᵀ Σ⁺ (f − μ_c) − (f − m)ᵀ Σ₀⁺ (f − m)]
/// (higher = more OOD). Same streaming fit, requirements and options as
/// [`Mahalanobis`].
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{FeatureDetector, Mahalanobis, Rmds, ScoreFeatures};
///
/// let fit = array![[-1.0_f32, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0],
///                  [9.0, 0.0], [11.0, 0.0], [10.0, -1.0], [10.0, 1.0]];
/// let labels = array![0_i64, 0, 0, 0, 1, 1, 1, 1];
/// let rmds = Rmds::new().fit_features(fit.view(), labels.view())?;
/// let md = Mahalanobis::new().fit_features(fit.view(), labels.view())?;
/// let x = array![[5.0_f32, 5.0]];
/// // Σ₀ = diag(25.5, 0.5): the background term is ½ (0 + 25 / 0.5) = 25.
/// let gap = md.score_features(x.view())?[0] - rmds.score_features(x.view())?[0];
/// assert!((gap - 25.0).abs() < 1e-3);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases** (not errors): one class: the class and background
/// Gaussians coincide and every input scores 0 (useless: fit RMDS on
/// several classes, or use Mahalanobis).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rmds {
    options: FeatureOptions,
}

impl Rmds {
    /// RMDS on the penultimate layer, without input perturbation.
    pub fn new() -> Self {
        Self::default()
    }
}

impl FeatureDetector for Rmds {
    type Fitter = GaussianFitter;
    type Fitted = FittedMahalanobis;

    fn name(&self) -> &'static str {
        "RMDS"
    }

    fn needs_labels(&self) -> bool {
        true
    }

    fn fitter(&self, width: usize, _model: Option<&dyn Model>) -> Result<GaussianFitter> {
        Ok(GaussianFitter::new(width, true))
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// Streams the class moments of one layer (with the overall ones for
/// RMDS, which is what tells the two apart).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GaussianFitter {
    #[serde(flatten)]
    moments: ClassMoments,
}

impl GaussianFitter {
    fn new(width: usize, relative: bool) -> Self {
        GaussianFitter {
            moments: ClassMoments::new(width, relative),
        }
    }

    fn name(&self) -> &'static str {
        if self.moments.has_total() {
            "RMDS"
        } else {
            "Mahalanobis"
        }
    }
}

impl PartialState for GaussianFitter {
    const DETECTORS: &'static [&'static str] = &["Mahalanobis", "RMDS"];

    fn detector(&self) -> &'static str {
        self.name()
    }

    fn width(&self) -> usize {
        self.moments.dim()
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl LayerFitter for GaussianFitter {
    type Fitted = FittedMahalanobis;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        if let Some(labels) = batch.labels {
            self.moments.update(batch.features, labels);
        }
        Ok(())
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check(self.name(), "detectors", &self.name(), &other.name())?;
        merge_check(
            self.name(),
            "feature widths",
            &self.moments.dim(),
            &other.moments.dim(),
        )?;
        self.moments.absorb(other.moments);
        Ok(())
    }

    fn finish(self) -> Result<FittedMahalanobis> {
        let m = &self.moments;
        m.require_per_class(2, self.name())?;
        let n = m.count() as f64;
        let dim = m.dim();
        // Everything is centred on the overall mean, which keeps the
        // expanded quadratic forms below free of cancellation.
        let mut centre = Array1::<f64>::zeros(dim);
        for class in m.classes().values() {
            centre.scaled_add(class.count as f64 / n, &class.mean);
        }
        let mut means = Array2::zeros((m.classes().len(), dim));
        for (mut row, class) in means.rows_mut().into_iter().zip(m.classes().values()) {
            row.assign(&(&class.mean - &centre));
        }
        let (precision, root) =
            symmetric_pinv_and_root(&(m.within() / n), "the shared covariance")?;
        let projected = gemm(means.view(), precision.view(), false);
        let offsets = (&projected * &means).sum_axis(Axis(1));
        let background = match m.total() {
            Some((_, scatter)) => {
                Some(symmetric_pinv_and_root(&(scatter / n), "the background covariance")?.0)
            }
            None => None,
        };
        // Mahalanobis scores in f32 through the factor of the fit's own
        // eigendecomposition, saved with the state so a loaded one scores
        // alike. RMDS scores in f64: its difference of two distances loses
        // ranks in f32.
        let (root, form) = match background {
            Some(_) => (None, Derived::default()),
            None => {
                let form = ScoringForm::new(&centre, &means, &root);
                (Some(root), Derived::made(form))
            }
        };
        Ok(FittedMahalanobis {
            centre,
            means,
            precision,
            offsets,
            background,
            root,
            form,
        })
    }
}

/// What Mahalanobis and RMDS learn of a layer: the class means (centred on
/// the overall mean), the pseudo-inverse Σ⁺ of the shared covariance and,
/// for RMDS, that of the background covariance Σ₀⁺, all in `f64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedMahalanobis {
    #[serde(with = "array")]
    centre: Array1<f64>,
    #[serde(with = "array")]
    means: Array2<f64>,
    #[serde(with = "array")]
    precision: Array2<f64>,
    #[serde(with = "array")]
    offsets: Array1<f64>,
    /// RMDS only.
    #[serde(
        with = "array::optional",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    background: Option<Array2<f64>>,
    /// Mahalanobis: F with F Fᵀ = Σ⁺ (D x rank), from the fit's
    /// eigendecomposition; absent in files written before it was kept
    /// (then made from the precision at the first score) and for RMDS.
    #[serde(
        with = "array::optional",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    root: Option<Array2<f64>>,
    /// Made from the above for scoring.
    #[serde(skip)]
    form: Derived<ScoringForm>,
}

impl FittedMahalanobis {
    /// The `f32` form Mahalanobis scores through: made by the fit; for a
    /// state loaded from a file, at the first call (an eigendecomposition
    /// of the precision for files written before the factor was kept).
    fn form(&self) -> Result<&ScoringForm> {
        self.form.get_or_try(|| ScoringForm::of(self))
    }

    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.means.nrows()
    }

    /// Whether the background term is there (RMDS).
    pub fn is_relative(&self) -> bool {
        self.background.is_some()
    }
}

impl ScoreFeatures for FittedMahalanobis {
    fn width(&self) -> usize {
        self.centre.len()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        if self.background.is_some() {
            return Ok(self.score_f64(batch.features));
        }
        let form = self.form()?;
        // Centred in f32: the statistics were accumulated in f64, the
        // scores only need the distances' ranking to f32's precision.
        let x = &batch.features - &form.centre;
        let mut scores = if x.nrows() <= FEW_ROWS {
            form.nearest_few(&x)
        } else {
            form.nearest(&x)
        };
        // A row whose terms overflow f32 (features near f32::MAX) is scored
        // again in f64, where they do not.
        for (i, s) in scores.iter_mut().enumerate() {
            if !s.is_finite() {
                *s = self.score_f64(batch.features.slice(s![i..=i, ..]))[0];
            }
        }
        Ok(scores)
    }
}

impl FittedMahalanobis {
    /// The scores from the stored `f64` statistics, for all classes at
    /// once: ½ min_c (xᵀPx − 2 xᵀPμ_c + μ_cᵀPμ_c), less ½ xᵀP₀x for RMDS.
    fn score_f64(&self, features: ArrayView2<f32>) -> Array1<f32> {
        let x = features.mapv(f64::from) - &self.centre;
        let (xp, forms) = quadratic_forms(&x, &self.precision);
        let cross = gemm(xp.view(), self.means.view(), true);
        let mut scores = Array1::zeros(x.nrows());
        Zip::from(&mut scores)
            .and(&forms)
            .and(cross.rows())
            .for_each(|s, &form, cross| {
                let nearest = cross
                    .iter()
                    .zip(&self.offsets)
                    .map(|(c, o)| form - 2.0 * c + o)
                    .fold(f64::INFINITY, f64::min);
                *s = 0.5 * nearest;
            });
        if let Some(background) = &self.background {
            let (_, bg) = quadratic_forms(&x, background);
            scores.scaled_add(-0.5, &bg);
        }
        scores.mapv(|s| s as f32)
    }
}

/// Row sums of (X·P) ∘ X: each row's quadratic form xᵀ P x.
fn quadratic_forms(x: &Array2<f64>, p: &Array2<f64>) -> (Array2<f64>, Array1<f64>) {
    let xp = gemm(x.view(), p.view(), false);
    let forms = (&xp * x).sum_axis(Axis(1));
    (xp, forms)
}

/// Up to this many rows, a score reads the factor once per call with
/// running sums per row (no matrix product to pack for).
const FEW_ROWS: usize = 8;

/// What scoring reads, in `f32`, made once from the stored statistics:
/// with Σ⁺ = F Fᵀ (F from its eigendecomposition, the null directions
/// left out), ‖x − μ_c‖²_{Σ⁺} = ‖z − w_c‖² for z = xF and w_c = μ_c F, so
/// a score is a product with F and distances to the class targets w_c.
#[derive(Debug)]
struct ScoringForm {
    centre: Array1<f32>,
    factor: Array2<f32>,
    targets: Array2<f32>,
    target_norms: Array1<f32>,
}

impl ScoringForm {
    /// From a factor F (F Fᵀ = Σ⁺) of the precision.
    fn new(centre: &Array1<f64>, means: &Array2<f64>, root: &Array2<f64>) -> Self {
        let targets = gemm(means.view(), root.view(), false);
        let target_norms = targets.map_axis(Axis(1), |t| t.dot(&t) as f32);
        ScoringForm {
            centre: centre.mapv(|v| v as f32),
            factor: root.mapv(|v| v as f32),
            targets: targets.mapv(|v| v as f32),
            target_norms,
        }
    }

    /// From the stored factor, or (files written before it was kept) the
    /// stored precision, by an eigendecomposition.
    fn of(fitted: &FittedMahalanobis) -> Result<Self> {
        let root = match &fitted.root {
            Some(root) => root.clone(),
            None => symmetric_root(&fitted.precision, "the shared precision")?,
        };
        Ok(Self::new(&fitted.centre, &fitted.means, &root))
    }

    /// ½ min_c ‖z − w_c‖² of each row of `x` (centred), by products:
    /// ‖z‖² − 2 z·w_c + ‖w_c‖² (x centred on the overall mean keeps the
    /// terms small).
    fn nearest(&self, x: &Array2<f32>) -> Array1<f32> {
        let z = gemm(x.view(), self.factor.view(), false);
        let cross = gemm(z.view(), self.targets.view(), true);
        let mut scores = Array1::zeros(x.nrows());
        Zip::from(&mut scores)
            .and(z.rows())
            .and(cross.rows())
            .for_each(|s, z, cross| {
                let zz = z.dot(&z);
                let nearest = cross
                    .iter()
                    .zip(&self.target_norms)
                    .map(|(c, t)| zz - 2.0 * c + t)
                    .fold(f32::INFINITY, f32::min);
                // Overflowed terms: left to score_layer's f64 pass.
                *s = if zz.is_finite() && cross.iter().all(|c| c.is_finite()) {
                    0.5 * nearest.max(0.0)
                } else {
                    f32::NAN
                };
            });
        scores
    }

    /// The same for a few rows: z by running sums over the factor's rows
    /// (each read once for all the rows), then the distances directly.
    fn nearest_few(&self, x: &Array2<f32>) -> Array1<f32> {
        let z = project(x, &self.factor);
        z.rows()
            .into_iter()
            .map(|z| {
                if !z.iter().all(|v| v.is_finite()) {
                    // Overflowed: left to score_layer's f64 pass.
                    return f32::NAN;
                }
                let nearest = self
                    .targets
                    .rows()
                    .into_iter()
                    .map(|w| lanes_squared_distance(z, w))
                    .fold(f32::INFINITY, f32::min);
                0.5 * nearest
            })
            .collect()
    }
}

/// `x · factor` for a few rows of `x`: running sums over the factor's rows,
/// each read once (no packing for a matrix product).
fn project(x: &Array2<f32>, factor: &Array2<f32>) -> Array2<f32> {
    let mut z = Array2::<f32>::zeros((x.nrows(), factor.ncols()));
    for (i, f) in factor.rows().into_iter().enumerate() {
        for (mut z, x) in z.rows_mut().into_iter().zip(x.rows()) {
            z.scaled_add(x[i], &f);
        }
    }
    z
}

impl StoredState for FittedMahalanobis {
    const KINDS: &'static [&'static str] = &["Mahalanobis", "RMDS"];

    fn state_kind(&self) -> &'static str {
        if self.is_relative() {
            "RMDS"
        } else {
            "Mahalanobis"
        }
    }

    fn validate(&self) -> Result<()> {
        let (d, c) = (self.centre.len(), self.means.nrows());
        let square = |m: &Array2<f64>| m.dim() == (d, d);
        if c == 0
            || self.means.ncols() != d
            || !square(&self.precision)
            || self.offsets.len() != c
            || self.background.as_ref().is_some_and(|b| !square(b))
            || self
                .root
                .as_ref()
                .is_some_and(|r| r.nrows() != d || r.ncols() == 0 || r.ncols() > d)
        {
            return Err(Error::custom(format!(
                "{}'s arrays do not agree: centre ({d}), means {:?}, precision {:?}, offsets \
                 ({}), background {:?}, root {:?}",
                self.state_kind(),
                self.means.shape(),
                self.precision.shape(),
                self.offsets.len(),
                self.background.as_ref().map(|b| b.shape().to_vec()),
                self.root.as_ref().map(|b| b.shape().to_vec())
            )));
        }
        Ok(())
    }
}

/// Mahalanobis in the registry.
pub(crate) const MAHALANOBIS: Registration = Registration::new(
    "Mahalanobis",
    "mahalanobis",
    "Mahalanobis distance to the class means (features; fit data labelled)",
    &[],
    Needs {
        fit_data: true,
        labels: true,
        capabilities: &[Capability::Features],
    },
    |p| built_features(on_layers(Mahalanobis::new(), p)?),
    load_features::<FittedMahalanobis>,
);

/// RMDS in the registry.
pub(crate) const RMDS: Registration = Registration::new(
    "RMDS",
    "rmds",
    "relative Mahalanobis distance, RMDS (features; fit data labelled)",
    &[],
    Needs {
        fit_data: true,
        labels: true,
        capabilities: &[Capability::Features],
    },
    |p| built_features(on_layers(Rmds::new(), p)?),
    load_features::<FittedMahalanobis>,
);
