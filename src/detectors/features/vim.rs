//! ViM, the virtual-logit matching score (Wang et al., CVPR 2022).

use ndarray::{Array1, Array2, ArrayView2, Axis, CowArray, Ix2, s};

use super::PartialState;
use super::derived::Derived;
use super::moments::ClassMoments;
use super::partial::check_len;
use super::stored::StoredState;
use super::subspace::{check_residual, residual_basis};
use super::traits::{cannot_merge, merge_check};
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, DIMS, Needs, Registration, built_features, load_features, on_layers, principal_dims,
};
use crate::error::{Error, Result};
use crate::linalg::{gemm, pinv};
use crate::model::{Model, check_head, last_layer_of};
use serde::{Deserialize, Serialize};

/// How many principal dimensions of the in-distribution features ViM
/// keeps; the rest is the residual space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalDims {
    /// This many (at least 1, below the feature width).
    Count(usize),
    /// The fewest that explain at least this fraction of the variance, in
    /// (0, 1). (The Python toolkit keeps one fewer than that.)
    Explained(f64),
}

/// ViM: the features f of the penultimate layer, seen from the origin
/// u = −W⁺b of the last layer (weights W `(classes, D)`, bias b), have a
/// principal subspace (top eigenvectors of (1/N) Σ (f − u)(f − u)ᵀ over the
/// fit data); the residual r(f) = ‖(f − u) projected off it‖ is scaled by
/// α = mean max-logit / mean r on the fit data, and
/// score = α·r(f) − logsumexp(logits) (higher = more OOD).
///
/// The head comes from the model
/// ([`LastLayer::head_parameters`](crate::model::LastLayer::head_parameters)(crate::model::LastLayer::head_parameters):
/// the toy networks, any burn module with
/// [`BurnClassifier::head_linear`](crate::model::BurnClassifier::head_linear))
/// or from [`with_head`](Self::with_head), which
/// [`fit_features`](FeatureDetector::fit_features) needs (the logits are then
/// f·Wᵀ + b). Fitting streams twice over the fit data (the moments, then α);
/// memory O(D²). Labels are not used.
///
/// ```
/// use ndarray::{Array1, Array2, array};
/// use oodkit::detectors::{FeatureDetector, PrincipalDims, ScoreFeatures, Vim};
///
/// // Fit features spread along x, barely along y; the head reads x.
/// let fit = array![[-2.0_f32, 0.1], [-1.0, -0.1], [1.0, -0.1], [2.0, 0.1]];
/// let vim = Vim::new(PrincipalDims::Count(1))?
///     .with_head(array![[1.0_f32, 0.0], [-1.0, 0.0]], Array1::zeros(2))?
///     .fit_features(fit.view(), Array1::zeros(4).view())?;
/// let scores = vim.score_features(array![[1.0_f32, 0.0], [1.0, 3.0]].view())?;
/// // α = mean max-logit / mean residual = 1.5 / 0.1; (1, 3) is 3 off the axis.
/// assert_eq!(vim.principal_dims(), 1);
/// assert!((vim.alpha() - 15.0).abs() < 1e-3);
/// assert!((scores[1] - scores[0] - 15.0 * 3.0).abs() < 1e-3);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases**: fit features with no residual off the principal
/// subspace are an error at fit (α undefined); identical fit features have
/// a residual of rounding size only, so α is enormous and the scores are
/// rounding noise (useless: fit on varied data).
#[derive(Debug, Clone, PartialEq)]
pub struct Vim {
    dims: PrincipalDims,
    head: Option<(Array2<f32>, Array1<f32>)>,
    options: FeatureOptions,
}

impl Default for Vim {
    /// The dimensions explaining 99% of the variance (the Python
    /// toolkit's default), on the penultimate layer.
    fn default() -> Self {
        Vim {
            dims: PrincipalDims::Explained(0.99),
            head: None,
            options: FeatureOptions::default(),
        }
    }
}

