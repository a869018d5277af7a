//! VRA, variational rectified activation (Xu et al., NeurIPS 2023).

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::PartialState;
use super::head::{Head, logsumexp};
use super::quantile::quantile;
use super::stored::StoredState;
use super::traits::merge_check;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, Needs, Param, Registration, built_features, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::model::Model;

/// How VRA rectifies each activation z between the thresholds α < β.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rectification {
    /// min(max(z, α), β): OpenOOD v1.5's VRA (what its leaderboard
    /// measures), the default.
    Clip,
    /// The paper's piecewise VRA-P: 0 below α, z + γ between α and β, β
    /// above β.
    Piecewise {
        /// The shift γ of the activations kept.
        gamma: f32,
    },
}

impl Rectification {
    fn apply(self, z: f32, low: f32, high: f32) -> f32 {
        match self {
            Rectification::Clip => z.clamp(low, high),
            Rectification::Piecewise { gamma } => {
                if z < low {
                    0.0
                } else if z > high {
                    high
                } else {
                    z + gamma
                }
            }
        }
    }
}

/// VRA: the thresholds α and β are the `low` and `high` quantiles of every
/// activation of the fit data (all samples and units together); each
/// activation is rectified between them ([`Rectification`]), the last layer
/// is applied to the result, and score = −logsumexp(logits) (the energy,
/// higher = more OOD).
///
/// Defaults as OpenOOD v1.5 (`configs/postprocessors/vra.yml`): quantiles
/// 0.1 and 0.9 (its percentiles 10 and 90), [`Rectification::Clip`]. The
/// paper's VRA-P is [`with_rectification`](Self::with_rectification)`(Rectification::Piecewise { gamma })`.
/// The quantiles are exact (linear interpolation, NumPy's default), so the
/// fit keeps every fit activation until it ends: memory O(N · D) during the
/// fit, O(classes · D) after. The head comes from the model or from
/// [`with_head`](Self::with_head), which
/// [`fit_features`](FeatureDetector::fit_features) needs. Labels are not
/// used.
///
/// ```
/// use ndarray::{Array1, array};
/// use oodkit::detectors::{FeatureDetector, ScoreFeatures, Vra};
///
/// // Activations 0, 1, ..., 9: the 0.1 and 0.9 quantiles are 0.9 and 8.1.
/// let fit = Array1::range(0.0_f32, 10.0, 1.0).into_shape_with_order((5, 2))?;
/// let vra = Vra::default()
///     .with_head(array![[1.0_f32, 0.0], [0.0, 1.0]], Array1::zeros(2))?
///     .fit_features(fit.view(), Array1::zeros(5).view())?;
/// assert!((vra.thresholds().0 - 0.9).abs() < 1e-6 && (vra.thresholds().1 - 8.1).abs() < 1e-6);
/// // (100, 0) is clipped to (8.1, 0.9) before the head.
/// let s = vra.score_features(array![[100.0_f32, 0.0]].view())?;
/// let expected = -(8.1_f64.exp() + 0.9_f64.exp()).ln();
/// assert!((f64::from(s[0]) - expected).abs() < 1e-4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Vra {
    low: f64,
    high: f64,
    rectification: Rectification,
    head: Option<Head>,
    options: FeatureOptions,
}

impl Default for Vra {
    /// Quantiles 0.1 and 0.9, clipping (OpenOOD's defaults).
    fn default() -> Self {
        Vra {
            low: 0.1,
            high: 0.9,
            rectification: Rectification::Clip,
            head: None,
            options: FeatureOptions::default(),
        }
    }
}

impl Vra {
    /// VRA with thresholds at the `low` and `high` quantiles of the fit
    /// activations, 0 ≤ low < high ≤ 1.
    pub fn new(low: f64, high: f64) -> Result<Self> {
        if !(0.0 <= low && low < high && high <= 1.0) {
            return Err(Error::invalid(
                "quantiles",
                format!("({low}, {high})"),
                "need 0 ≤ low < high ≤ 1 (OpenOOD uses 0.1 and 0.9)",
            ));
        }
        Ok(Vra {
            low,
            high,
            ..Vra::default()
        })
    }

    /// How activations are rectified between the thresholds. Errors on a
    /// non-finite γ.
    pub fn with_rectification(mut self, rectification: Rectification) -> Result<Self> {
        if let Rectification::Piecewise { gamma } = rectification
            && !gamma.is_finite()
        {
            return Err(Error::invalid("gamma", gamma, "must be finite"));
        }
        self.rectification = rectification;
        Ok(self)
    }

    /// The last layer's weights `(classes, D)` and bias `(classes,)`, used
    /// instead of the model's.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        self.head = Some(Head::new(weights, bias, "VRA")?);
        Ok(self)
    }

    /// The quantiles of the thresholds.
    pub fn quantiles(&self) -> (f64, f64) {
        (self.low, self.high)
    }
}

impl FeatureDetector for Vra {
    type Fitter = VraFitter;
    type Fitted = FittedVra;

