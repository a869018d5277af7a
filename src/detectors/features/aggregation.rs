//! Combining per-layer scores into one, for detectors fitted on several
//! layers (the Python toolkit's aggregators).

use ndarray::{Array1, Array2, ArrayView1};
use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::function::erf::erfc;

use serde_json::{Value, json};

use crate::detectors::file::{Reader, Writer};
use crate::error::{Error, Result};

/// How a detector fitted on several layers combines their scores. Each is
/// fitted on the per-layer scores `s_l` of the in-distribution fit data;
/// every result keeps *higher = more OOD*.
///
/// - [`StdNormalized`](Self::StdNormalized) (the default):
///   `mean_l s_l / (σ_l + 1e-10)`, σ_l the standard deviation of layer
///   l's fit scores;
/// - [`MeanNormalized`](Self::MeanNormalized): `mean_l s_l / (m_l + 1e-10)`,
///   m_l the mean of layer l's fit scores (the Gram paper's normalisation);
/// - [`Fisher`](Self::Fisher): each layer's score becomes a p-value
///   `p_l = F_l(−s_l)`, F_l the empirical CDF of the negated fit scores
///   (linearly interpolated, its support widened below the minimum and
///   above the maximum so no p-value is 0); Fisher's statistic
///   `τ = −2 Σ_l ln p_l`; with Brown's correction for correlated layers
///   (μ, σ² the mean and variance of τ on the fit data, c = σ²/2μ,
///   k′ = 2μ²/σ²) the score is the χ²(k′) CDF of τ/c: the probability
///   that an in-distribution input would score lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// Standard-deviation-normalised average.
    #[default]
    StdNormalized,
    /// Mean-normalised average.
    MeanNormalized,
    /// Fisher's method with Brown's correction.
    Fisher,
}

/// An [`Aggregation`] fitted on in-distribution per-layer scores.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{Aggregation, Aggregator};
///
/// // Layer 1's scores spread 10 times wider than layer 0's.
/// let fit = [array![1.0_f32, -1.0, 1.0, -1.0], array![10.0_f32, -10.0, 10.0, -10.0]];
/// let views: Vec<_> = fit.iter().map(|s| s.view()).collect();
/// let agg = Aggregator::fit(Aggregation::StdNormalized, &views)?;
/// let scores = agg.aggregate(&[array![2.0_f32].view(), array![20.0_f32].view()])?;
/// assert!((scores[0] - 2.0).abs() < 1e-6); // (2/1 + 20/10) / 2
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Aggregator {
    kind: Aggregation,
    layers: usize,
    /// Per-layer divisors (the normalised averages).
    scale: Vec<f64>,
    /// Fisher: per layer, the sorted negated fit scores with the widened
    /// bounds, and Brown's c and k′.
    ecdf: Vec<Vec<f64>>,
    brown: Option<(f64, ChiSquared)>,
}

impl Aggregator {
    /// Fits `kind` on the fit data's scores, one array per layer (equal
    /// lengths, at least two samples, all finite).
    pub fn fit(kind: Aggregation, per_layer: &[ArrayView1<f32>]) -> Result<Self> {
        let scores = stack(per_layer, "fit scores")?;
        let n = scores.nrows();
        if n < 2 {
            return Err(Error::Empty {
                what: "fit scores of the aggregation".into(),
                hint: "at least two in-distribution samples are needed".into(),
            });
        }
        let layers = scores.ncols();
        let mut agg = Aggregator {
            kind,
            layers,
            scale: vec![1.0; layers],
            ecdf: Vec::new(),
            brown: None,
        };
        match kind {
            Aggregation::StdNormalized | Aggregation::MeanNormalized => {
                for (l, column) in scores.columns().into_iter().enumerate() {
                    let mean = column.sum() / n as f64;
                    agg.scale[l] = if kind == Aggregation::StdNormalized {
                        let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                        var.sqrt() + 1e-10
                    } else if mean > 0.0 {
                        mean + 1e-10
                    } else {
                        // Dividing by a mean of 0 or below would blow up or
                        // flip the layer's scores (higher = more OOD).
                        return Err(Error::invalid(
                            "aggregation",
                            "mean_normalized",
                            format!(
                                "layer {l}'s fit scores have mean {mean}, not above 0: use \
                                 std_normalized or fisher for a detector whose scores are \
                                 negative"
                            ),
                        ));
                    };
                }
            }
            Aggregation::Fisher => {
                agg.ecdf = scores
                    .columns()
                    .into_iter()
                    .map(|column| widened_sorted(column.iter().map(|v| -v).collect()))
                    .collect();
                let tau = agg.fisher_statistics(&scores);
                let mu = tau.iter().sum::<f64>() / n as f64;
                let var = tau.iter().map(|t| (t - mu).powi(2)).sum::<f64>() / n as f64;
                if !(var > 0.0 && mu > 0.0) {
                    return Err(Error::invalid(
                        "aggregation",
                        "Fisher",
                        "the fit scores give a constant Fisher statistic (every sample ties on \
                         every layer): Brown's correction is undefined; use StdNormalized",
                    ));
                }
                let dof = 2.0 * mu * mu / var;
                let chi2 = ChiSquared::new(dof).map_err(|e| {
                    Error::numerical(format!("Fisher aggregation, χ²({dof})"), e.to_string())
                })?;
                agg.brown = Some((var / (2.0 * mu), chi2));
            }
        }
        Ok(agg)
    }

