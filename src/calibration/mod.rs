//! Decisions with a known false-alarm rate: conformal p-values from scores
//! of held-out in-distribution data.
//!
//! A detector's score says *how* unusual an input is, not *whether* to
//! trust the prediction. A [`Calibration`] holds the scores of `n`
//! in-distribution inputs the detector was **not** fitted on (a held-out
//! part of the ID test or validation set) and turns a score `s` into the
//! conformal p-value
//!
//! ```text
//! p(s) = (1 + #{calibration scores ≥ s}) / (n + 1)
//! ```
//!
//! and an input is flagged OOD at level α when `p(s) ≤ α`.
//!
//! **The guarantee.** When the calibration inputs and a new ID input are
//! exchangeable (drawn alike from the same distribution, e.g. a random
//! split of one set), P(the new ID input is flagged) ≤ α, whatever the
//! detector and however its scores are distributed; it is at least
//! α − 1/(n + 1), so the false-alarm rate is α up to 1/(n + 1). It says
//! nothing of the detection rate on OOD inputs: that is the detector's
//! quality, measured by [`metrics`](crate::metrics). It holds for the
//! marginal rate over calibration sets, not for every one: with a few
//! hundred calibration scores the rate of one calibration varies by about
//! ±√(α(1−α)/n).
//!
//! [`Calibrated`] is a fitted detector with its calibration: it scores
//! through a model like any [`FittedDetector`](crate::detectors::FittedDetector)
//! and gives a [`Verdict`] per input; [`Scorer::calibrate`](crate::detectors::Scorer::calibrate)
//! makes one from a fitted detector and held-out data.
//!
//! ```
//! use ndarray::array;
//! use oodkit::calibration::Calibration;
//!
//! // Scores of 19 held-out ID inputs: 1, 2, ..., 19.
//! let id_scores = ndarray::Array1::from_iter((1..=19).map(|s| s as f32));
//! let calibration = Calibration::fit(id_scores.view())?;
//! // p(s) = (1 + #{scores ≥ s}) / 20.
//! assert_eq!(calibration.p_value(19.0)?, 0.1);
//! assert_eq!(calibration.p_value(19.5)?, 0.05);
//! // At α = 0.05 only scores above every calibration score are flagged.
//! let threshold = calibration.threshold(0.05)?;
//! assert!(threshold > 19.0 && threshold < 19.001);
//! let verdicts = calibration.verdicts(array![3.0_f32, 25.0].view(), None, 0.05)?;
//! assert!(!verdicts[0].is_ood && verdicts[1].is_ood);
//! # Ok::<(), oodkit::Error>(())
//! ```

use ndarray::ArrayView1;

use crate::error::{Error, Result};

mod calibrated;

pub use calibrated::Calibrated;

/// Held-out in-distribution scores, sorted: the reference a new score's
/// conformal p-value is taken against.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Ascending, finite, never empty.
    sorted: Vec<f32>,
}

/// The decision on one input.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Verdict {
    /// The detector's score (higher = more OOD).
    pub score: f32,
    /// Its conformal p-value: the share of calibration inputs scoring at
    /// least as high, counted with the input itself.
    pub p_value: f64,
    /// Whether the input is flagged out-of-distribution: `p_value ≤ α`.
    pub is_ood: bool,
    /// The class the model predicts (argmax of its logits), or -1 when the
    /// scores came without logits.
    pub class: i64,
}

impl Calibration {
    /// A calibration from the scores of held-out in-distribution inputs
    /// (never the data the detector was fitted on: its scores there are
    /// optimistic, and the guarantee would not hold). Errors on no scores
    /// and on a score that is not finite (naming its index).
    pub fn fit(id_scores: ArrayView1<f32>) -> Result<Self> {
        if id_scores.is_empty() {
            return Err(Error::Empty {
                what: "the calibration scores".into(),
                hint: "score held-out in-distribution inputs (a few hundred or more)".into(),
            });
        }
        if let Some(index) = id_scores.iter().position(|s| !s.is_finite()) {
            return Err(Error::NotANumber {
                what: format!("the calibration scores (value {})", id_scores[index]),
                index,
                hint: "calibrate on finite scores: check the inputs and the model".into(),
            });
        }
        let mut sorted = id_scores.to_vec();
        sorted.sort_unstable_by(f32::total_cmp);
        Ok(Calibration { sorted })
    }

