//! The entropy of the softmax.

use serde::{Deserialize, Serialize};

use ndarray::{Array1, ArrayView2};

use super::{ScoreLogits, StoredLogits};
use super::{score_rows, shifted_exps};
use crate::detectors::registry::{Needs, Registration, built, load_logits};
use crate::error::Result;

/// Entropy: score = −Σ p log p of the softmax probabilities p, with
/// 0 · log 0 = 0. An input is as OOD as the network hesitates between its
/// classes: 0 for a certain prediction, ln(num_classes) for a uniform one.
///
/// Computed from the shifted logits (`ln p = l − max − ln Σ exp(l − max)`),
/// so extreme and infinite logits are fine.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{Entropy, ScoreLogits};
///
/// let logits = array![[0.0_f32, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0]];
/// let scores = Entropy::default().score_logits(logits.view())?;
/// assert!((scores[0] - 4.0_f32.ln()).abs() < 1e-6);
/// assert_eq!(scores[1], 0.0);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases** (not errors): One class: 0 for every input
/// (useless). Equal logits: ln K, the largest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entropy {}

impl Entropy {
    /// The entropy detector (it has no parameter).
    pub fn new() -> Self {
        Entropy {}
    }
}

impl ScoreLogits for Entropy {
    fn name(&self) -> &'static str {
        "Entropy"
    }

    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        score_rows(logits, |row| {
            let (max, exps) = shifted_exps(row);
            let sum: f32 = exps.iter().sum();
            // H = ln S − Σ p (l − max): terms with p = 0 contribute 0.
            let weighted: f32 = exps
                .iter()
                .zip(&row)
                .filter(|(e, _)| **e > 0.0)
                .map(|(e, &l)| e * if l == max { 0.0 } else { l - max })
                .sum();
            (sum.ln() - weighted / sum).max(0.0)
        })
    }
}

impl StoredLogits for Entropy {
    const KINDS: &'static [&'static str] = &["Entropy"];

    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Entropy in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "Entropy",
    "entropy",
    "softmax entropy (logits only)",
    &[],
    Needs::LOGITS,
    |_| built(Entropy::new()),
    load_logits::<Entropy>,
);
