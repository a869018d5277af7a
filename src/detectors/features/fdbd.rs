//! fDBD, feature distance to the decision boundaries (Liu & Qin, ICML 2024).

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
    Capability, Needs, Registration, built_features, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::model::Model;

/// What fDBD divides the distances to the decision boundaries by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdbdNormalizer {
    /// ‖f − μ‖, the distance to the mean fit feature (the paper's, and
    /// OpenOOD's default).
    DistanceToMean,
    /// ‖f‖, the feature norm (OpenOOD's other setting).
    FeatureNorm,
}

/// fDBD: the distance of a feature f to the decision boundary between its
/// predicted class p and another class j of a linear last layer is
/// |l_p − l_j| / ‖w_p − w_j‖ (l the logits, w the rows of W); the score is
/// their sum over j ≠ p divided by ‖f − μ‖ (μ the mean fit feature), and
/// negated so that higher = more OOD:
/// score = −Σ_{j≠p} |l_p − l_j| / ‖w_p − w_j‖ / ‖f − μ‖.
///
/// As OpenOOD v1.5's postprocessor (`fdbd_postprocessor.py`, defaults
/// `distance_as_normalizer: True`): the distances are summed (the paper
/// averages them over the C − 1 other classes: the same order, C − 1 times
/// smaller), and [`FdbdNormalizer::FeatureNorm`] divides by ‖f‖ instead.
/// Through a model the logits are the model's; on precomputed features the
/// head's. The head (its weights give the boundaries) comes from the model
/// or from [`with_head`](Self::with_head), which
/// [`fit_features`](FeatureDetector::fit_features) needs. Fitting streams
/// once (μ); labels are not used.
///
/// ```
/// use ndarray::{Array1, array};
/// use oodkit::detectors::{Fdbd, FeatureDetector, ScoreFeatures};
///
/// // Two classes split by x = 0: the boundary is 2|x| / ‖(2, 0)‖ = |x| away.
/// let fit = array![[-1.0_f32, 0.0], [1.0, 0.0]]; // mean (0, 0)
/// let fdbd = Fdbd::default()
///     .with_head(array![[1.0_f32, 0.0], [-1.0, 0.0]], Array1::zeros(2))?
///     .fit_features(fit.view(), Array1::zeros(2).view())?;
/// let s = fdbd.score_features(array![[3.0_f32, 0.0], [3.0, 4.0]].view())?;
/// // (3, 0): 3 / 3; (3, 4): 3 / 5, nearer its boundary for its distance.
/// assert!((s[0] + 1.0).abs() < 1e-6 && (s[1] + 0.6).abs() < 1e-6);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases**: one class (no boundary) and two classes with the
/// same weights (no boundary between them) are errors at fit; a feature
/// exactly at the normalizer's centre scores −f32::MAX (as in-distribution
/// as can be).
#[derive(Debug, Clone, PartialEq)]
pub struct Fdbd {
    normalizer: FdbdNormalizer,
    head: Option<Head>,
    options: FeatureOptions,
}

impl Default for Fdbd {
    /// The distance to the mean fit feature as normalizer (OpenOOD's
    /// default), on the penultimate layer.
    fn default() -> Self {
        Fdbd {
            normalizer: FdbdNormalizer::DistanceToMean,
            head: None,
            options: FeatureOptions::default(),
        }
    }
}

impl Fdbd {
    /// fDBD normalised by `normalizer`.
    pub fn new(normalizer: FdbdNormalizer) -> Self {
        Fdbd {
            normalizer,
            ..Fdbd::default()
        }
    }

    /// The last layer's weights `(classes, D)` and bias `(classes,)`, used
    /// instead of the model's.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        self.head = Some(Head::new(weights, bias, "fDBD")?);
        Ok(self)
    }

    /// The normalizer.
    pub fn normalizer(&self) -> FdbdNormalizer {
        self.normalizer
    }
}

impl FeatureDetector for Fdbd {
    type Fitter = FdbdFitter;
    type Fitted = FittedFdbd;