    /// The number of calibration scores `n`.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Never: a calibration has at least one score.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The calibration scores, ascending.
    pub fn scores(&self) -> &[f32] {
        &self.sorted
    }

    /// The conformal p-value of `score`: (1 + #{calibration scores ≥
    /// score}) / (n + 1), in [1/(n+1), 1]. Errors on NaN.
    pub fn p_value(&self, score: f32) -> Result<f64> {
        if score.is_nan() {
            return Err(Error::NotANumber {
                what: "the score to calibrate".into(),
                index: 0,
                hint: "the detector gave NaN: check the input".into(),
            });
        }
        let at_least = self.sorted.len() - self.sorted.partition_point(|&c| c < score);
        Ok(self.p_of(at_least))
    }

    /// The p-value of a score with `at_least` calibration scores at or
    /// above it.
    fn p_of(&self, at_least: usize) -> f64 {
        (1 + at_least) as f64 / (self.sorted.len() + 1) as f64
    }

    /// The smallest score flagged at level `alpha`: a score `s` is flagged
    /// (its p-value ≤ α) exactly when `s >= threshold`, the convention of
    /// [`metrics`](crate::metrics). `alpha` must be in (0, 1), and at least
    /// 1/(n + 1): with fewer calibration scores nothing could be flagged,
    /// an error that says how many are needed.
    pub fn threshold(&self, alpha: f64) -> Result<f32> {
        check_alpha(alpha)?;
        let n = self.sorted.len();
        // m = how many counts c of calibration scores at or above a score
        // give p_of(c) ≤ α (c = 0, ..., m - 1), in p_value's arithmetic.
        let mut m = ((alpha * (n + 1) as f64).floor() as usize).min(n);
        while m > 0 && self.p_of(m - 1) > alpha {
            m -= 1;
        }
        while m < n && self.p_of(m) <= alpha {
            m += 1;
        }
        if m == 0 {
            let needed = (1.0 / alpha).ceil() as usize - 1;
            return Err(Error::invalid(
                "alpha",
                alpha,
                format!(
                    "with {n} calibration scores the smallest p-value is 1/{}, above α: \
                     calibrate on at least {needed} scores, or raise α",
                    n + 1
                ),
            ));
        }
        // Flagged iff at most m - 1 calibration scores are ≥ s, i.e. iff s
        // is above the m-th largest one.
        Ok(self.sorted[n - m].next_up())
    }

    /// The threshold that keeps the share `keep` of in-distribution inputs
    /// (e.g. 0.95): [`threshold`](Self::threshold) at α = 1 − keep.
    pub fn threshold_for_acceptance(&self, keep: f64) -> Result<f32> {
        if !(keep > 0.0 && keep < 1.0) {
            return Err(Error::invalid(
                "keep",
                keep,
                "the share of ID inputs to keep must be in (0, 1), e.g. 0.95",
            ));
        }
        self.threshold(1.0 - keep)
    }

    /// The verdict on one score at level `alpha`, with the predicted
    /// `class` (-1 when unknown).
    pub fn verdict(&self, score: f32, class: i64, alpha: f64) -> Result<Verdict> {
        check_alpha(alpha)?;
        let p_value = self.p_value(score)?;
        Ok(Verdict {
            score,
            p_value,
            is_ood: p_value <= alpha,
            class,
        })
    }