impl Vim {
    /// ViM keeping `dims` principal dimensions.
    pub fn new(dims: PrincipalDims) -> Result<Self> {
        match dims {
            PrincipalDims::Count(0) => {
                return Err(Error::invalid(
                    "principal_dims",
                    0,
                    "keep at least one dimension",
                ));
            }
            PrincipalDims::Explained(f) if !(f > 0.0 && f < 1.0) => {
                return Err(Error::invalid(
                    "principal_dims",
                    f,
                    "a fraction of explained variance must be in (0, 1)",
                ));
            }
            _ => {}
        }
        Ok(Vim {
            dims,
            ..Vim::default()
        })
    }

    /// The last layer's weights `(classes, D)` and bias `(classes,)`,
    /// used instead of the model's. Errors when their shapes disagree.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        check_head(&weights, &bias, "ViM head weights and bias")?;
        self.head = Some((weights, bias));
        Ok(self)
    }

    /// The principal dimensions asked for.
    pub fn principal_dims(&self) -> PrincipalDims {
        self.dims
    }
}

impl FeatureDetector for Vim {
    type Fitter = VimFitter;
    type Fitted = FittedVim;

    fn name(&self) -> &'static str {
        "ViM"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, dim: usize, model: Option<&dyn Model>) -> Result<VimFitter> {
        let (weights, bias) = match (&self.head, model) {
            (Some(head), _) => head.clone(),
            (None, Some(model)) => last_layer_of(model, "ViM")?,
            (None, None) => {
                return Err(Error::Unsupported {
                    what: "ViM on precomputed features without the last layer".into(),
                    hint: "give it the head: Vim::new(..)?.with_head(weights, bias)".into(),
                });
            }
        };
        check_head(&weights, &bias, "ViM head weights and bias")?;
        if weights.ncols() != dim {
            return Err(Error::ShapeMismatch {
                what: "ViM head weights vs the features".into(),
                expected: format!("(num_classes, {dim})"),
                found: format!("{:?}", weights.shape()),
            });
        }
        let w = weights.mapv(f64::from);
        let origin = -pinv(&w, "ViM head weights")?.dot(&bias.mapv(f64::from));
        Ok(VimFitter {
            dims: self.dims,
            moments: ClassMoments::new(dim, false),
            origin,
            weights,
            bias,
            subspace: None,
        })
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// Streams the second moment of one layer about the head's origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "VimForm")]
pub struct VimFitter {
    dims: PrincipalDims,
    moments: ClassMoments,
    origin: Array1<f64>,
    weights: Array2<f32>,
    bias: Array1<f32>,
    /// The subspace once the first pass has ended; the second sums into it.
    subspace: Option<FittedVim>,
}

/// A [`VimFitter`] in a partial fit's file: the first pass's moments and
/// the head's origin and weights; once the first pass has ended, the
/// residual basis and the second pass's sums.
#[derive(Serialize, Deserialize)]
struct VimForm {
    principal_dims: PrincipalDims,
    #[serde(flatten)]
    moments: ClassMoments,
    #[serde(with = "array")]
    origin: Array1<f64>,
    #[serde(rename = "head_weights", with = "array")]
    weights: Array2<f32>,
    #[serde(rename = "head_bias", with = "array")]
    bias: Array1<f32>,
    #[serde(
        with = "array::optional",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    residual: Option<Array2<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    second_pass_sums: Option<(f64, f64)>,
}

impl Serialize for VimFitter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        VimForm {
            principal_dims: self.dims,
            moments: self.moments.clone(),
            origin: self.origin.clone(),
            weights: self.weights.clone(),
            bias: self.bias.clone(),
            residual: self.subspace.as_ref().map(|s| s.residual.clone()),
            second_pass_sums: self.subspace.as_ref().map(|s| (s.logit_sum, s.norm_sum)),
        }
        .serialize(serializer)
    }
}

impl TryFrom<VimForm> for VimFitter {
    type Error = Error;