    fn name(&self) -> &'static str {
        "fDBD"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, model: Option<&dyn Model>) -> Result<FdbdFitter> {
        let head = Head::resolve(self.head.as_ref(), model, width, "fDBD", "Fdbd::default()")?;
        let denominators = boundary_scales(&head)?;
        Ok(FdbdFitter {
            normalizer: self.normalizer,
            head,
            denominators,
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

/// ‖w_p − w_j‖ for every pair of classes (1 on the diagonal, where the
/// logit difference is 0); errors on one class or on two equal rows.
fn boundary_scales(head: &Head) -> Result<Array2<f64>> {
    let c = head.classes();
    if c < 2 {
        return Err(Error::invalid(
            "head weights",
            format!("{c} class"),
            "fDBD measures distances between classes: the model needs at least 2",
        ));
    }
    let w = head.weights.mapv(f64::from);
    let mut scales = Array2::ones((c, c));
    for p in 0..c {
        for j in 0..c {
            if p == j {
                continue;
            }
            let d = (&w.row(p) - &w.row(j)).mapv(|v| v * v).sum().sqrt();
            if d == 0.0 {
                return Err(Error::invalid(
                    "head weights",
                    format!("classes {p} and {j}"),
                    "have the same weight vector: there is no decision boundary between them",
                ));
            }
            scales[[p, j]] = d;
        }
    }
    Ok(scales)
}

/// Streams the mean feature of one layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "FdbdFitterForm")]
pub struct FdbdFitter {
    normalizer: FdbdNormalizer,
    #[serde(flatten)]
    head: Head,
    /// Derived from the head: not in files.
    #[serde(skip_serializing)]
    denominators: Array2<f64>,
    #[serde(flatten)]
    mean: RunningMean,
}

/// An [`FdbdFitter`] as a partial fit's file holds it.
#[derive(Deserialize)]
struct FdbdFitterForm {
    normalizer: FdbdNormalizer,
    #[serde(flatten)]
    head: Head,
    #[serde(flatten)]
    mean: RunningMean,
}

impl TryFrom<FdbdFitterForm> for FdbdFitter {
    type Error = Error;

    fn try_from(form: FdbdFitterForm) -> Result<Self> {
        form.head.validate()?;
        form.mean.validate(form.head.width())?;
        Ok(FdbdFitter {
            normalizer: form.normalizer,
            denominators: boundary_scales(&form.head)?,
            head: form.head,
            mean: form.mean,
        })
    }
}

impl PartialState for FdbdFitter {
    const DETECTORS: &'static [&'static str] = &["fDBD"];

    fn detector(&self) -> &'static str {
        "fDBD"
    }

    fn width(&self) -> usize {
        self.head.width()
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl LayerFitter for FdbdFitter {
    type Fitted = FittedFdbd;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        self.mean.update(batch.features);
        Ok(())
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("fDBD", "normalizers", &self.normalizer, &other.normalizer)?;
        merge_check("fDBD", "heads", &self.head, &other.head)?;
        self.mean.absorb(other.mean);
        Ok(())
    }

    fn finish(self) -> Result<FittedFdbd> {
        Ok(FittedFdbd {
            normalizer: self.normalizer,
            mean: self.mean.finish("fDBD")?,
            head: self.head,
            denominators: self.denominators,
        })
    }
}

/// What fDBD learns of a layer: the mean fit feature, the last layer and
/// the distances between its class weight vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredFdbd")]
pub struct FittedFdbd {
    normalizer: FdbdNormalizer,
    #[serde(with = "array")]
    mean: Array1<f64>,
    #[serde(flatten)]
    head: Head,
    /// Derived from the head: not in files.
    #[serde(skip_serializing)]
    denominators: Array2<f64>,
}

/// What an fDBD file holds: the state without what the head gives.
#[derive(Deserialize)]
struct StoredFdbd {
    normalizer: FdbdNormalizer,
    #[serde(with = "array")]
    mean: Array1<f64>,
    #[serde(flatten)]
    head: Head,
}

impl TryFrom<StoredFdbd> for FittedFdbd {
    type Error = Error;

    fn try_from(stored: StoredFdbd) -> Result<Self> {
        stored.head.validate()?;
        Ok(FittedFdbd {
            denominators: boundary_scales(&stored.head)?,
            normalizer: stored.normalizer,
            mean: stored.mean,
            head: stored.head,
        })
    }
}

impl FittedFdbd {
    /// The mean fit feature μ.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// The normalizer.
    pub fn normalizer(&self) -> FdbdNormalizer {
        self.normalizer
    }
}

impl ScoreFeatures for FittedFdbd {
    fn width(&self) -> usize {
        self.mean.len()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let logits = self.head.logits_of(batch);
        let centre = match self.normalizer {
            FdbdNormalizer::DistanceToMean => Some(&self.mean),
            FdbdNormalizer::FeatureNorm => None,
        };
        Ok(logits
            .rows()
            .into_iter()
            .zip(batch.features.rows())
            .map(|(l, f)| {
                let p = argmax_row(l);
                let top = f64::from(l[p]);
                let sum: f64 = l
                    .iter()
                    .zip(self.denominators.row(p))
                    .map(|(&v, &d)| (top - f64::from(v)).abs() / d)
                    .sum();
                let norm = distance(f, centre);
                if norm > 0.0 {
                    (-sum / norm) as f32
                } else {
                    -f32::MAX
                }
            })
            .collect())
    }
}

impl StoredState for FittedFdbd {
    const KINDS: &'static [&'static str] = &["fDBD"];

    fn state_kind(&self) -> &'static str {
        "fDBD"
    }

    fn validate(&self) -> Result<()> {
        self.head.validate_with(self.mean.len(), "fDBD's mean")
    }
}

/// fDBD in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "fDBD",
    "fdbd",
    "fDBD: distance to the decision boundaries over distance to the mean feature (features and the last layer)",
    &[],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features, Capability::LastLayer],
    },
    |p| built_features(on_layers(Fdbd::default(), p)?),
    load_features::<FittedFdbd>,
);
