//! The one pass behind every metric: sort each side once, then walk the
//! distinct scores from the highest down, counting how many OOD (true
//! positives) and ID (false positives) samples score at least that much.

use ndarray::ArrayView1;
use voracious_radix_sort::RadixSort;

use crate::error::{Error, Result};

/// ID and OOD scores, validated and sorted ascending.
pub(crate) struct SortedScores {
    pub(crate) scores_in: Vec<f32>,
    pub(crate) scores_out: Vec<f32>,
}

impl SortedScores {
    /// Copies, checks (non-empty, no NaN) and sorts both sides.
    pub(crate) fn new(
        scores_in: ArrayView1<'_, f32>,
        scores_out: ArrayView1<'_, f32>,
    ) -> Result<Self> {
        let scores_in = checked_copy(scores_in, "ID scores")?;
        let scores_out = checked_copy(scores_out, "OOD scores")?;
        Ok(Self::from_unsorted(scores_in, scores_out))
    }

    /// Sorts two checked, non-empty sides.
    pub(crate) fn from_unsorted(mut scores_in: Vec<f32>, mut scores_out: Vec<f32>) -> Self {
        // Radix sort on the float bit patterns: O(n), no comparisons; about
        // twice as fast as `radsort` and three times `sort_unstable` here.
        scores_in.voracious_sort();
        scores_out.voracious_sort();
        SortedScores {
            scores_in,
            scores_out,
        }
    }

    /// Number of ID samples (negatives).
    pub(crate) fn negatives(&self) -> u64 {
        self.scores_in.len() as u64
    }

    /// Number of OOD samples (positives).
    pub(crate) fn positives(&self) -> u64 {
        self.scores_out.len() as u64
    }

    /// Calls `visit(threshold, fp, tp)` for each distinct score from the
    /// highest down, where `fp` / `tp` count the ID / OOD samples scoring
    /// `>= threshold`. `-0.0` and `0.0` are one threshold, as in NumPy.
    pub(crate) fn sweep(&self, mut visit: impl FnMut(f32, u64, u64)) {
        let (a, b) = (&self.scores_in, &self.scores_out);
        let (mut i, mut j) = (a.len(), b.len());
        let (mut fp, mut tp) = (0u64, 0u64);
        loop {
            let t = match (i > 0, j > 0) {
                (true, true) => a[i - 1].max(b[j - 1]),
                (true, false) => a[i - 1],
                (false, true) => b[j - 1],
                (false, false) => break,
            };
            while i > 0 && a[i - 1] == t {
                i -= 1;
                fp += 1;
            }
            while j > 0 && b[j - 1] == t {
                j -= 1;
                tp += 1;
            }
            visit(t, fp, tp);
        }
    }
}

fn checked_copy(scores: ArrayView1<'_, f32>, what: &str) -> Result<Vec<f32>> {
    if scores.is_empty() {
        return Err(empty_error(what));
    }
    let copy = scores.to_vec();
    match copy.iter().position(|s| s.is_nan()) {
        Some(index) => Err(nan_error(what, index)),
        None => Ok(copy),
    }
}

/// The error for a side with no score.
pub(crate) fn empty_error(what: &str) -> Error {
    Error::Empty {
        what: what.into(),
        hint: "the metrics compare ID and OOD scores and need at least one of each".into(),
    }
}

/// The error for a NaN score at `index` of `what`.
pub(crate) fn nan_error(what: &str, index: usize) -> Error {
    Error::NotANumber {
        what: what.into(),
        index,
        hint: "a detector produced NaN (check the model's outputs and the inputs' scaling)".into(),
    }
}

/// Every scalar metric, computed in one sweep.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) auroc: f64,
    pub(crate) aupr_in: f64,
    pub(crate) aupr_out: f64,
    pub(crate) detection_accuracy: f64,
    /// FPR at the first threshold whose TPR reaches each target, in the order asked.
    pub(crate) fpr_at_tpr: Vec<f64>,
    /// Largest TPR among thresholds whose FPR stays within each target.
    pub(crate) tpr_at_fpr: Vec<f64>,
}

