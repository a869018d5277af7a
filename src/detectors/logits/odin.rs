//! ODIN (Liang et al., ICLR 2018): temperature scaling and input
//! perturbation.

use serde::{Deserialize, Serialize};

use ndarray::{Array1, ArrayView2};

use super::{ScoreLogits, StoredLogits, score_rows, tempered_exps};
use crate::batch::Batch;
use crate::detectors::registry::{Capability, Needs, Param, Registration, built, load_logits};
use crate::detectors::{InputPerturbation, ScoreOutput};
use crate::error::Result;
use crate::model::{Model, check_logits, input_gradient_of};

/// ODIN: move each input one [`InputPerturbation`] step ε against the
/// gradient of its cross-entropy with its own predicted class at
/// temperature T, x̃ = x − ε · sign(∇ₓ CE(logits(x) / T, argmax)), then
/// score −max softmax(logits(x̃) / T). The step raises the confidence of ID
/// inputs more than that of OOD ones.
///
/// The step needs the model's input gradient
/// ([`InputGradient::input_gradient`](crate::model::InputGradient::input_gradient)): a [`BurnModel`](crate::model::BurnModel) or
/// a closure model from
/// [`from_fn_with_gradient`](crate::model::from_fn_with_gradient); any
/// other model gives an [`Error::Unsupported`](crate::Error::Unsupported)
/// when scoring. With ε = 0 there is no step and no gradient: ODIN is then
/// MSP at temperature T and works with every model (the Python toolkit
/// crashes there).
///
/// [`score_logits`](ScoreLogits::score_logits) can only apply the
/// temperature (the step needs the model), so on precomputed logits it gives
/// the ε = 0 score. The logits a scorer returns are those of the
/// unperturbed inputs.
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
///
/// **Degenerate cases** (not errors): One class: −1 for every input
/// (useless), as MSP.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Odin {
    /// T = 1000 and ε = 0.0014 by default, the paper's and the Python
    /// toolkit's. Checked as it is built or read.
    #[serde(flatten)]
    step: InputPerturbation,
}

impl Odin {
    /// ODIN at `temperature` (positive) with step `epsilon` (≥ 0; 0 = no
    /// perturbation).
    pub fn new(temperature: f32, epsilon: f32) -> Result<Self> {
        Ok(Odin {
            step: InputPerturbation::new(temperature, epsilon)?,
        })
    }

    /// ODIN with this step.
    pub fn with_step(step: InputPerturbation) -> Self {
        Odin { step }
    }

    /// The temperature T.
    pub fn temperature(&self) -> f32 {
        self.step.temperature()
    }

    /// The step ε.
    pub fn epsilon(&self) -> f32 {
        self.step.epsilon()
    }

    /// The input step (temperature and ε).
    pub fn step(&self) -> InputPerturbation {
        self.step
    }
}

impl ScoreLogits for Odin {
    fn name(&self) -> &'static str {
        "ODIN"
    }

    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        let t = self.step.temperature();
        score_rows(logits, |row| {
            -1.0 / tempered_exps(row, t).1.iter().sum::<f32>()
        })
    }

    /// Two forward passes and the input gradient between them (one pass
    /// with ε = 0).
    fn score_logit_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput> {
        let n = batch.len();
        let logits = model.forward(batch.inputs.view())?;
        check_logits(&logits, n)?;
        // Also checks the logits (NaN, no class) before any gradient.
        let unperturbed = self.score_logits(logits.view())?;
        let scores = if self.step.is_off() {
            unperturbed
        } else {
            let perturbed = self.step.perturb(model, batch.inputs, logits.view())?;
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

    fn perturbs_inputs(&self) -> bool {
        !self.step.is_off()
    }

    /// With a step, the model must give input gradients.
    fn check_model(&self, model: &dyn Model) -> Result<()> {
        if self.step.is_off() {
            return Ok(());
        }
        input_gradient_of(model, "ODIN with an input step (ε > 0)").map(|_| ())
    }
}

impl StoredLogits for Odin {
    const KINDS: &'static [&'static str] = &["ODIN"];

    /// The step's checks run as it is read ([`InputPerturbation::new`]).
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// ODIN in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "ODIN",
    "odin",
    "ODIN: tempered softmax and an input step (needs the network's input gradients: the \
     crate's networks, not ONNX)",
    &[
        Param {
            name: "temperature",
            doc: "the softmax's temperature [default: 1000]",
        },
        Param {
            name: "epsilon",
            doc: "the input step; 0 needs no gradient [default: 0.0014]",
        },
    ],
    Needs {
        fit_data: false,
        labels: false,
        capabilities: &[Capability::InputGradient],
    },
    |p| {
        let default = Odin::default();
        built(Odin::new(
            p.number_f32("temperature")?
                .unwrap_or(default.temperature()),
            p.number_f32("epsilon")?.unwrap_or(default.epsilon()),
        )?)
    },
    load_logits::<Odin>,
);