    fn try_from(form: VimForm) -> Result<Self> {
        Vim::new(form.principal_dims)?;
        let width = form.moments.dim();
        check_head(&form.weights, &form.bias, "ViM's stored head")?;
        check_len("its head's rows", form.weights.ncols(), width)?;
        check_len("its origin", form.origin.len(), width)?;
        let subspace = match (form.residual, form.second_pass_sums) {
            (None, None) => None,
            (Some(residual), Some((logit_sum, norm_sum))) => {
                check_residual(width, &residual, "ViM")?;
                Some(FittedVim {
                    origin: form.origin.clone(),
                    residual,
                    weights: form.weights.clone(),
                    bias: form.bias.clone(),
                    alpha: f64::NAN,
                    logit_sum,
                    norm_sum,
                    form: Derived::default(),
                })
            }
            _ => {
                return Err(Error::custom(
                    "its second pass is incomplete (the residual basis and the second pass's \
                     sums go together)",
                ));
            }
        };
        Ok(VimFitter {
            dims: form.principal_dims,
            moments: form.moments,
            origin: form.origin,
            weights: form.weights,
            bias: form.bias,
            subspace,
        })
    }
}

impl PartialState for VimFitter {
    const DETECTORS: &'static [&'static str] = &["ViM"];

    fn detector(&self) -> &'static str {
        "ViM"
    }

    fn width(&self) -> usize {
        self.moments.dim()
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl LayerFitter for VimFitter {
    type Fitted = FittedVim;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        let all = Array1::zeros(batch.features.nrows());
        self.moments.update(batch.features, all.view());
        Ok(())
    }

    /// The subspace, from the first pass; α needs a second.
    fn end_first_pass(&mut self) -> Result<bool> {
        let residual = residual_basis(&self.moments, &self.origin, self.dims, "ViM")?;
        self.subspace = Some(FittedVim {
            origin: self.origin.clone(),
            residual,
            weights: self.weights.clone(),
            bias: self.bias.clone(),
            alpha: f64::NAN,
            logit_sum: 0.0,
            norm_sum: 0.0,
            form: Derived::default(),
        });
        Ok(true)
    }

    /// Σ max-logit and Σ residual norm of the fit data.
    fn update_second(&mut self, batch: &LayerBatch) -> Result<()> {
        let subspace = self.subspace.as_mut().ok_or_else(first_pass_missing)?;
        let norms = subspace.residual_norms(batch.features);
        let logits = subspace.logits(batch);
        let max_logits: f64 = logits
            .rows()
            .into_iter()
            .map(|r| f64::from(r.iter().copied().fold(f32::NEG_INFINITY, f32::max)))
            .sum();
        subspace.logit_sum += max_logits;
        subspace.norm_sum += norms.sum();
        Ok(())
    }

    /// First pass: the moments merge. Second pass (clones of one merged
    /// fitter whose first pass ended): the sums over the subspace add.
    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("ViM", "principal dimensions", &self.dims, &other.dims)?;
        merge_check(
            "ViM",
            "heads",
            &(&self.weights, &self.bias),
            &(&other.weights, &other.bias),
        )?;
        merge_check(
            "ViM",
            "feature widths",
            &self.moments.dim(),
            &other.moments.dim(),
        )?;
        match (&mut self.subspace, other.subspace) {
            (None, None) => {
                self.moments.absorb(other.moments);
                Ok(())
            }
            (Some(mine), Some(theirs)) => {
                if mine.residual != theirs.residual || mine.origin != theirs.origin {
                    return Err(cannot_merge(
                        "ViM",
                        "their second passes started from different first passes (give each \
                         shard a clone of the merged fitter whose first pass ended)",
                    ));
                }
                mine.logit_sum += theirs.logit_sum;
                mine.norm_sum += theirs.norm_sum;
                Ok(())
            }
            _ => Err(cannot_merge(
                "ViM",
                "one has ended its first pass and the other has not",
            )),
        }
    }

    /// α = Σ max-logit / Σ residual norm.
    fn finish(self) -> Result<FittedVim> {
        let mut fitted = self.subspace.ok_or_else(first_pass_missing)?;
        let (logit_sum, norm_sum) = (fitted.logit_sum, fitted.norm_sum);
        fitted.alpha = logit_sum / norm_sum;
        if !(norm_sum > 0.0 && fitted.alpha.is_finite()) {
            return Err(Error::invalid(
                "principal_dims",
                "the fitted subspace",
                "the fit features have no residual off the principal subspace (α undefined): \
                 keep fewer principal dimensions",
            ));
        }
        Ok(fitted)
    }
}

