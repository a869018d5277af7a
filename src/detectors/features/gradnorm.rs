//! GradNorm, the norm of the last layer's gradient (Huang et al., NeurIPS 2021).

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::PartialState;
use super::head::Head;
use super::stored::StoredState;
use super::traits::merge_check;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::registry::{
    Capability, Needs, Registration, built_features, load_features, on_layers,
};
use crate::error::Result;
use crate::model::{Model, last_layer_of};

/// GradNorm: the L1 norm of the gradient, with respect to the last layer's
/// weights W, of the cross-entropy between the softmax p = softmax(W f + b)
/// and all-ones targets, L = −Σ_c log p_c. Its gradient is
/// ∂L/∂W = (C·p − 1) fᵀ, so the norm is a product, computed in closed form
/// (no backward pass): ‖∂L/∂W‖₁ = (Σ_k |C·p_k − 1|) · ‖f‖₁. In-distribution
/// inputs have the larger norm; the score is its negation (higher = more
/// OOD).
///
/// As OpenOOD v1.5's postprocessor (`gradnorm_postprocessor.py`: all-ones
/// targets); the paper's uniform targets 1/C give the same norm divided by
/// C (the same order). It has no parameter and learns nothing of the data:
/// fitting through a model needs no fit data (`fit(&model, None)`) and
/// only reads the head
/// ([`LastLayer::head_parameters`](crate::model::LastLayer::head_parameters)(crate::model::LastLayer::head_parameters));
/// on precomputed features give it with [`with_head`](Self::with_head).
/// The logits are the head's on the features.
///
/// ```
/// use ndarray::{Array1, array};
/// use oodkit::detectors::{FeatureDetector, GradNorm, ScoreFeatures};
///
/// let grad = GradNorm::default()
///     .with_head(array![[1.0_f32, 0.0], [0.0, 1.0]], Array1::zeros(2))?
///     .fit_features(array![[0.0_f32, 0.0]].view(), Array1::zeros(1).view())?;
/// let s = grad.score_features(array![[1.0_f32, 1.0], [2.0, 0.0]].view())?;
/// // (1, 1): p = (½, ½), C·p − 1 = 0: no gradient at all.
/// assert_eq!(s[0], 0.0);
/// // (2, 0): p₀ = e²/(e² + 1); |2p₀ − 1| + |2p₁ − 1| = 2·tanh(1), times ‖f‖₁ = 2.
/// assert!((f64::from(s[1]) + 4.0 * 1.0_f64.tanh()).abs() < 1e-5);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GradNorm {
    head: Option<Head>,
    options: FeatureOptions,
}

impl GradNorm {
    /// GradNorm on the penultimate layer (it has no parameter).
    pub fn new() -> Self {
        GradNorm::default()
    }

    /// The last layer's weights `(classes, D)` and bias `(classes,)`, used
    /// instead of the model's.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        self.head = Some(Head::new(weights, bias, "GradNorm")?);
        Ok(self)
    }
}

impl FeatureDetector for GradNorm {
    type Fitter = GradNormFitter;
    type Fitted = FittedGradNorm;

    fn name(&self) -> &'static str {
        "GradNorm"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, model: Option<&dyn Model>) -> Result<GradNormFitter> {
        let head = Head::resolve(
            self.head.as_ref(),
            model,
            width,
            "GradNorm",
            "GradNorm::new()",
        )?;
        Ok(GradNormFitter { head })
    }

    fn fit_without_data(&self, model: &dyn Model) -> Option<Result<FittedGradNorm>> {
        let head = match &self.head {
            Some(head) => Ok(head.clone()),
            None => last_layer_of(model, "GradNorm").and_then(|(w, b)| Head::new(w, b, "GradNorm")),
        };
        Some(head.map(|head| FittedGradNorm { head }))
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// Holds the head; the fit batches only confirm the width.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradNormFitter {
    #[serde(flatten)]
    head: Head,
}

impl PartialState for GradNormFitter {
    const DETECTORS: &'static [&'static str] = &["GradNorm"];

    fn detector(&self) -> &'static str {
        "GradNorm"
    }

    fn width(&self) -> usize {
        self.head.width()
    }

    fn validate(&self) -> Result<()> {
        self.head.validate()
    }
}

impl LayerFitter for GradNormFitter {
    type Fitted = FittedGradNorm;

    fn update(&mut self, _batch: &LayerBatch) -> Result<()> {
        Ok(())
    }

    /// Nothing is gathered: the heads must agree.
    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("GradNorm", "heads", &self.head, &other.head)
    }

    fn finish(self) -> Result<FittedGradNorm> {
        Ok(FittedGradNorm { head: self.head })
    }
}

/// What GradNorm keeps of a layer: the last layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedGradNorm {
    #[serde(flatten)]
    head: Head,
}

impl ScoreFeatures for FittedGradNorm {
    fn width(&self) -> usize {
        self.head.width()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let logits = self.head.logits(batch.features);
        let classes = self.head.classes() as f64;
        Ok(logits
            .rows()
            .into_iter()
            .zip(batch.features.rows())
            .map(|(l, f)| {
                let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f64> = l.iter().map(|&v| f64::from(v - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                let logit_grad: f64 = exps.iter().map(|e| (classes * e / total - 1.0).abs()).sum();
                let l1: f64 = f.iter().map(|&v| f64::from(v).abs()).sum();
                (-(logit_grad * l1)) as f32
            })
            .collect())
    }
}

impl StoredState for FittedGradNorm {
    const KINDS: &'static [&'static str] = &["GradNorm"];

    fn state_kind(&self) -> &'static str {
        "GradNorm"
    }

    fn validate(&self) -> Result<()> {
        self.head.validate()
    }
}

/// GradNorm in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "GradNorm",
    "gradnorm",
    "GradNorm: the norm of the last layer's gradient (features and the last layer; needs no fit data)",
    &[],
    Needs {
        fit_data: false,
        labels: false,
        capabilities: &[Capability::Features, Capability::LastLayer],
    },
    |p| built_features(on_layers(GradNorm::new(), p)?),
    load_features::<FittedGradNorm>,
);
