//! ODIN's input step as a plain value: ODIN takes it, and so may any
//! feature detector (Mahalanobis and SHE use it in their papers).

use ndarray::{Array2, Array4, ArrayView2, Zip};

use super::logits::tempered_exps;
use crate::error::{Error, Result};
use crate::metrics::argmax;
use crate::model::{Model, input_gradient_of};

/// One step of size ε against the gradient of each input's cross-entropy
/// with its own predicted class at temperature T:
/// x̃ = x − ε · sign(∇ₓ CE(logits(x) / T, argmax)) (Liang et al., 2018).
/// The step raises the confidence of ID inputs more than that of OOD ones.
///
/// It needs the model's input gradient
/// ([`InputGradient::input_gradient`](crate::model::InputGradient::input_gradient)); with ε = 0 there is no step and no
/// gradient, on any model.
///
/// ```
/// use oodkit::detectors::InputPerturbation;
///
/// let step = InputPerturbation::new(1000.0, 0.0014)?;
/// assert_eq!((step.temperature(), step.epsilon()), (1000.0, 0.0014));
/// assert!(InputPerturbation::new(0.0, 0.1).is_err());
/// assert!(InputPerturbation::new(1.0, -0.1).is_err());
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Unchecked")]
pub struct InputPerturbation {
    temperature: f32,
    epsilon: f32,
}

/// A step as a file holds it, before [`InputPerturbation::new`]'s checks.
#[derive(serde::Deserialize)]
struct Unchecked {
    temperature: f32,
    epsilon: f32,
}

impl TryFrom<Unchecked> for InputPerturbation {
    type Error = Error;

    fn try_from(step: Unchecked) -> Result<Self> {
        InputPerturbation::new(step.temperature, step.epsilon)
    }
}

impl Default for InputPerturbation {
    /// T = 1000 and ε = 0.0014, the ODIN paper's and the Python toolkit's.
    fn default() -> Self {
        InputPerturbation {
            temperature: 1000.0,
            epsilon: 0.0014,
        }
    }
}

impl InputPerturbation {
    /// A step `epsilon` (≥ 0; 0 = no step) at `temperature` (positive).
    pub fn new(temperature: f32, epsilon: f32) -> Result<Self> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::invalid(
                "temperature",
                temperature,
                "must be a positive number",
            ));
        }
        if !(epsilon.is_finite() && epsilon >= 0.0) {
            return Err(Error::invalid("epsilon", epsilon, "must be a number ≥ 0"));
        }
        Ok(InputPerturbation {
            temperature,
            epsilon,
        })
    }

    /// The temperature T.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// The step ε.
    pub fn epsilon(&self) -> f32 {
        self.epsilon
    }

    /// Whether the step is zero (nothing to do).
    pub fn is_off(&self) -> bool {
        self.epsilon == 0.0
    }

    /// The inputs after the step: x − ε · sign(∇ₓ CE(logits / T, argmax)),
    /// with `logits` the model's logits of `inputs`.
    pub fn perturb(
        &self,
        model: &dyn Model,
        inputs: Array4<f32>,
        logits: ArrayView2<f32>,
    ) -> Result<Array4<f32>> {
        if self.is_off() {
            return Ok(inputs);
        }
        let gradient = input_gradient_of(model, "an input step (ODIN's, or a feature detector's)")?
            .input_gradient(inputs.view(), self.loss_gradient(logits).view())?;
        let step = self.epsilon;
        let mut perturbed = inputs;
        Zip::from(&mut perturbed)
            .and(&gradient)
            .for_each(|x, &g| *x -= step * sign(g));
        Ok(perturbed)
    }

    /// T · ∂ CE(logits / T, argmax) / ∂ logits = softmax(logits / T) −
    /// onehot. Only the sign of the input gradient is used, so the
    /// positive factor 1/T is left out: a tiny T cannot overflow it.
    fn loss_gradient(&self, logits: ArrayView2<f32>) -> Array2<f32> {
        let t = self.temperature;
        let mut gradient = Array2::zeros(logits.raw_dim());
        for (row, mut out) in logits.rows().into_iter().zip(gradient.rows_mut()) {
            let (_, exps) = tempered_exps(row, t);
            let sum: f32 = exps.iter().sum();
            let predicted = argmax(row.iter().copied());
            for (k, (o, e)) in out.iter_mut().zip(&exps).enumerate() {
                let onehot = if k == predicted { 1.0 } else { 0.0 };
                *o = e / sum - onehot;
            }
        }
        gradient
    }
}

/// −1, 0 or 1.
fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}