/// ViM's fitter used out of order (a bug of the fitting driver, not of
/// the caller's data).
fn first_pass_missing() -> Error {
    Error::custom("ViM's second fitting pass ran before the first ended")
}

/// What ViM learns of a layer: the origin u = −W⁺b, a basis of the
/// residual space, the head (W, b) for precomputed features, and α.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedVim {
    #[serde(with = "array")]
    origin: Array1<f64>,
    #[serde(with = "array")]
    residual: Array2<f64>,
    #[serde(rename = "head_weights", with = "array")]
    weights: Array2<f32>,
    #[serde(rename = "head_bias", with = "array")]
    bias: Array1<f32>,
    alpha: f64,
    /// The second fitting pass's Σ max-logit and Σ residual norm (α is
    /// their ratio; kept so the file holds what α came from).
    #[serde(rename = "calibration_logit_sum")]
    logit_sum: f64,
    #[serde(rename = "calibration_norm_sum")]
    norm_sum: f64,
    /// The origin and residual basis in `f32`, for scoring.
    #[serde(skip)]
    form: Derived<(Array1<f32>, Array2<f32>)>,
}

impl FittedVim {
    /// The number of principal dimensions kept.
    pub fn principal_dims(&self) -> usize {
        self.origin.len() - self.residual.ncols()
    }

    /// The scale α of the residual norm.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    fn residual_norms(&self, features: ArrayView2<f32>) -> Array1<f64> {
        let centred = features.mapv(f64::from) - &self.origin;
        let coordinates = gemm(centred.view(), self.residual.view(), false);
        coordinates.map_axis(Axis(1), |r| r.dot(&r).sqrt())
    }

    /// The input's logits, or the head's on its features.
    fn logits<'a>(&self, batch: &LayerBatch<'a>) -> CowArray<'a, f32, Ix2> {
        match batch.logits {
            Some(logits) => logits.into(),
            None => (gemm(batch.features, self.weights.view(), true) + &self.bias).into(),
        }
    }
}

impl ScoreFeatures for FittedVim {
    fn width(&self) -> usize {
        self.origin.len()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        // In f32: the fit's statistics and α were found in f64; the scores
        // need the residual norms only to f32's precision.
        let (origin, residual) = self.form.get_or_try(|| {
            Ok((
                self.origin.mapv(|v| v as f32),
                self.residual.mapv(|v| v as f32),
            ))
        })?;
        let centred = &batch.features - origin;
        let coordinates = gemm(centred.view(), residual.view(), false);
        let logits = self.logits(batch);
        Ok(logits
            .rows()
            .into_iter()
            .zip(coordinates.rows())
            .enumerate()
            .map(|(i, (row, coordinates))| {
                let mut r = f64::from(coordinates.dot(&coordinates).sqrt());
                if !r.is_finite() {
                    // Overflowed in f32 (features near f32::MAX): in f64.
                    r = self.residual_norms(batch.features.slice(s![i..=i, ..]))[0];
                }
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = f64::from(max)
                    + row
                        .iter()
                        .map(|&v| f64::from(v - max).exp())
                        .sum::<f64>()
                        .ln();
                (self.alpha * r - lse) as f32
            })
            .collect())
    }
}

impl StoredState for FittedVim {
    const KINDS: &'static [&'static str] = &["ViM"];

    fn state_kind(&self) -> &'static str {
        "ViM"
    }

    fn validate(&self) -> Result<()> {
        let width = self.origin.len();
        check_residual(width, &self.residual, "ViM")?;
        if self.weights.ncols() != width {
            return Err(Error::custom(format!(
                "ViM's last layer is {:?} for {width} features",
                self.weights.shape()
            )));
        }
        check_head(&self.weights, &self.bias, "ViM's stored last layer")
    }
}

/// ViM in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "ViM",
    "vim",
    "virtual logit matching, ViM (features and the last layer's weights)",
    &[DIMS],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features, Capability::LastLayer],
    },
    |p| {
        let vim = match principal_dims(p)? {
            Some(dims) => Vim::new(dims)?,
            None => Vim::default(),
        };
        built_features(on_layers(vim, p)?)
    },
    load_features::<FittedVim>,
);
