//! [`bench_metrics`]: several metrics from one sort, by name or by value.

use std::fmt;
use std::str::FromStr;

use ndarray::ArrayView1;

use super::sweep::{SortedScores, Summary, empty_error, nan_error};
use crate::error::{Error, Result};

/// A metric [`bench_metrics`] can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Area under the ROC curve (`"auroc"`).
    Auroc,
    /// FPR at the given TPR in percent, 1–99 (`"fpr95tpr"` is `FprAtTpr(95)`).
    FprAtTpr(u8),
    /// TPR at the given FPR in percent, 1–99 (`"tpr5fpr"` is `TprAtFpr(5)`).
    TprAtFpr(u8),
    /// Average precision with ID positive, negated scores (`"aupr_in"`).
    AuprIn,
    /// Average precision with OOD positive (`"aupr_out"`).
    AuprOut,
    /// Best accuracy over all thresholds (`"detect_acc"`).
    DetectionAccuracy,
}

const VALID: &str =
    "auroc, fprNNtpr, tprNNfpr (NN in 1..=99, e.g. fpr95tpr), aupr_in, aupr_out, detect_acc";

impl Metric {
    /// The metric's name, as parsed and as reported (e.g. `"fpr95tpr"`).
    pub fn name(&self) -> String {
        match self {
            Metric::Auroc => "auroc".into(),
            Metric::FprAtTpr(p) => format!("fpr{p}tpr"),
            Metric::TprAtFpr(p) => format!("tpr{p}fpr"),
            Metric::AuprIn => "aupr_in".into(),
            Metric::AuprOut => "aupr_out".into(),
            Metric::DetectionAccuracy => "detect_acc".into(),
        }
    }

    fn validated(self) -> Result<Self> {
        match self {
            Metric::FprAtTpr(p) | Metric::TprAtFpr(p) if !(1..=99).contains(&p) => {
                Err(Error::InvalidParameter {
                    name: "metric",
                    value: format!("{self:?}"),
                    reason: "the rate is a percentage in 1..=99".into(),
                })
            }
            ok => Ok(ok),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Metric {
    type Err = Error;

    /// Parses a metric name (case-insensitive); an unknown name is an error
    /// listing the valid ones.
    fn from_str(name: &str) -> Result<Self> {
        let lower = name.trim().to_ascii_lowercase();
        let percent = |rest: &str| -> Option<u8> {
            (!rest.is_empty() && rest.len() <= 2 && rest.bytes().all(|b| b.is_ascii_digit()))
                .then(|| rest.parse().ok())
                .flatten()
        };
        let metric = match lower.as_str() {
            "auroc" => Some(Metric::Auroc),
            "aupr_in" => Some(Metric::AuprIn),
            "aupr_out" => Some(Metric::AuprOut),
            "detect_acc" => Some(Metric::DetectionAccuracy),
            other => {
                let fpr = other
                    .strip_prefix("fpr")
                    .and_then(|r| r.strip_suffix("tpr"));
                let tpr = other
                    .strip_prefix("tpr")
                    .and_then(|r| r.strip_suffix("fpr"));
                match (fpr.and_then(percent), tpr.and_then(percent)) {
                    (Some(p), _) => Some(Metric::FprAtTpr(p)),
                    (_, Some(p)) => Some(Metric::TprAtFpr(p)),
                    _ => None,
                }
            }
        };
        match metric {
            Some(m) => m.validated(),
            None => Err(Error::InvalidParameter {
                name: "metric",
                value: format!("{name:?}"),
                reason: format!("unknown metric; valid metrics are {VALID}"),
            }),
        }
    }
}

/// Anything that names a metric: a [`Metric`] or its name as a string.
pub trait AsMetric {
    /// The metric, or an error for an unknown name or an invalid rate.
    fn to_metric(&self) -> Result<Metric>;
}

impl AsMetric for Metric {
    fn to_metric(&self) -> Result<Metric> {
        self.validated()
    }
}

impl AsMetric for str {
    fn to_metric(&self) -> Result<Metric> {
        self.parse()
    }
}

impl AsMetric for String {
    fn to_metric(&self) -> Result<Metric> {
        self.parse()
    }
}

impl<T: AsMetric + ?Sized> AsMetric for &T {
    fn to_metric(&self) -> Result<Metric> {
        (**self).to_metric()
    }
}

/// The values of the metrics asked for, in the order asked.
///
/// Displays as aligned lines (`auroc      0.934842`), like the reference
/// notebook prints.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReport {
    entries: Vec<(String, f64)>,
}

impl MetricReport {
    /// The value of the metric named `name` (e.g. `"auroc"`), if it was asked for.
    pub fn get(&self, name: &str) -> Option<f64> {
        let wanted = name.to_ascii_lowercase();
        self.entries
            .iter()
            .find(|(n, _)| *n == wanted)
            .map(|&(_, v)| v)
    }

    /// `(name, value)` pairs in the order asked.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), *v))
    }

    /// Number of metrics in the report.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the report is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Display for MetricReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{name:<10} {value:.6}")?;
        }
        Ok(())
    }
}

