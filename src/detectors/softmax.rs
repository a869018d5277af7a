//! The softmax and its log-normaliser, written once, stably: every detector
//! that turns logits into probabilities or an energy uses these.
//!
//! The max is subtracted before exponentiating, and entries equal to the
//! max count exactly 1, so an infinite logit gives the softmax's limit
//! instead of `inf - inf = NaN`. The `f32` forms serve the per-row scores;
//! the `f64` ones the fitted statistics and energies that sum many terms.

use ndarray::{Array1, ArrayView1};

/// A row's largest value and `exp(l - max)` of each entry (see the module
/// docs). The softmax is `exps / exps.sum()`.
pub(crate) fn shifted_exps(row: ArrayView1<f32>) -> (f32, Vec<f32>) {
    tempered_exps(row, 1.0)
}

/// [`shifted_exps`] at temperature `t`: `exp((l - max) / t)`, the max
/// taken on the logits themselves. Dividing the differences (never
/// positive) rather than the logits keeps every temperature finite: a tiny
/// `t` sends the others to 0 instead of the logits to ±inf.
pub(crate) fn tempered_exps(row: ArrayView1<f32>, t: f32) -> (f32, Vec<f32>) {
    let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps = row
        .iter()
        .map(|&v| if v == max { 1.0 } else { ((v - max) / t).exp() })
        .collect();
    (max, exps)
}

/// A row's largest value and `Σ exp((l - max) / t)`, as
/// [`tempered_exps`] would sum them (to the bit) without a vector per row
/// or a branch per entry when the max is finite (there `exp(0) = 1`
/// already).
pub(crate) fn tempered_exp_sum(row: ArrayView1<f32>, t: f32) -> (f32, f32) {
    let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum = if max.is_finite() {
        row.iter().map(|&v| ((v - max) / t).exp()).sum()
    } else {
        row.iter()
            .map(|&v| if v == max { 1.0 } else { ((v - max) / t).exp() })
            .sum()
    };
    (max, sum)
}

/// The softmax of a row, in `f64` (an infinite logit takes all the mass,
/// shared among ties).
pub(crate) fn softmax_f64(row: ArrayView1<f32>) -> Array1<f64> {
    let max = f64::from(row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    let exps: Array1<f64> = row
        .iter()
        .map(|&v| {
            let v = f64::from(v);
            if v == max { 1.0 } else { (v - max).exp() }
        })
        .collect();
    let total = exps.sum();
    exps / total
}

/// ln Σ exp(row), stably in `f64` (the energy of a row of logits).
pub(crate) fn logsumexp(row: ArrayView1<f32>) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return f64::from(max);
    }
    f64::from(max)
        + row
            .iter()
            .map(|&v| f64::from(v - max).exp())
            .sum::<f64>()
            .ln()
}