    /// The method.
    pub fn kind(&self) -> Aggregation {
        self.kind
    }

    /// The number of layers it combines.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Writes its arrays under `prefix` (`scale`; Fisher's `ecdf.{l}`) and
    /// returns its parameters.
    pub(crate) fn write(&self, file: &mut Writer, prefix: &str) -> Value {
        file.array(&format!("{prefix}scale"), ArrayView1::from(&self.scale));
        for (l, sorted) in self.ecdf.iter().enumerate() {
            file.array(&format!("{prefix}ecdf.{l}"), ArrayView1::from(sorted));
        }
        let kind = match self.kind {
            Aggregation::StdNormalized => "std_normalized",
            Aggregation::MeanNormalized => "mean_normalized",
            Aggregation::Fisher => "fisher",
        };
        json!({
            "kind": kind,
            "brown": self.brown.as_ref().map(|(c, chi2)| json!({"c": c, "dof": chi2.freedom()})),
        })
    }

    /// Reads what [`write`](Self::write) wrote, for `layers` layers.
    pub(crate) fn read(file: &Reader, prefix: &str, params: &Value, layers: usize) -> Result<Self> {
        let kind = match file.text(params, "kind")? {
            "std_normalized" => Aggregation::StdNormalized,
            "mean_normalized" => Aggregation::MeanNormalized,
            "fisher" => Aggregation::Fisher,
            other => return Err(file.corrupt(format!("unknown aggregation \"{other}\""))),
        };
        let scale: Array1<f64> = file.array(&format!("{prefix}scale"), &[Some(layers)])?;
        if let Some(bad) = scale.iter().find(|&&s| s <= 0.0) {
            return Err(file.corrupt(format!(
                "the aggregator's scale {bad} is not positive: each layer's scores are \
                 divided by a spread or mean of positive scores"
            )));
        }
        let mut agg = Aggregator {
            kind,
            layers,
            scale: scale.to_vec(),
            ecdf: Vec::new(),
            brown: None,
        };
        if kind == Aggregation::Fisher {
            for l in 0..layers {
                let sorted: Array1<f64> = file.array(&format!("{prefix}ecdf.{l}"), &[None])?;
                if sorted.len() < 2 || sorted.windows(2).into_iter().any(|w| w[0] > w[1]) {
                    return Err(file.corrupt(format!(
                        "the aggregator's ECDF of layer {l} is not sorted or too short"
                    )));
                }
                agg.ecdf.push(sorted.to_vec());
            }
            let brown = file.field(params, "brown")?;
            let c = file.number(brown, "c")?;
            let dof = file.number(brown, "dof")?;
            let chi2 = ChiSquared::new(dof)
                .ok()
                .filter(|_| c > 0.0)
                .ok_or_else(|| file.corrupt(format!("Brown's correction c = {c}, k′ = {dof}")))?;
            agg.brown = Some((c, chi2));
        }
        Ok(agg)
    }