/// A JSON (or any serde format) object of the metrics in order, e.g.
/// `{"auroc": 0.93, "fpr95tpr": 0.39}` (feature `serde`).
#[cfg(feature = "serde")]
impl serde::Serialize for MetricReport {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (name, value) in &self.entries {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'r> IntoIterator for &'r MetricReport {
    type Item = (&'r str, f64);
    type IntoIter = Box<dyn Iterator<Item = (&'r str, f64)> + 'r>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// Computes the `metrics` (names such as `"auroc"`, `"fpr95tpr"`, or
/// [`Metric`] values) from ID and OOD scores, sorting the scores once for all
/// of them. An unknown metric name is an error listing the valid ones.
///
/// ```
/// use oodkit::metrics::{Metric, bench_metrics};
///
/// let scores_in = vec![-3.0_f32, -2.5, -2.0, -1.0];
/// let scores_out = vec![-1.5_f32, -0.5, 0.0];
/// let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr", "detect_acc"])?;
/// assert_eq!(report.get("auroc"), Some(11.0 / 12.0));
/// let same = bench_metrics(&scores_in, &scores_out, &[Metric::Auroc])?;
/// assert_eq!(same.get("auroc"), report.get("auroc"));
/// assert!(bench_metrics(&scores_in, &scores_out, &["accuracy"]).is_err());
/// # Ok::<(), oodkit::Error>(())
/// ```
pub fn bench_metrics<'a, 'b, M: AsMetric>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
    metrics: &[M],
) -> Result<MetricReport> {
    let metrics = parse_all(metrics)?;
    let sorted = SortedScores::new(scores_in.into(), scores_out.into())?;
    Ok(report(&sorted, &metrics))
}

/// Like [`bench_metrics`] on one array of scores with OOD labels (`0` = ID,
/// `1` = OOD), as a prepared dataset with OOD labels gives them.
pub fn bench_metrics_labeled<'a, 'b, M: AsMetric>(
    scores: impl Into<ArrayView1<'a, f32>>,
    ood_labels: impl Into<ArrayView1<'b, u8>>,
    metrics: &[M],
) -> Result<MetricReport> {
    let (scores, ood_labels) = (scores.into(), ood_labels.into());
    let metrics = parse_all(metrics)?;
    if scores.len() != ood_labels.len() {
        return Err(Error::LengthMismatch {
            what: "scores and OOD labels".into(),
            left: scores.len(),
            right: ood_labels.len(),
        });
    }
    let (mut scores_in, mut scores_out) = (Vec::new(), Vec::new());
    for (index, (&s, &label)) in scores.iter().zip(ood_labels.iter()).enumerate() {
        if s.is_nan() {
            return Err(nan_error("scores", index));
        }
        match label {
            0 => scores_in.push(s),
            1 => scores_out.push(s),
            other => {
                return Err(Error::InvalidLabel {
                    label: i64::from(other),
                    reason: format!("OOD label at index {index} must be 0 (ID) or 1 (OOD)"),
                });
            }
        }
    }
    for (side, what) in [
        (&scores_in, "ID scores (label 0)"),
        (&scores_out, "OOD scores (label 1)"),
    ] {
        if side.is_empty() {
            return Err(empty_error(what));
        }
    }
    Ok(report(
        &SortedScores::from_unsorted(scores_in, scores_out),
        &metrics,
    ))
}

fn parse_all<M: AsMetric>(metrics: &[M]) -> Result<Vec<Metric>> {
    if metrics.is_empty() {
        return Err(Error::InvalidParameter {
            name: "metrics",
            value: "[]".into(),
            reason: format!("ask for at least one metric: {VALID}"),
        });
    }
    metrics.iter().map(AsMetric::to_metric).collect()
}

fn report(sorted: &SortedScores, metrics: &[Metric]) -> MetricReport {
    let rate = |p: u8| f64::from(p) / 100.0;
    let tpr_targets: Vec<f64> = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::FprAtTpr(p) => Some(rate(*p)),
            _ => None,
        })
        .collect();
    let fpr_targets: Vec<f64> = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::TprAtFpr(p) => Some(rate(*p)),
            _ => None,
        })
        .collect();
    let summary = Summary::compute(sorted, &tpr_targets, &fpr_targets);
    let (mut next_fpr, mut next_tpr) = (0, 0);
    let entries = metrics
        .iter()
        .map(|m| {
            let value = match m {
                Metric::Auroc => summary.auroc,
                Metric::AuprIn => summary.aupr_in,
                Metric::AuprOut => summary.aupr_out,
                Metric::DetectionAccuracy => summary.detection_accuracy,
                Metric::FprAtTpr(_) => {
                    next_fpr += 1;
                    summary.fpr_at_tpr[next_fpr - 1]
                }
                Metric::TprAtFpr(_) => {
                    next_tpr += 1;
                    summary.tpr_at_fpr[next_tpr - 1]
                }
            };
            (m.name(), value)
        })
        .collect();
    MetricReport { entries }
}
