//! Residual: the norm of a feature off the in-distribution principal
//! subspace (the residual part of ViM, Wang et al., CVPR 2022).

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::PartialState;
use super::head::Head;
use super::moments::ClassMoments;
use super::partial::check_len;
use super::stored::StoredState;
use super::subspace::{check_residual, residual_basis};
use super::traits::merge_check;
use super::{
    FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, PrincipalDims, ScoreFeatures,
};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, DIMS, Needs, Registration, built_features, load_features, on_layers, principal_dims,
};
use crate::error::Result;
use crate::linalg::{gemm, pinv};
use crate::model::Model;

/// Residual: features f of the penultimate layer, seen from the origin
/// u = −W⁺b of the last layer, have a principal subspace (the top
/// eigenvectors of (1/N) Σ (f − u)(f − u)ᵀ over the fit data); the score is
/// the norm of f − u projected off it, ‖(f − u)·R‖ (higher = more OOD). It is
/// [`Vim`](super::Vim) without the scaled energy term.
///
/// OpenOOD v1.5 (`configs/postprocessors/residual.yml`) keeps a fixed 512
/// principal dimensions, which needs features wider than 512 (its ImageNet
/// ResNet-50 has 2048; CIFAR ResNets have 64 to 512). The default here is
/// this crate's ViM default instead, the dimensions explaining 99% of the
/// variance; `Residual::new(PrincipalDims::Count(512))` is OpenOOD's. The
/// head (for u) comes from the model or from [`with_head`](Self::with_head),
/// which [`fit_features`](FeatureDetector::fit_features) needs. Fitting
/// streams once; memory O(D²). Labels are not used.
///
/// ```
/// use ndarray::{Array1, array};
/// use oodkit::detectors::{FeatureDetector, PrincipalDims, Residual, ScoreFeatures};
///
/// // Fit features along x (the head's origin is 0): the residual space is y.
/// let fit = array![[-2.0_f32, 0.0], [-1.0, 0.0], [1.0, 0.0], [2.0, 0.0]];
/// let residual = Residual::new(PrincipalDims::Count(1))?
///     .with_head(array![[1.0_f32, 0.0], [-1.0, 0.0]], Array1::zeros(2))?
///     .fit_features(fit.view(), Array1::zeros(4).view())?;
/// let s = residual.score_features(array![[5.0_f32, 0.0], [1.0, -3.0]].view())?;
/// assert!(s[0].abs() < 1e-6 && (s[1] - 3.0).abs() < 1e-6);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Residual {
    dims: PrincipalDims,
    head: Option<Head>,
    options: FeatureOptions,
}

impl Default for Residual {
    /// The dimensions explaining 99% of the variance (see above for
    /// OpenOOD's 512), on the penultimate layer.
    fn default() -> Self {
        Residual {
            dims: PrincipalDims::Explained(0.99),
            head: None,
            options: FeatureOptions::default(),
        }
    }
}

impl Residual {
    /// Residual keeping `dims` principal dimensions (as [`Vim::new`](super::Vim::new)).
    pub fn new(dims: PrincipalDims) -> Result<Self> {
        super::Vim::new(dims)?;
        Ok(Residual {
            dims,
            ..Residual::default()
        })
    }

    /// The last layer's weights `(classes, D)` and bias `(classes,)`, used
    /// instead of the model's.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        self.head = Some(Head::new(weights, bias, "Residual")?);
        Ok(self)
    }

    /// The principal dimensions asked for.
    pub fn principal_dims(&self) -> PrincipalDims {
        self.dims
    }
}

impl FeatureDetector for Residual {
    type Fitter = ResidualFitter;
    type Fitted = FittedResidual;

    fn name(&self) -> &'static str {
        "Residual"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, model: Option<&dyn Model>) -> Result<ResidualFitter> {
        let head = Head::resolve(
            self.head.as_ref(),
            model,
            width,
            "Residual",
            "Residual::new(..)?",
        )?;
        let origin = -pinv(&head.weights.mapv(f64::from), "Residual head weights")?
            .dot(&head.bias.mapv(f64::from));
        Ok(ResidualFitter {
            dims: self.dims,
            moments: ClassMoments::new(width, false),
            origin,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResidualFitter {
    #[serde(rename = "principal_dims")]
    dims: PrincipalDims,
    #[serde(flatten)]
    moments: ClassMoments,
    #[serde(with = "array")]
    origin: Array1<f64>,
}

impl PartialState for ResidualFitter {
    const DETECTORS: &'static [&'static str] = &["Residual"];

    fn detector(&self) -> &'static str {
        "Residual"
    }

    fn width(&self) -> usize {
        self.moments.dim()
    }

    fn validate(&self) -> Result<()> {
        Residual::new(self.dims)?;
        check_len("its origin", self.origin.len(), self.moments.dim())
    }
}

impl LayerFitter for ResidualFitter {
    type Fitted = FittedResidual;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        let all = Array1::zeros(batch.features.nrows());
        self.moments.update(batch.features, all.view());
        Ok(())
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("Residual", "principal dimensions", &self.dims, &other.dims)?;
        merge_check("Residual", "origins", &self.origin, &other.origin)?;
        merge_check(
            "Residual",
            "feature widths",
            &self.moments.dim(),
            &other.moments.dim(),
        )?;
        self.moments.absorb(other.moments);
        Ok(())
    }

    fn finish(self) -> Result<FittedResidual> {
        let residual = residual_basis(&self.moments, &self.origin, self.dims, "Residual")?;
        Ok(FittedResidual {
            origin: self.origin,
            residual,
        })
    }
}

/// What Residual learns of a layer: the origin u and a basis of the
/// residual space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedResidual {
    #[serde(with = "array")]
    origin: Array1<f64>,
    #[serde(with = "array")]
    residual: Array2<f64>,
}

impl FittedResidual {
    /// The number of principal dimensions kept.
    pub fn principal_dims(&self) -> usize {
        self.origin.len() - self.residual.ncols()
    }

    fn norms(&self, features: ArrayView2<f32>) -> Array1<f64> {
        let centred = features.mapv(f64::from) - &self.origin;
        let coordinates = gemm(centred.view(), self.residual.view(), false);
        coordinates.map_axis(Axis(1), |r| r.dot(&r).sqrt())
    }
}

impl ScoreFeatures for FittedResidual {
    fn width(&self) -> usize {
        self.origin.len()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        Ok(self.norms(batch.features).mapv(|r| r as f32))
    }
}

impl StoredState for FittedResidual {
    const KINDS: &'static [&'static str] = &["Residual"];

    fn state_kind(&self) -> &'static str {
        "Residual"
    }

    fn validate(&self) -> Result<()> {
        check_residual(self.origin.len(), &self.residual, "Residual")
    }
}

/// Residual in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "Residual",
    "residual",
    "Residual: the norm off the principal subspace of the fit features (features)",
    &[DIMS],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features],
    },
    |p| {
        let residual = match principal_dims(p)? {
            Some(dims) => Residual::new(dims)?,
            None => Residual::default(),
        };
        built_features(on_layers(residual, p)?)
    },
    load_features::<FittedResidual>,
);