    /// One combined score per sample, from one score array per layer (as
    /// many layers as at fit time, equal lengths).
    pub fn aggregate(&self, per_layer: &[ArrayView1<f32>]) -> Result<Array1<f32>> {
        let scores = stack(per_layer, "scores to aggregate")?;
        if scores.ncols() != self.layers {
            return Err(Error::LengthMismatch {
                what: "layers at fit time vs layers to aggregate".into(),
                left: self.layers,
                right: scores.ncols(),
            });
        }
        let out = match (&self.kind, &self.brown) {
            (Aggregation::Fisher, Some((c, chi2))) => self
                .fisher_statistics(&scores)
                .mapv(|tau| chi2_cdf(chi2, tau / c) as f32),
            _ => scores
                .rows()
                .into_iter()
                .map(|row| {
                    let sum: f64 = row.iter().zip(&self.scale).map(|(s, d)| s / d).sum();
                    (sum / self.layers as f64) as f32
                })
                .collect(),
        };
        Ok(out)
    }

    /// τ = −2 Σ_l ln p_l per sample.
    fn fisher_statistics(&self, scores: &Array2<f64>) -> Array1<f64> {
        scores
            .rows()
            .into_iter()
            .map(|row| {
                -2.0 * row
                    .iter()
                    .zip(&self.ecdf)
                    .map(|(s, sorted)| interpolated_cdf(sorted, -s).ln())
                    .sum::<f64>()
            })
            .collect()
    }
}

/// The χ²(k) CDF at `x`, bounded in time for every `k` and `x`: statrs'
/// incomplete gamma iterates without end for huge degrees of freedom
/// (a nearly constant Fisher statistic gives k′ = 2μ²/σ² of 10¹⁵ and
/// more), where the Wilson–Hilferty normal approximation is exact to
/// far below f32's resolution; and far in the tails the CDF is 0 or 1.
fn chi2_cdf(chi2: &ChiSquared, x: f64) -> f64 {
    let k = chi2.freedom();
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 0.0;
    }
    if k > 1e4 {
        let v = 2.0 / (9.0 * k);
        let z = ((x / k).cbrt() - (1.0 - v)) / v.sqrt();
        return 0.5 * erfc(-z / std::f64::consts::SQRT_2);
    }
    // Beyond 60 standard deviations above the mean, 1 to f64 precision.
    if x > k + 60.0 * (2.0 * k).sqrt() + 100.0 {
        return 1.0;
    }
    chi2.cdf(x)
}

/// `(n, layers)` in `f64`, checked: same lengths, at least one layer, every
/// score finite.
fn stack(per_layer: &[ArrayView1<f32>], what: &str) -> Result<Array2<f64>> {
    let Some(first) = per_layer.first() else {
        return Err(Error::Empty {
            what: what.into(),
            hint: "give one score array per layer".into(),
        });
    };
    let n = first.len();
    let mut out = Array2::zeros((n, per_layer.len()));
    for (l, scores) in per_layer.iter().enumerate() {
        if scores.len() != n {
            return Err(Error::LengthMismatch {
                what: format!("{what}: layer 0 vs layer {l}"),
                left: n,
                right: scores.len(),
            });
        }
        for (i, &s) in scores.iter().enumerate() {
            if !s.is_finite() {
                return Err(Error::NotANumber {
                    what: format!("{what} of layer {l} (value {s})"),
                    index: i,
                    hint: "per-layer scores must be finite numbers".into(),
                });
            }
            out[[i, l]] = f64::from(s);
        }
    }
    Ok(out)
}

/// The sample sorted, with a lower bound below its minimum and an upper
/// bound above its maximum (min·n or min/n, max·n or max/n, whichever lies
/// outside), as the Python toolkit widens its empirical CDF.
fn widened_sorted(mut sample: Vec<f64>) -> Vec<f64> {
    let n = sample.len() as f64;
    let min = sample.iter().copied().fold(f64::INFINITY, f64::min);
    let max = sample.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    sample.push(if min > 0.0 { min / n } else { min * n });
    sample.push(if max > 0.0 { max * n } else { max / n });
    sample.sort_by(f64::total_cmp);
    sample
}