    fn name(&self) -> &'static str {
        "VRA"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, model: Option<&dyn Model>) -> Result<VraFitter> {
        let head = Head::resolve(self.head.as_ref(), model, width, "VRA", "Vra::new(..)?")?;
        Ok(VraFitter {
            low: self.low,
            high: self.high,
            rectification: self.rectification,
            head,
            values: Vec::new(),
        })
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// Keeps one layer's fit activations for the exact quantiles.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VraFitter {
    low: f64,
    high: f64,
    #[serde(rename = "piecewise_gamma", with = "piecewise_gamma")]
    rectification: Rectification,
    #[serde(flatten)]
    head: Head,
    #[serde(with = "array")]
    values: Vec<f32>,
}

impl PartialState for VraFitter {
    const DETECTORS: &'static [&'static str] = &["VRA"];

    fn detector(&self) -> &'static str {
        "VRA"
    }

    fn width(&self) -> usize {
        self.head.width()
    }

    fn validate(&self) -> Result<()> {
        Vra::new(self.low, self.high)?.with_rectification(self.rectification)?;
        self.head.validate()?;
        if !self.values.len().is_multiple_of(self.head.width()) {
            return Err(Error::custom(format!(
                "its {} activations are not rows of {} features",
                self.values.len(),
                self.head.width()
            )));
        }
        Ok(())
    }
}

impl LayerFitter for VraFitter {
    type Fitted = FittedVra;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        self.values.extend(batch.features.iter());
        Ok(())
    }

    /// The activations concatenate (the bounds are quantiles, which do
    /// not depend on the order).
    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check(
            "VRA",
            "settings",
            &(self.low, self.high, self.rectification),
            &(other.low, other.high, other.rectification),
        )?;
        merge_check("VRA", "heads", &self.head, &other.head)?;
        self.values.extend(other.values);
        Ok(())
    }

    fn finish(mut self) -> Result<FittedVra> {
        if self.values.is_empty() {
            return Err(Error::Empty {
                what: "the fit data of VRA".into(),
                hint: "fit on at least one sample".into(),
            });
        }
        let low = quantile(&mut self.values, self.low) as f32;
        let high = quantile(&mut self.values, self.high) as f32;
        Ok(FittedVra {
            low,
            high,
            rectification: self.rectification,
            head: self.head,
        })
    }
}

/// What VRA learns of a layer: the thresholds α ≤ β, the rectification,
/// and the last layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedVra {
    low: f32,
    high: f32,
    /// In files: `piecewise_gamma`, null for clipping.
    #[serde(rename = "piecewise_gamma", with = "piecewise_gamma")]
    rectification: Rectification,
    #[serde(flatten)]
    head: Head,
}

/// [`Rectification`] as the γ of VRA-P, or null for clipping.
mod piecewise_gamma {
    use super::Rectification;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(r: &Rectification, s: S) -> Result<S::Ok, S::Error> {
        match r {
            Rectification::Clip => None::<f32>.serialize(s),
            Rectification::Piecewise { gamma } => Some(*gamma).serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Rectification, D::Error> {
        Ok(match Option::<f32>::deserialize(d)? {
            None => Rectification::Clip,
            Some(gamma) => Rectification::Piecewise { gamma },
        })
    }
}

impl FittedVra {
    /// The thresholds (α, β).
    pub fn thresholds(&self) -> (f32, f32) {
        (self.low, self.high)
    }

    /// How activations are rectified.
    pub fn rectification(&self) -> Rectification {
        self.rectification
    }
}

impl ScoreFeatures for FittedVra {
    fn width(&self) -> usize {
        self.head.width()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let rectified = batch
            .features
            .mapv(|z| self.rectification.apply(z, self.low, self.high));
        let logits = self.head.logits(rectified.view());
        Ok(logits
            .rows()
            .into_iter()
            .map(|row| -logsumexp(row) as f32)
            .collect())
    }
}

impl StoredState for FittedVra {
    const KINDS: &'static [&'static str] = &["VRA"];

    fn state_kind(&self) -> &'static str {
        "VRA"
    }

    fn validate(&self) -> Result<()> {
        if self.low > self.high {
            return Err(Error::custom(format!(
                "VRA's thresholds ({}, {}) are not ordered",
                self.low, self.high
            )));
        }
        self.head.validate()
    }
}

/// VRA in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "VRA",
    "vra",
    "VRA: the energy of features clipped between two fit percentiles (features and the last layer)",
    &[
        Param {
            name: "low",
            doc: "the lower percentile [default: 0.1]",
        },
        Param {
            name: "high",
            doc: "the upper percentile [default: 0.9]",
        },
    ],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features, Capability::LastLayer],
    },
    |p| {
        let default = Vra::default();
        let vra = Vra::new(
            p.number("low")?.unwrap_or(default.low),
            p.number("high")?.unwrap_or(default.high),
        )?;
        built_features(on_layers(vra, p)?)
    },
    load_features::<FittedVra>,
);
