//! DICE, directed sparsification of the last layer (Sun & Li, ECCV 2022).

use ndarray::{Array1, Array2, Axis};
use serde::{Deserialize, Serialize};

use super::PartialState;
use super::head::{Head, logsumexp};
use super::moments::RunningMean;
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

/// DICE: each weight's contribution to the logits on in-distribution data
/// is V = W ⊙ m̄ (the last layer's weights `(classes, D)` times the mean
/// fit activation m̄, per entry); the weights whose contribution is at or
/// below the `sparsity` quantile of all of V are set to zero, and the score
/// is the energy of the sparsified layer:
/// score = −logsumexp(f·(W ⊙ M)ᵀ + b) (higher = more OOD).
///
/// Defaults as OpenOOD v1.5 (`configs/postprocessors/dice.yml`): sparsity
/// 0.9 (its `p: 90`). The quantile is linearly interpolated (NumPy's
/// `percentile`) and a weight is kept when its contribution is strictly
/// above it, as OpenOOD's postprocessor does. The logits are those of the
/// sparsified head on the features, never the model's own. The head comes
/// from the model
/// ([`LastLayer::head_parameters`](crate::model::LastLayer::head_parameters)(crate::model::LastLayer::head_parameters))
/// or from [`with_head`](Self::with_head), which
/// [`fit_features`](FeatureDetector::fit_features) needs. Fitting streams
/// once (the mean activation); memory O(classes · D). Labels are not used.
///
/// ```
/// use ndarray::{Array1, array};
/// use oodkit::detectors::{Dice, FeatureDetector, ScoreFeatures};
///
/// // Mean activation (1, 2); contributions W ⊙ m̄ = [[1, 4], [3, -2]].
/// let fit = array![[0.0_f32, 1.0], [2.0, 3.0]];
/// let dice = Dice::new(0.5)?
///     .with_head(array![[1.0_f32, 2.0], [3.0, -1.0]], Array1::zeros(2))?
///     .fit_features(fit.view(), Array1::zeros(2).view())?;
/// // The median contribution is 2: only the weights 2 (class 0) and 3 (class 1) stay.
/// assert_eq!(dice.kept(), 2);
/// let s = dice.score_features(array![[1.0_f32, 1.0]].view())?;
/// let expected = -(2.0_f64.exp() + 3.0_f64.exp()).ln();
/// assert!((f64::from(s[0]) - expected).abs() < 1e-5);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Dice {
    sparsity: f64,
    head: Option<Head>,
    options: FeatureOptions,
}

impl Default for Dice {
    /// Sparsity 0.9 (OpenOOD's `p: 90`), on the penultimate layer.
    fn default() -> Self {
        Dice {
            sparsity: 0.9,
            head: None,
            options: FeatureOptions::default(),
        }
    }
}

impl Dice {
    /// DICE dropping the weights whose contribution is at or below the
    /// `sparsity` quantile, in [0, 1).
    pub fn new(sparsity: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&sparsity) {
            return Err(Error::invalid(
                "sparsity",
                sparsity,
                "the fraction of weights dropped must be in [0, 1) (the paper uses 0.9)",
            ));
        }
        Ok(Dice {
            sparsity,
            ..Dice::default()
        })
    }

    /// The last layer's weights `(classes, D)` and bias `(classes,)`, used
    /// instead of the model's. Errors when their shapes disagree or a
    /// value is not finite.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        self.head = Some(Head::new(weights, bias, "DICE")?);
        Ok(self)
    }

    /// The fraction of weights dropped.
    pub fn sparsity(&self) -> f64 {
        self.sparsity
    }
}

impl FeatureDetector for Dice {
    type Fitter = DiceFitter;
    type Fitted = FittedDice;