/// The empirical CDF of `sorted` (values k/len at the k-th point, k from 1),
/// linearly interpolated at `x` and clamped to its end values.
fn interpolated_cdf(sorted: &[f64], x: f64) -> f64 {
    let len = sorted.len();
    let at = |k: usize| (k + 1) as f64 / len as f64;
    let upper = sorted.partition_point(|&v| v <= x);
    if upper == 0 {
        return at(0);
    }
    if upper == len {
        return at(len - 1);
    }
    let (x0, x1) = (sorted[upper - 1], sorted[upper]);
    let t = (x - x0) / (x1 - x0);
    at(upper - 1) + t * (at(upper) - at(upper - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn chi2_cdf_returns_for_every_degree_and_point() {
        for k in [0.5, 2.0, 30.0, 1e3, 1e4, 1e4 + 1.0, 1e8, 1e15, 1e300] {
            let chi2 = ChiSquared::new(k).unwrap();
            let mut last = 0.0;
            let mut xs = [
                0.0,
                1e-300,
                1.0,
                k / 2.0,
                k,
                2.0 * k,
                1e20,
                1e300,
                f64::INFINITY,
            ];
            xs.sort_by(f64::total_cmp);
            for x in xs {
                let p = chi2_cdf(&chi2, x);
                assert!(
                    (0.0..=1.0).contains(&p) && p >= last - 1e-12,
                    "k {k}, x {x}: {p}"
                );
                last = p;
            }
        }
        // The approximation joins the exact CDF at the switch.
        let exact = ChiSquared::new(1e4).unwrap();
        let approx = ChiSquared::new(1e4 + 1e-6).unwrap();
        for x in [9_800.0, 10_000.0, 10_200.0] {
            assert!((exact.cdf(x) - chi2_cdf(&approx, x)).abs() < 1e-3);
        }
    }

    #[test]
    fn normalised_averages_by_hand() {
        let fit = [array![1.0_f32, 3.0], array![10.0_f32, 30.0]];
        let views: Vec<_> = fit.iter().map(|s| s.view()).collect();
        let mean = Aggregator::fit(Aggregation::MeanNormalized, &views).unwrap();
        // means 2 and 20: (4/2 + 20/20) / 2 = 1.5
        let s = mean
            .aggregate(&[array![4.0_f32].view(), array![20.0_f32].view()])
            .unwrap();
        assert!((s[0] - 1.5).abs() < 1e-6);
        let std = Aggregator::fit(Aggregation::StdNormalized, &views).unwrap();
        // stds 1 and 10: (4/1 + 20/10) / 2 = 3
        let s = std
            .aggregate(&[array![4.0_f32].view(), array![20.0_f32].view()])
            .unwrap();
        assert!((s[0] - 3.0).abs() < 1e-6);
        assert!(std.aggregate(&[array![4.0_f32].view()]).is_err());
        assert!(Aggregator::fit(Aggregation::Fisher, &[array![1.0_f32, 1.0].view()]).is_err());
        assert!(Aggregator::fit(Aggregation::StdNormalized, &[]).is_err());
    }

    #[test]
    fn interpolated_cdf_matches_numpy_interp() {
        // np.interp(x, [0, 1, 3], [1/3, 2/3, 1])
        let sorted = [0.0, 1.0, 3.0];
        for (x, expected) in [(-1.0, 1.0 / 3.0), (0.5, 0.5), (2.0, 5.0 / 6.0), (9.0, 1.0)] {
            assert!(
                (interpolated_cdf(&sorted, x) - expected).abs() < 1e-12,
                "{x}"
            );
        }
        assert_eq!(widened_sorted(vec![2.0, -1.0]), vec![-2.0, -1.0, 2.0, 4.0]);
    }

    #[test]
    fn fisher_ranks_joint_outliers_highest() {
        // Two layers of fit scores; an input extreme on both layers scores
        // above one extreme on a single layer, above a typical one.
        let a: Array1<f32> = (0..200).map(|i| ((i * 37) % 200) as f32 / 200.0).collect();
        let b: Array1<f32> = (0..200).map(|i| ((i * 91) % 200) as f32 / 100.0).collect();
        let agg = Aggregator::fit(Aggregation::Fisher, &[a.view(), b.view()]).unwrap();
        let s = agg
            .aggregate(&[
                array![0.5_f32, 0.99, 0.99].view(),
                array![1.0_f32, 1.0, 1.99].view(),
            ])
            .unwrap();
        assert!(s[2] > s[1] && s[1] > s[0], "{s}");
        assert!(s.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
}
