//! ODIN (Liang et al., ICLR 2018): temperature scaling and input
//! perturbation.

use ndarray::{Array1, Array2, Array4, ArrayView2, Zip};

use super::logit::{FittedModel, score_rows, shifted_exps};
use super::{Detector, ScoreLogits, ScoreOutput};
use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::model::{Model, argmax, check_logits};

/// ODIN: move each input a step ε against the gradient of its cross-entropy
/// with its own predicted class at temperature T,
/// x̃ = x − ε · sign(∇ₓ CE(logits(x) / T, argmax)), then score
/// −max softmax(logits(x̃) / T). The step raises the confidence of ID inputs
/// more than that of OOD ones.
///
/// The step needs the model's input gradient
/// ([`Model::input_gradient`]): a [`BurnModel`](crate::model::BurnModel) or
/// a closure model from
/// [`from_fn_with_gradient`](crate::model::from_fn_with_gradient); any
/// other model gives an [`Error::Unsupported`](crate::Error::Unsupported)
/// when scoring. With ε = 0 there is no step and no gradient: ODIN is then
/// MSP at temperature T and works with every model (the Python toolkit
/// crashes there).
///
/// [`score_logits`](ScoreLogits::score_logits) can only apply the
/// temperature (the step needs the model), so on precomputed logits it gives
/// the ε = 0 score. The logits [`score`](Detector::score) returns are those
/// of the unperturbed inputs.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{Odin, ScoreLogits};
///
/// // ε = 0, T = 2: −max softmax(l / 2) = −1 / (1 + e^(−1)) for l = (2, 0).
/// let odin = Odin::new(2.0, 0.0)?;
/// let scores = odin.score_logits(array![[2.0_f32, 0.0]].view())?;
/// assert!((scores[0] + 1.0 / (1.0 + (-1.0_f32).exp())).abs() < 1e-6);
/// assert!(Odin::new(1000.0, -0.1).is_err());
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug)]
pub struct Odin<'m> {
    temperature: f32,
    epsilon: f32,
    model: FittedModel<'m>,
}

impl Default for Odin<'_> {
    /// T = 1000 and ε = 0.0014, the paper's and the Python toolkit's.
    fn default() -> Self {
        Odin {
            temperature: 1000.0,
            epsilon: 0.0014,
            model: FittedModel::default(),
        }
    }
}

impl<'m> Odin<'m> {
    /// ODIN at `temperature` (positive) with step `epsilon` (≥ 0; 0 = no
    /// perturbation).
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
        Ok(Odin {
            temperature,
            epsilon,
            ..Odin::default()
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

    /// The inputs after ODIN's step: x − ε · sign(∇ₓ CE(logits / T,
    /// argmax)), with `logits` the model's logits of `inputs`.
    pub fn perturb(
        &self,
        model: &dyn Model,
        inputs: Array4<f32>,
        logits: ArrayView2<f32>,
    ) -> Result<Array4<f32>> {
        if self.epsilon == 0.0 {
            return Ok(inputs);
        }
        let gradient = model.input_gradient(inputs.view(), self.loss_gradient(logits).view())?;
        let step = self.epsilon;
        let mut perturbed = inputs;
        Zip::from(&mut perturbed)
            .and(&gradient)
            .for_each(|x, &g| *x -= step * sign(g));
        Ok(perturbed)
    }

    /// ∂ CE(logits / T, argmax) / ∂ logits = (softmax(logits / T) − onehot) / T.
    fn loss_gradient(&self, logits: ArrayView2<f32>) -> Array2<f32> {
        let t = self.temperature;
        let mut gradient = Array2::zeros(logits.raw_dim());
        for (row, mut out) in logits.rows().into_iter().zip(gradient.rows_mut()) {
            let (_, exps) = shifted_exps(row.mapv(|v| v / t).view());
            let sum: f32 = exps.iter().sum();
            let predicted = argmax(row.iter().copied());
            for (k, (o, e)) in out.iter_mut().zip(&exps).enumerate() {
                let onehot = if k == predicted { 1.0 } else { 0.0 };
                *o = (e / sum - onehot) / t;
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

impl ScoreLogits for Odin<'_> {
    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        let t = self.temperature;
        score_rows(logits, |row| {
            -1.0 / shifted_exps(row.mapv(|v| v / t).view())
                .1
                .iter()
                .sum::<f32>()
        })
    }
}

impl<'m> Detector for Odin<'m> {
    type Network = dyn Model + 'm;

    fn name(&self) -> &'static str {
        "ODIN"
    }

    /// Keeps the model; the fit data, if any, is not read.
    fn fit_model(
        &mut self,
        model: Box<dyn Model + 'm>,
        _fit_data: Option<&dyn BatchSource>,
    ) -> Result<()> {
        self.model.set(model);
        Ok(())
    }

    fn is_fitted(&self) -> bool {
        self.model.is_set()
    }

    fn score_batch(&self, batch: Batch) -> Result<ScoreOutput> {
        let model = self.model.get(self.name())?;
        let n = batch.len();
        let logits = model.forward(batch.inputs.view())?;
        check_logits(&logits, n)?;
        // Also checks the logits (NaN, no class) before any gradient.
        let unperturbed = self.score_logits(logits.view())?;
        let scores = if self.epsilon == 0.0 {
            unperturbed
        } else {
            let perturbed = self.perturb(model, batch.inputs, logits.view())?;
            let shifted = model.forward_owned(perturbed)?;
            check_logits(&shifted, n)?;
            self.score_logits(shifted.view())?
        };
        Ok(ScoreOutput {
            scores,
            logits,
            labels: batch.labels,
        })
    }
}
