//! GEN, the generalized entropy score (Liu et al., CVPR 2023).

use serde::{Deserialize, Serialize};

use ndarray::{Array1, ArrayView2};

use super::{ScoreLogits, StoredLogits};
use super::{score_rows, shifted_exps};
use crate::detectors::registry::{Needs, Param, Registration, built, load_logits};
use crate::error::{Error, Result};

/// GEN: score = Σ p^γ (1 − p)^γ over the `top_k` largest softmax
/// probabilities p (all of them when there are fewer classes). Like the
/// entropy it grows as the network hesitates; γ < 1 makes it sharper near a
/// certain prediction, and keeping the top classes only ignores the long tail
/// of a large label set.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{Gen, ScoreLogits};
///
/// // Two equal classes: 2 · (0.5^0.1 · 0.5^0.1).
/// let scores = Gen::default().score_logits(array![[0.0_f32, 0.0]].view())?;
/// assert!((scores[0] - 2.0 * 0.5_f32.powf(0.2)).abs() < 1e-6);
/// // p = (0.75, 0.25), top 1 only: (0.75 · 0.25)^0.1.
/// let scores = Gen::new(0.1, 1)?.score_logits(array![[3.0_f32.ln(), 0.0]].view())?;
/// assert!((scores[0] - 0.1875_f32.powf(0.1)).abs() < 1e-6);
/// assert!(Gen::new(0.0, 10).is_err() && Gen::new(0.1, 0).is_err());
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases** (not errors): One class: the same score for every
/// input (useless): its only probability is 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gen {
    gamma: f32,
    top_k: usize,
}

impl Default for Gen {
    /// γ = 0.1 and the top 100 classes, the paper's settings.
    fn default() -> Self {
        Gen {
            gamma: 0.1,
            top_k: 100,
        }
    }
}

impl Gen {
    /// GEN with exponent `gamma` in (0, 1] over the `top_k` (≥ 1) largest
    /// probabilities.
    pub fn new(gamma: f32, top_k: usize) -> Result<Self> {
        let gen_ = Gen { gamma, top_k };
        gen_.validate()?;
        Ok(gen_)
    }

    /// The exponent γ.
    pub fn gamma(&self) -> f32 {
        self.gamma
    }

    /// How many of the largest probabilities are summed.
    pub fn top_k(&self) -> usize {
        self.top_k
    }
}

impl ScoreLogits for Gen {
    fn name(&self) -> &'static str {
        "GEN"
    }

    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        score_rows(logits, |row| {
            let (_, mut probabilities) = shifted_exps(row);
            let sum: f32 = probabilities.iter().sum();
            probabilities.iter_mut().for_each(|p| *p /= sum);
            probabilities.sort_unstable_by(|a, b| b.total_cmp(a));
            probabilities
                .iter()
                .take(self.top_k)
                .map(|&p| (p * (1.0 - p)).powf(self.gamma))
                .sum()
        })
    }
}

impl StoredLogits for Gen {
    const KINDS: &'static [&'static str] = &["GEN"];

    fn validate(&self) -> Result<()> {
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            return Err(Error::invalid("gamma", self.gamma, "must be in (0, 1]"));
        }
        if self.top_k == 0 {
            return Err(Error::invalid(
                "top_k",
                self.top_k,
                "keep at least one class",
            ));
        }
        Ok(())
    }
}

/// GEN in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "GEN",
    "gen",
    "generalised entropy of the top-k probabilities, GEN (logits only)",
    &[
        Param {
            name: "gamma",
            doc: "the exponent γ [default: 0.1]",
        },
        Param {
            name: "top_k",
            doc: "the probabilities kept [default: 100]",
        },
    ],
    Needs::LOGITS,
    |p| {
        let default = Gen::default();
        built(Gen::new(
            p.number_f32("gamma")?.unwrap_or(default.gamma()),
            p.count("top_k")?.unwrap_or(default.top_k()),
        )?)
    },
    load_logits::<Gen>,
);
