//! NCI, neural collapse inspired detection (Liu & Qin, CVPR 2025).

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::PartialState;
use super::head::{Head, argmax_row};
use super::moments::RunningMean;
use super::neighbours::distance;
use super::stored::StoredState;
use super::traits::merge_check;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, Needs, Param, Registration, built_features, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::model::Model;

/// NCI: in-distribution features, centred on the mean fit feature μ, point
/// along the weight vector w_p of their predicted class p (neural
/// collapse); the score adds an L1 norm term and is negated so that
/// higher = more OOD:
/// score = −( w_p · (f − μ) / ‖f − μ‖ + α ‖f‖₁ ).
///
/// As OpenOOD v1.5's postprocessor (`nci_postprocessor.py`), default
/// α = 10⁻⁴ (`configs/postprocessors/nci.yml`). Through a model the
/// prediction is the model's; on precomputed features the head's. The head
/// comes from the model or from [`with_head`](Self::with_head), which
/// [`fit_features`](FeatureDetector::fit_features) needs. Fitting streams
/// once (μ); labels are not used.
///
/// ```
/// use ndarray::{Array1, array};
/// use oodkit::detectors::{FeatureDetector, Nci, ScoreFeatures};
///
/// let fit = array![[1.0_f32, 1.0], [-1.0, -1.0]]; // mean (0, 0)
/// let nci = Nci::new(0.5)?
///     .with_head(array![[2.0_f32, 0.0], [0.0, 2.0]], Array1::zeros(2))?
///     .fit_features(fit.view(), Array1::zeros(2).view())?;
/// // (3, 4) is predicted class 1: w₁·f/‖f‖ = 8/5, plus 0.5 · 7.
/// let s = nci.score_features(array![[3.0_f32, 4.0]].view())?;
/// assert!((s[0] + (1.6 + 3.5)).abs() < 1e-5);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate case**: a feature exactly at μ has no direction; its
/// alignment counts as 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Nci {
    alpha: f64,
    head: Option<Head>,
    options: FeatureOptions,
}

impl Default for Nci {
    /// α = 10⁻⁴ (OpenOOD's default), on the penultimate layer.
    fn default() -> Self {
        Nci {
            alpha: 1e-4,
            head: None,
            options: FeatureOptions::default(),
        }
    }
}

impl Nci {
    /// NCI with weight `alpha` (finite, ≥ 0) on the L1 norm.
    pub fn new(alpha: f64) -> Result<Self> {
        if !(alpha >= 0.0 && alpha.is_finite()) {
            return Err(Error::invalid(
                "alpha",
                alpha,
                "the weight of the L1 norm must be finite and ≥ 0 (OpenOOD uses 1e-4)",
            ));
        }
        Ok(Nci {
            alpha,
            ..Nci::default()
        })
    }

    /// The last layer's weights `(classes, D)` and bias `(classes,)`, used
    /// instead of the model's.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        self.head = Some(Head::new(weights, bias, "NCI")?);
        Ok(self)
    }

    /// The weight of the L1 norm term.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
}

impl FeatureDetector for Nci {
    type Fitter = NciFitter;
    type Fitted = FittedNci;

    fn name(&self) -> &'static str {
        "NCI"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, model: Option<&dyn Model>) -> Result<NciFitter> {
        let head = Head::resolve(self.head.as_ref(), model, width, "NCI", "Nci::new(..)?")?;
        Ok(NciFitter {
            alpha: self.alpha,
            head,
            mean: RunningMean::new(width),
        })
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// Streams the mean feature of one layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NciFitter {
    alpha: f64,
    #[serde(flatten)]
    head: Head,
    #[serde(flatten)]
    mean: RunningMean,
}

impl PartialState for NciFitter {
    const DETECTORS: &'static [&'static str] = &["NCI"];

    fn detector(&self) -> &'static str {
        "NCI"
    }

    fn width(&self) -> usize {
        self.head.width()
    }

    fn validate(&self) -> Result<()> {
        Nci::new(self.alpha)?;
        self.head.validate()?;
        self.mean.validate(self.head.width())
    }
}

impl LayerFitter for NciFitter {
    type Fitted = FittedNci;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        self.mean.update(batch.features);
        Ok(())
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("NCI", "alphas", &self.alpha, &other.alpha)?;
        merge_check("NCI", "heads", &self.head, &other.head)?;
        self.mean.absorb(other.mean);
        Ok(())
    }

    fn finish(self) -> Result<FittedNci> {
        Ok(FittedNci {
            alpha: self.alpha,
            mean: self.mean.finish("NCI")?,
            head: self.head,
        })
    }
}

/// What NCI learns of a layer: the mean fit feature, the last layer, α.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedNci {
    alpha: f64,
    #[serde(with = "array")]
    mean: Array1<f64>,
    #[serde(flatten)]
    head: Head,
}

impl FittedNci {
    /// The mean fit feature μ.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }
}

impl ScoreFeatures for FittedNci {
    fn width(&self) -> usize {
        self.mean.len()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let logits = self.head.logits_of(batch);
        Ok(logits
            .rows()
            .into_iter()
            .zip(batch.features.rows())
            .map(|(l, f)| {
                let w = self.head.weights.row(argmax_row(l));
                let norm = distance(f, Some(&self.mean));
                let alignment = if norm > 0.0 {
                    f.iter()
                        .zip(&self.mean)
                        .zip(w)
                        .map(|((&v, &m), &w)| (f64::from(v) - m) * f64::from(w))
                        .sum::<f64>()
                        / norm
                } else {
                    0.0
                };
                let l1: f64 = f.iter().map(|&v| f64::from(v).abs()).sum();
                (-(alignment + self.alpha * l1)) as f32
            })
            .collect())
    }
}

impl StoredState for FittedNci {
    const KINDS: &'static [&'static str] = &["NCI"];

    fn state_kind(&self) -> &'static str {
        "NCI"
    }

    fn validate(&self) -> Result<()> {
        if self.alpha < 0.0 {
            return Err(Error::custom(format!(
                "NCI's alpha {} is negative",
                self.alpha
            )));
        }
        self.head.validate_with(self.mean.len(), "NCI's mean")
    }
}

/// NCI in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "NCI",
    "nci",
    "NCI: alignment with the predicted class's weights plus an L1 norm (features and the last layer)",
    &[Param {
        name: "alpha",
        doc: "the weight of the L1 norm [default: 0.0001]",
    }],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features, Capability::LastLayer],
    },
    |p| {
        let nci = match p.number("alpha")? {
            Some(a) => Nci::new(a)?,
            None => Nci::default(),
        };
        built_features(on_layers(nci, p)?)
    },
    load_features::<FittedNci>,
);