impl Summary {
    pub(crate) fn compute(sorted: &SortedScores, tpr_targets: &[f64], fpr_targets: &[f64]) -> Self {
        let (neg, pos) = (sorted.negatives(), sorted.positives());
        let (negf, posf) = (neg as f64, pos as f64);
        let total = negf + posf;

        // AUROC by the trapezoid rule on integer counts: exact, then one division.
        let mut twice_area: u128 = 0;
        let (mut prev_fp, mut prev_tp) = (0u64, 0u64);
        let (mut aupr_out, mut aupr_in) = (0.0f64, 0.0f64);
        // The first point, flag nothing, is right for every ID sample.
        let mut best_correct = neg;
        // Rates compared as counts: the fewest positives whose TPR reaches
        // each target, the most negatives whose FPR stays within each.
        let min_tp: Vec<u64> = tpr_targets
            .iter()
            .map(|&t| fewest_reaching(t, pos))
            .collect();
        let max_fp: Vec<u64> = fpr_targets.iter().map(|&f| most_within(f, neg)).collect();
        let mut fp_at_tpr: Vec<Option<u64>> = vec![None; tpr_targets.len()];
        let mut tp_at_fpr = vec![0u64; fpr_targets.len()];

        sorted.sweep(|_, fp, tp| {
            twice_area += u128::from(fp - prev_fp) * u128::from(tp + prev_tp);
            // Average precision, OOD positive: recall steps times precision,
            // summed as counts and divided once by the positives (so a
            // perfect ranking gives exactly 1).
            if tp > prev_tp {
                aupr_out += (tp - prev_tp) as f64 * (tp as f64 / (tp + fp) as f64);
            }
            // Average precision, ID positive on negated scores: sweeping the
            // same thresholds from below, the ID samples at this threshold
            // are a recall step, with the precision of those scoring <= it.
            if fp > prev_fp {
                let id_at_most = neg - prev_fp;
                let ood_at_most = pos - prev_tp;
                aupr_in +=
                    (fp - prev_fp) as f64 * (id_at_most as f64 / (id_at_most + ood_at_most) as f64);
            }
            best_correct = best_correct.max(tp + (neg - fp));
            for (&needed, out) in min_tp.iter().zip(fp_at_tpr.iter_mut()) {
                if out.is_none() && tp >= needed {
                    *out = Some(fp);
                }
            }
            for (&allowed, out) in max_fp.iter().zip(tp_at_fpr.iter_mut()) {
                if fp <= allowed {
                    *out = tp;
                }
            }
            (prev_fp, prev_tp) = (fp, tp);
        });

        Summary {
            auroc: twice_area as f64 / (2.0 * negf * posf),
            aupr_in: aupr_in / negf,
            aupr_out: aupr_out / posf,
            detection_accuracy: best_correct as f64 / total,
            // The last point has TPR 1, which reaches every target in (0, 1].
            fpr_at_tpr: fp_at_tpr
                .iter()
                .map(|fp| fp.unwrap_or(neg) as f64 / negf)
                .collect(),
            tpr_at_fpr: tp_at_fpr.iter().map(|&tp| tp as f64 / posf).collect(),
        }
    }
}

/// The smallest count `k` in `0..=n` with `k / n >= rate` in `f64`, the
/// comparison scikit-learn makes on its `tpr` array.
fn fewest_reaching(rate: f64, n: u64) -> u64 {
    let nf = n as f64;
    let mut k = ((rate * nf).ceil().max(0.0) as u64).min(n);
    while k > 0 && (k - 1) as f64 / nf >= rate {
        k -= 1;
    }
    while k < n && (k as f64 / nf) < rate {
        k += 1;
    }
    k
}

/// The largest count `k` in `0..=n` with `k / n <= rate` in `f64`.
fn most_within(rate: f64, n: u64) -> u64 {
    let nf = n as f64;
    let mut k = ((rate * nf).floor().max(0.0) as u64).min(n);
    while k < n && (k + 1) as f64 / nf <= rate {
        k += 1;
    }
    while k > 0 && (k as f64 / nf) > rate {
        k -= 1;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_thresholds_match_the_float_comparisons_they_replace() {
        for n in 1..=300u64 {
            for p in 1..=100 {
                let rate = f64::from(p) / 100.0;
                let brute_min = (0..=n).find(|&k| k as f64 / n as f64 >= rate).unwrap();
                let brute_max = (0..=n)
                    .rev()
                    .find(|&k| k as f64 / n as f64 <= rate)
                    .unwrap();
                assert_eq!(fewest_reaching(rate, n), brute_min, "n={n} rate={rate}");
                assert_eq!(most_within(rate, n), brute_max, "n={n} rate={rate}");
            }
        }
    }
}
