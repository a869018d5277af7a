//! Metrics of how well OOD scores separate in-distribution (ID) from OOD
//! data: AUROC, FPR at a TPR, TPR at an FPR, AUPR-In / AUPR-Out and the best
//! detection accuracy; and the classifier's own [`accuracy`] on logits.
//!
//! Conventions (as in scikit-learn with OOD labelled 1):
//! - OOD is the positive class; a sample is flagged OOD when
//!   `score >= threshold`, so higher scores must mean more OOD.
//! - Every distinct score is a threshold: the metrics are exact, with ties
//!   handled like scikit-learn's `roc_curve` / `roc_auc_score` /
//!   `average_precision_score`.
//! - Scores are `f32`; everything is computed in `f64` (and AUROC from
//!   integer counts). `±∞` are valid scores; NaN and empty sides are errors.
//!
//! Each side is sorted once (a radix sort) and one linear sweep over the
//! distinct scores yields every metric, so 10^7 scores take a fraction of a
//! second. [`bench_metrics`] computes several metrics from that one sort.
//!
//! ```
//! use oodkit::metrics::{auroc, bench_metrics, fpr_at_tpr};
//!
//! let scores_in = [0.0_f32, 0.2, 0.2, 0.2, 0.2];
//! let scores_out = [0.2_f32, 0.2, 1.0, 1.0, 1.0];
//! assert!((auroc(&scores_in, &scores_out)? - 0.84).abs() < 1e-12);
//! assert_eq!(fpr_at_tpr(&scores_in, &scores_out, 0.95)?, 0.8);
//!
//! let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr"])?;
//! assert_eq!(report.get("fpr95tpr"), Some(0.8));
//! println!("{report}"); // "auroc      0.840000\nfpr95tpr   0.800000"
//! # Ok::<(), oodkit::Error>(())
//! ```

mod accuracy;
mod report;
mod sweep;

use ndarray::ArrayView1;

pub use accuracy::accuracy;
#[cfg(feature = "burn")]
pub(crate) use accuracy::check_labels;
pub(crate) use accuracy::{argmax, count_correct};
pub use report::{AsMetric, Metric, MetricReport, bench_metrics, bench_metrics_labeled};
use sweep::{SortedScores, Summary};

use crate::error::{Error, Result};

/// The ROC curve, one point per distinct score plus the `(0, 0)` start, in
/// the order of scikit-learn's `roc_curve(drop_intermediate=False)`:
/// thresholds decreasing, the first one `+∞`.
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    /// False positive rate (ID samples flagged OOD) at each threshold.
    pub fpr: Vec<f64>,
    /// True positive rate (OOD samples flagged OOD) at each threshold.
    pub tpr: Vec<f64>,
    /// The thresholds: a sample is flagged OOD when `score >= threshold`.
    pub thresholds: Vec<f32>,
}

/// The ROC curve of ID scores (negatives) against OOD scores (positives).
pub fn roc_curve<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
) -> Result<RocCurve> {
    let sorted = SortedScores::new(scores_in.into(), scores_out.into())?;
    let (negf, posf) = (sorted.negatives() as f64, sorted.positives() as f64);
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f32::INFINITY],
    };
    sorted.sweep(|t, fp, tp| {
        curve.fpr.push(fp as f64 / negf);
        curve.tpr.push(tp as f64 / posf);
        curve.thresholds.push(t);
    });
    Ok(curve)
}

fn summary<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
    tpr_targets: &[f64],
    fpr_targets: &[f64],
) -> Result<Summary> {
    let sorted = SortedScores::new(scores_in.into(), scores_out.into())?;
    Ok(Summary::compute(&sorted, tpr_targets, fpr_targets))
}

/// Area under the ROC curve; equals scikit-learn's `roc_auc_score` with OOD
/// labelled 1 (a tie between an ID and an OOD score counts one half).
pub fn auroc<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
) -> Result<f64> {
    Ok(summary(scores_in, scores_out, &[], &[])?.auroc)
}

/// FPR at the highest threshold whose TPR is at least `tpr` (scikit-learn:
/// `fpr[argmax(tpr_curve >= tpr)]`). `tpr` must be in `(0, 1]`;
/// FPR@95%TPR is `fpr_at_tpr(.., 0.95)`.
pub fn fpr_at_tpr<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
    tpr: f64,
) -> Result<f64> {
    check_rate("tpr", tpr)?;
    Ok(summary(scores_in, scores_out, &[tpr], &[])?.fpr_at_tpr[0])
}

/// The largest TPR among thresholds whose FPR is at most `fpr` (in `(0, 1]`).
pub fn tpr_at_fpr<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
    fpr: f64,
) -> Result<f64> {
    check_rate("fpr", fpr)?;
    Ok(summary(scores_in, scores_out, &[], &[fpr])?.tpr_at_fpr[0])
}

/// Average precision with OOD as the positive class and the scores as they
/// are; equals scikit-learn's `average_precision_score`.
pub fn aupr_out<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
) -> Result<f64> {
    Ok(summary(scores_in, scores_out, &[], &[])?.aupr_out)
}

/// Average precision with ID as the positive class and negated scores;
/// equals scikit-learn's `average_precision_score(1 - y, -scores)`.
pub fn aupr_in<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
) -> Result<f64> {
    Ok(summary(scores_in, scores_out, &[], &[])?.aupr_in)
}

/// The best accuracy `(tp + tn) / n` over all thresholds (flagging nothing
/// included): how well one cut on the score separates ID from OOD.
pub fn detection_accuracy<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
) -> Result<f64> {
    Ok(summary(scores_in, scores_out, &[], &[])?.detection_accuracy)
}

fn check_rate(name: &'static str, rate: f64) -> Result<()> {
    if rate > 0.0 && rate <= 1.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value: rate.to_string(),
            reason: "a rate must be in (0, 1]".into(),
        })
    }
}