    fn name(&self) -> &'static str {
        "DICE"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, model: Option<&dyn Model>) -> Result<DiceFitter> {
        let head = Head::resolve(self.head.as_ref(), model, width, "DICE", "Dice::new(..)?")?;
        Ok(DiceFitter {
            sparsity: self.sparsity,
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

/// Streams the mean activation of one layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiceFitter {
    sparsity: f64,
    #[serde(flatten)]
    head: Head,
    #[serde(flatten)]
    mean: RunningMean,
}

impl PartialState for DiceFitter {
    const DETECTORS: &'static [&'static str] = &["DICE"];

    fn detector(&self) -> &'static str {
        "DICE"
    }

    fn width(&self) -> usize {
        self.head.width()
    }

    fn validate(&self) -> Result<()> {
        Dice::new(self.sparsity)?;
        self.head.validate()?;
        self.mean.validate(self.head.width())
    }
}

impl LayerFitter for DiceFitter {
    type Fitted = FittedDice;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        self.mean.update(batch.features);
        Ok(())
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("DICE", "sparsities", &self.sparsity, &other.sparsity)?;
        merge_check("DICE", "heads", &self.head, &other.head)?;
        self.mean.absorb(other.mean);
        Ok(())
    }

    fn finish(self) -> Result<FittedDice> {
        let mean = self.mean.finish("DICE")?;
        let contributions = &self.head.weights.mapv(f64::from) * &mean.view().insert_axis(Axis(0));
        let mut all: Vec<f32> = contributions.iter().map(|&c| c as f32).collect();
        let threshold = quantile(&mut all, self.sparsity);
        let mut weights = self.head.weights.clone();
        weights.zip_mut_with(&contributions, |w, &c| {
            if (c as f32) <= threshold as f32 {
                *w = 0.0;
            }
        });
        Ok(FittedDice {
            sparsity: self.sparsity,
            mean: mean.mapv(|m| m as f32),
            threshold,
            sparse: Head {
                weights,
                bias: self.head.bias,
            },
        })
    }
}

/// What DICE learns of a layer: the mean fit activation, the contribution
/// threshold, and the sparsified last layer it scores with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedDice {
    sparsity: f64,
    #[serde(rename = "mean_activation", with = "array")]
    mean: Array1<f32>,
    threshold: f64,
    /// The last layer with the dropped weights zeroed.
    #[serde(flatten)]
    sparse: Head,
}

impl FittedDice {
    /// The mean activation of the fit data.
    pub fn mean_activation(&self) -> &Array1<f32> {
        &self.mean
    }

    /// The contribution threshold: weights at or below it were dropped.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The number of weights kept (non-zero after sparsification).
    pub fn kept(&self) -> usize {
        self.sparse.weights.iter().filter(|&&w| w != 0.0).count()
    }

    /// The sparsified weights `(classes, D)`.
    pub fn sparse_weights(&self) -> &Array2<f32> {
        &self.sparse.weights
    }
}

impl ScoreFeatures for FittedDice {
    fn width(&self) -> usize {
        self.sparse.width()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let logits = self.sparse.logits(batch.features);
        Ok(logits
            .rows()
            .into_iter()
            .map(|row| -logsumexp(row) as f32)
            .collect())
    }
}

impl StoredState for FittedDice {
    const KINDS: &'static [&'static str] = &["DICE"];

    fn state_kind(&self) -> &'static str {
        "DICE"
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(Error::custom(format!(
                "DICE's sparsity {} is not in [0, 1)",
                self.sparsity
            )));
        }
        self.sparse
            .validate_with(self.mean.len(), "DICE's mean activation")
    }
}

/// DICE in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "DICE",
    "dice",
    "DICE: the energy of the last layer sparsified by its contributions (features and the last layer)",
    &[Param {
        name: "sparsity",
        doc: "the share of weights dropped [default: 0.9]",
    }],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features, Capability::LastLayer],
    },
    |p| {
        let dice = match p.number("sparsity")? {
            Some(s) => Dice::new(s)?,
            None => Dice::default(),
        };
        built_features(on_layers(dice, p)?)
    },
    load_features::<FittedDice>,
);
