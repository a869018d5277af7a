//! The energy score (Liu et al. 2020).

use serde::{Deserialize, Serialize};

use ndarray::{Array1, ArrayView2};

use super::{ScoreLogits, StoredLogits};
use super::{score_rows, tempered_exp_sum};
use crate::detectors::registry::{Needs, Param, Registration, built, load_logits};
use crate::error::{Error, Result};

/// Energy: score = −T · logsumexp(logits / T). An input is as OOD as its
/// logits are low all together (MLS looks at the largest one only).
///
/// Computed stably: `logsumexp(z) = max z + ln Σ exp(z − max z)`, so logits
/// of ±1000 are fine; an infinite logit gives an infinite score. Like MLS it
/// needs no statistics of the training data.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{Energy, ScoreLogits};
///
/// let logits = array![[0.0_f32, 0.0], [2.0, 0.0]];
/// let scores = Energy::default().score_logits(logits.view())?;
/// assert!((scores[0] + 2.0_f32.ln()).abs() < 1e-6); // −ln(e⁰ + e⁰)
/// // T = 2: −2 ln(e¹ + e⁰)
/// let scores = Energy::new(2.0)?.score_logits(logits.view())?;
/// assert!((scores[1] + 2.0 * (1.0 + 1.0_f32.exp()).ln()).abs() < 1e-5);
/// assert!(Energy::new(0.0).is_err());
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases** (not errors): One class: −logit (the same order as
/// MLS). Equal logits l: −l − T·ln K.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Energy {
    temperature: f32,
}

impl Default for Energy {
    /// Temperature 1.
    fn default() -> Self {
        Energy { temperature: 1.0 }
    }
}

impl Energy {
    /// The largest temperature: the score −T·ln Σ exp(l/T) stays finite
    /// for every finite logit below it.
    pub const MAX_TEMPERATURE: f32 = 1e6;

    /// The energy at `temperature`, in (0, [`MAX_TEMPERATURE`](Self::MAX_TEMPERATURE)].
    pub fn new(temperature: f32) -> Result<Self> {
        let energy = Energy { temperature };
        energy.validate()?;
        Ok(energy)
    }

    /// The temperature.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }
}

impl ScoreLogits for Energy {
    fn name(&self) -> &'static str {
        "Energy"
    }

    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        let t = self.temperature;
        // −T·ln Σ exp(l/T) = −max − T·ln Σ exp((l − max)/T): finite for
        // every temperature and finite logits.
        score_rows(logits, |row| {
            let (max, sum) = tempered_exp_sum(row, t);
            -(max + t * sum.ln())
        })
    }
}

impl StoredLogits for Energy {
    const KINDS: &'static [&'static str] = &["Energy"];

    fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !(t > 0.0 && t <= Self::MAX_TEMPERATURE) {
            return Err(Error::invalid(
                "temperature",
                t,
                format!(
                    "must be in (0, {:e}] (the papers use 1): above, T·ln(classes) \
                     leaves the range of f32",
                    Self::MAX_TEMPERATURE
                ),
            ));
        }
        Ok(())
    }
}

/// Energy in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "Energy",
    "energy",
    "energy, -T logsumexp(logits / T) (logits only)",
    &[Param {
        name: "temperature",
        doc: "the temperature T [default: 1]",
    }],
    Needs::LOGITS,
    |p| match p.number_f32("temperature")? {
        Some(t) => built(Energy::new(t)?),
        None => built(Energy::default()),
    },
    load_logits::<Energy>,
);
