//! MLS (maximum logit score) and MSP (maximum softmax probability).

use serde::{Deserialize, Serialize};

use ndarray::{Array1, ArrayView1, ArrayView2};

use super::{ScoreLogits, StoredLogits};
use super::{score_rows, tempered_exp_sum};
use crate::detectors::registry::{Needs, Registration, built, load_logits};
use crate::error::Result;

/// What is applied to the logits before taking their maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OutputActivation {
    /// The logits as they are: MLS.
    #[default]
    Identity,
    /// Softmax probabilities: MSP.
    Softmax,
}

/// Maximum logit score: an input is as OOD as its largest logit is small.
///
/// Score = −max logit; with [`OutputActivation::Softmax`] (see
/// [`Mls::msp`]) score = −max softmax probability, the MSP baseline of
/// Hendrycks & Gimpel. The softmax is computed stably: logits of 1000 or
/// −1000 are fine.
///
/// MLS needs no statistics of the training data: [`fit`](crate::detectors::Detector::fit)
/// only keeps the model, and its fit data, if any, is not read.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{Mls, ScoreLogits};
///
/// let logits = array![[2.0_f32, 0.0], [0.0, 0.0]];
/// assert_eq!(Mls::new().score_logits(logits.view())?.to_vec(), vec![-2.0, -0.0]);
/// assert_eq!(Mls::msp().score_logits(logits.view())?[1], -0.5);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases** (not errors): One class: MLS scores −logit, MSP −1
/// for every input (useless: a one-class softmax is always sure). Equal
/// logits: MSP scores −1/K.
#[doc(alias = "MLS")]
#[doc(alias = "MSP")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mls {
    /// In files, the kind says it (MLS or MSP).
    #[serde(skip)]
    activation: OutputActivation,
}

impl Default for Mls {
    fn default() -> Self {
        Self::new()
    }
}

impl Mls {
    /// MLS: score = −max logit.
    pub fn new() -> Self {
        Self::with_activation(OutputActivation::Identity)
    }

    /// MSP: score = −max softmax probability.
    #[doc(alias = "MSP")]
    pub fn msp() -> Self {
        Self::with_activation(OutputActivation::Softmax)
    }

    /// MLS with `activation` applied to the logits first.
    pub fn with_activation(activation: OutputActivation) -> Self {
        Mls { activation }
    }

    /// The output activation.
    pub fn activation(&self) -> OutputActivation {
        self.activation
    }

    fn score_row(&self, row: ArrayView1<f32>) -> f32 {
        match self.activation {
            OutputActivation::Identity => -row.fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
            // max softmax = exp(max) / sum exp(l) = 1 / sum exp(l - max).
            OutputActivation::Softmax => -1.0 / tempered_exp_sum(row, 1.0).1,
        }
    }
}

impl ScoreLogits for Mls {
    fn name(&self) -> &'static str {
        match self.activation {
            OutputActivation::Identity => "MLS",
            OutputActivation::Softmax => "MSP",
        }
    }

    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        score_rows(logits, |row| self.score_row(row))
    }
}

impl StoredLogits for Mls {
    const KINDS: &'static [&'static str] = &["MLS", "MSP"];

    fn validate(&self) -> Result<()> {
        Ok(())
    }

    fn of_kind(self, kind: &str) -> Self {
        Mls::with_activation(if kind == "MSP" {
            OutputActivation::Softmax
        } else {
            OutputActivation::Identity
        })
    }
}

/// MLS in the registry.
pub(crate) const MLS: Registration = Registration::new(
    "MLS",
    "mls",
    "maximum logit score (logits only)",
    &[],
    Needs::LOGITS,
    |_| built(Mls::new()),
    load_logits::<Mls>,
);

/// MSP in the registry.
pub(crate) const MSP: Registration = Registration::new(
    "MSP",
    "msp",
    "maximum softmax probability (logits only)",
    &[],
    Needs::LOGITS,
    |_| built(Mls::msp()),
    load_logits::<Mls>,
);
