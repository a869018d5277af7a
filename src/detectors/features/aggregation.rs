//! Combining per-layer scores into one, for detectors fitted on several
//! layers (the Python toolkit's aggregators).

use ndarray::{Array1, Array2, ArrayView1};
use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::function::erf::erfc;

use serde::{Deserialize, Serialize};

use crate::detectors::file::array;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregator {
    kind: Aggregation,
    /// Per-layer divisors (the normalised averages); one per layer.
    #[serde(with = "array")]
    scale: Vec<f64>,
    /// Fisher: per layer, the sorted negated fit scores with the widened
    /// bounds.
    #[serde(with = "array::list", default, skip_serializing_if = "Vec::is_empty")]
    ecdf: Vec<Vec<f64>>,
    /// Fisher: Brown's correction.
    brown: Option<Brown>,
}

/// Brown's correction of Fisher's statistic: τ/c follows χ²(k′).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Brown {
    c: f64,
    /// k′.
    dof: f64,
}

impl Brown {
    fn chi2(&self) -> Result<ChiSquared> {
        ChiSquared::new(self.dof)
            .ok()
            .filter(|_| self.c > 0.0 && self.c.is_finite())
            .ok_or_else(|| {
                Error::invalid(
                    "Brown's correction",
                    format!("c = {}, k′ = {}", self.c, self.dof),
                    "c and k′ must be positive and finite",
                )
            })
    }
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
                let brown = Brown {
                    c: var / (2.0 * mu),
                    dof: 2.0 * mu * mu / var,
                };
                brown.chi2().map_err(|e| {
                    Error::numerical(
                        format!("Fisher aggregation, χ²({})", brown.dof),
                        e.to_string(),
                    )
                })?;
                agg.brown = Some(brown);
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
        self.scale.len()
    }

    /// Errors unless it combines `layers` layers with usable statistics:
    /// positive scales, and for Fisher one sorted ECDF of two or more
    /// values per layer and a valid Brown's correction.
    pub(crate) fn validate(&self, layers: usize) -> Result<()> {
        let bad = |reason: String| Error::invalid("aggregator", format!("{:?}", self.kind), reason);
        if self.scale.len() != layers {
            return Err(bad(format!(
                "{} layer scales for {layers} layers",
                self.scale.len()
            )));
        }
        if let Some(s) = self.scale.iter().find(|&&s| !(s > 0.0 && s.is_finite())) {
            return Err(bad(format!(
                "a layer scale is {s}, not positive: each layer's scores are divided by a \
                 spread or mean of positive scores"
            )));
        }
        if self.kind == Aggregation::Fisher {
            if self.ecdf.len() != layers {
                return Err(bad(format!(
                    "{} ECDFs for {layers} layers",
                    self.ecdf.len()
                )));
            }
            for (l, sorted) in self.ecdf.iter().enumerate() {
                if sorted.len() < 2 || sorted.windows(2).any(|w| w[0] > w[1]) {
                    return Err(bad(format!("layer {l}'s ECDF is not sorted or too short")));
                }
            }
            match &self.brown {
                Some(brown) => {
                    brown.chi2()?;
                }
                None => return Err(bad("Fisher's method without Brown's correction".into())),
            }
        }
        Ok(())
    }

    /// One combined score per sample, from one score array per layer (as
    /// many layers as at fit time, equal lengths).
    pub fn aggregate(&self, per_layer: &[ArrayView1<f32>]) -> Result<Array1<f32>> {
        let scores = stack(per_layer, "scores to aggregate")?;
        if scores.ncols() != self.layers() {
            return Err(Error::LengthMismatch {
                what: "layers at fit time vs layers to aggregate".into(),
                left: self.layers(),
                right: scores.ncols(),
            });
        }
        let out = match (&self.kind, &self.brown) {
            (Aggregation::Fisher, Some(brown)) => {
                let chi2 = brown.chi2()?;
                self.fisher_statistics(&scores)
                    .mapv(|tau| chi2_cdf(&chi2, tau / brown.c) as f32)
            }
            _ => scores
                .rows()
                .into_iter()
                .map(|row| {
                    let sum: f64 = row.iter().zip(&self.scale).map(|(s, d)| s / d).sum();
                    (sum / self.layers() as f64) as f32
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