    /// The verdicts on scores computed elsewhere (e.g. read from a `.npy`
    /// file), with the predicted classes when known (one per score).
    pub fn verdicts(
        &self,
        scores: ArrayView1<f32>,
        classes: Option<ArrayView1<i64>>,
        alpha: f64,
    ) -> Result<Vec<Verdict>> {
        if let Some(classes) = classes
            && classes.len() != scores.len()
        {
            return Err(Error::LengthMismatch {
                what: "scores vs predicted classes".into(),
                left: scores.len(),
                right: classes.len(),
            });
        }
        scores
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let class = classes.map_or(-1, |c| c[i]);
                self.verdict(s, class, alpha).map_err(|e| match e {
                    Error::NotANumber { what, hint, .. } => Error::NotANumber {
                        what,
                        index: i,
                        hint,
                    },
                    other => other,
                })
            })
            .collect()
    }
}

/// Errors unless `alpha` is a level in (0, 1).
pub(crate) fn check_alpha(alpha: f64) -> Result<()> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "alpha",
            alpha,
            "the false-alarm rate must be in (0, 1), e.g. 0.05",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn p_values_count_ties_as_at_least() {
        let c = Calibration::fit(array![3.0_f32, 1.0, 2.0, 2.0].view()).unwrap();
        assert_eq!(c.scores(), &[1.0, 2.0, 2.0, 3.0]);
        // (1 + #{≥ s}) / 5
        assert_eq!(c.p_value(0.0).unwrap(), 1.0);
        assert_eq!(c.p_value(2.0).unwrap(), 4.0 / 5.0);
        assert_eq!(c.p_value(2.5).unwrap(), 2.0 / 5.0);
        assert_eq!(c.p_value(3.0).unwrap(), 2.0 / 5.0);
        assert_eq!(c.p_value(f32::INFINITY).unwrap(), 1.0 / 5.0);
        assert!(c.p_value(f32::NAN).is_err());
    }

    #[test]
    fn threshold_flags_exactly_the_scores_whose_p_value_is_at_most_alpha() {
        let scores: Vec<f32> = (0..99).map(|i| ((i * 37) % 50) as f32 / 7.0).collect();
        let c = Calibration::fit(ArrayView1::from(&scores)).unwrap();
        for alpha in [0.01, 0.02, 0.05, 0.1, 0.13, 0.5, 0.99] {
            let t = c.threshold(alpha).unwrap();
            for probe in scores.iter().flat_map(|&s| [s, s.next_up(), s.next_down()]) {
                let flagged = c.p_value(probe).unwrap() <= alpha;
                assert_eq!(flagged, probe >= t, "alpha {alpha}, score {probe}, t {t}");
            }
        }
    }

    #[test]
    fn too_few_scores_for_alpha_is_an_error_saying_how_many() {
        let c = Calibration::fit(array![1.0_f32, 2.0].view()).unwrap();
        let message = c.threshold(0.05).unwrap_err().to_string();
        assert!(message.contains("at least 19"), "{message}");
        // 1/3 ≤ 0.34: the largest score is flagged above.
        assert_eq!(c.threshold(0.34).unwrap(), 2.0_f32.next_up());
        assert!(c.threshold(0.0).is_err() && c.threshold(1.0).is_err());
        assert!(c.threshold(f64::NAN).is_err());
        assert!(c.threshold_for_acceptance(1.2).is_err());
    }

    #[test]
    fn bad_calibration_scores_are_errors() {
        assert!(matches!(
            Calibration::fit(ArrayView1::from(&[] as &[f32])),
            Err(Error::Empty { .. })
        ));
        let nan = Calibration::fit(array![1.0_f32, f32::NAN].view()).unwrap_err();
        assert!(matches!(nan, Error::NotANumber { index: 1, .. }), "{nan}");
        let c = Calibration::fit(array![1.0_f32].view()).unwrap();
        let err = c
            .verdicts(array![0.0_f32, f32::NAN].view(), None, 0.5)
            .unwrap_err();
        assert!(matches!(err, Error::NotANumber { index: 1, .. }), "{err}");
        assert!(
            c.verdicts(array![0.0_f32].view(), Some(array![1_i64, 2].view()), 0.5)
                .is_err()
        );
    }
}
