//! Streaming means and scatter matrices in `f64`: each chunk's own
//! statistics, merged into the running ones with Chan et al.'s pairwise
//! update (the chunked form of Welford's algorithm), so memory is
//! O(D² + classes·D) whatever the number of samples, and the result does
//! not depend on how the data was chunked (up to rounding).

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::partial::{check_classes, check_count, check_len};
use crate::detectors::file::array;
use crate::error::{Error, Result};
use crate::linalg::{add_gram_lower, symmetrized};

/// Count and mean of one class (or of everything).
#[derive(Debug, Clone)]
pub(crate) struct Mean {
    pub(crate) count: u64,
    pub(crate) mean: Array1<f64>,
}

/// Class means and the pooled within-class scatter
/// Σ_c Σ_{i in c} (x_i − μ_c)(x_i − μ_c)ᵀ, optionally with the total mean
/// and scatter over all samples. The scatters are accumulated on their
/// lower triangle only (half the work); the accessors return them whole.
/// In a partial fit's file: [`MomentsForm`]'s fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "MomentsForm")]
pub(crate) struct ClassMoments {
    dim: usize,
    classes: BTreeMap<i64, Mean>,
    within: Array2<f64>,
    total: Option<(Mean, Array2<f64>)>,
}

impl ClassMoments {
    /// Moments of `dim`-wide features; `with_total` also keeps the mean
    /// and scatter of all samples together.
    pub(crate) fn new(dim: usize, with_total: bool) -> Self {
        ClassMoments {
            dim,
            classes: BTreeMap::new(),
            within: Array2::zeros((dim, dim)),
            total: with_total.then(|| {
                (
                    Mean {
                        count: 0,
                        mean: Array1::zeros(dim),
                    },
                    Array2::zeros((dim, dim)),
                )
            }),
        }
    }

    /// Adds a chunk of features `(n, dim)` with their class labels.
    pub(crate) fn update(&mut self, features: ArrayView2<f32>, labels: ArrayView1<i64>) {
        let mut x = features.mapv(f64::from);
        // The chunk's own class means.
        let mut chunk: BTreeMap<i64, Mean> = BTreeMap::new();
        for (row, &label) in x.rows().into_iter().zip(labels) {
            let entry = chunk.entry(label).or_insert_with(|| Mean {
                count: 0,
                mean: Array1::zeros(self.dim),
            });
            entry.count += 1;
            entry.mean += &row;
        }
        for m in chunk.values_mut() {
            m.mean /= m.count as f64;
        }
        if let Some((total, scatter)) = &mut self.total {
            let part = Mean {
                count: x.nrows() as u64,
                mean: x
                    .mean_axis(Axis(0))
                    .unwrap_or_else(|| Array1::zeros(self.dim)),
            };
            let centred = &x - &part.mean;
            add_gram_lower(scatter, centred.view());
            let update = merge(total, &part);
            add_rank_updates(scatter, &[update]);
        }
        // Scatter around the chunk's class means, in one product (x is
        // centred in place: it is not needed afterwards).
        for (mut row, label) in x.rows_mut().into_iter().zip(labels) {
            if let Some(m) = chunk.get(label) {
                row -= &m.mean;
            }
        }
        add_gram_lower(&mut self.within, x.view());
        self.merge_classes(chunk);
    }

    /// Merges other samples' class means `parts` into the running ones,
    /// with the scatter correction their differences add to `within`.
    fn merge_classes(&mut self, parts: BTreeMap<i64, Mean>) {
        let merges: Vec<(f64, Array1<f64>)> = parts
            .into_iter()
            .filter(|(_, part)| part.count > 0)
            .map(|(label, part)| {
                let running = self.classes.entry(label).or_insert_with(|| Mean {
                    count: 0,
                    mean: Array1::zeros(self.dim),
                });
                merge(running, &part)
            })
            .collect();
        add_rank_updates(&mut self.within, &merges);
    }

    /// Adds the moments `other` gathered (on other samples of the same
    /// width, and with the total kept or not alike): the result is that of
    /// one stream over both, up to rounding.
    pub(crate) fn absorb(&mut self, other: ClassMoments) {
        self.within += &other.within;
        self.merge_classes(other.classes);
        if let (Some((total, scatter)), Some((part, part_scatter))) = (&mut self.total, other.total)
            && part.count > 0
        {
            *scatter += &part_scatter;
            let update = merge(total, &part);
            add_rank_updates(scatter, &[update]);
        }
    }

    /// The width of the features.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// The moments of one class's `count` samples: their `mean` and the
    /// lower triangle of their `scatter` (as [`raw_within`](Self::raw_within)
    /// gives it), checked.
    pub(crate) fn of_one_class(
        label: i64,
        count: u64,
        mean: Array1<f64>,
        scatter: Array2<f64>,
    ) -> Result<Self> {
        let dim = mean.len();
        check_count(count, "a class")?;
        if count == 0 || scatter.dim() != (dim, dim) {
            return Err(Error::custom(format!(
                "class {label}'s moments count {count} samples with a {:?} scatter for {dim} \
                 features",
                scatter.shape()
            )));
        }
        Ok(ClassMoments {
            dim,
            classes: BTreeMap::from([(label, Mean { count, mean })]),
            within: scatter,
            total: None,
        })
    }

    /// The within-class scatter as accumulated (its lower triangle).
    pub(crate) fn raw_within(&self) -> &Array2<f64> {
        &self.within
    }

    /// Whether the total mean and scatter are kept.
    pub(crate) fn has_total(&self) -> bool {
        self.total.is_some()
    }

    /// The classes seen, ascending, with their counts and means.
    pub(crate) fn classes(&self) -> &BTreeMap<i64, Mean> {
        &self.classes
    }

    /// Number of samples seen.
    pub(crate) fn count(&self) -> u64 {
        self.classes.values().map(|m| m.count).sum()
    }

    /// The pooled within-class scatter.
    pub(crate) fn within(&self) -> Array2<f64> {
        symmetrized(&self.within)
    }

    /// The total mean and scatter, when kept.
    pub(crate) fn total(&self) -> Option<(&Mean, Array2<f64>)> {
        self.total.as_ref().map(|(m, s)| (m, symmetrized(s)))
    }

    /// Errors unless every class has at least `min` samples (and there is
    /// at least one class).
    pub(crate) fn require_per_class(&self, min: u64, detector: &str) -> Result<()> {
        if self.classes.is_empty() {
            return Err(Error::Empty {
                what: format!("the fit data of {detector}"),
                hint: "fit on at least one batch of in-distribution data".into(),
            });
        }
        for (label, m) in &self.classes {
            if m.count < min {
                return Err(Error::InvalidLabel {
                    label: *label,
                    reason: format!(
                        "{detector} needs at least {min} fit samples per class; class {label} \
                         has {}: fit on more data, or leave the class out",
                        m.count
                    ),
                });
            }
        }
        Ok(())
    }
}

/// [`ClassMoments`] as a partial fit's file holds them: the classes in
/// ascending order with their counts and means (rows of `class_means`),
/// the scatters' lower triangles as accumulated.
#[derive(Serialize, Deserialize)]
struct MomentsForm {
    dim: usize,
    class_labels: Vec<i64>,
    class_counts: Vec<u64>,
    #[serde(with = "array")]
    class_means: Array2<f64>,
    #[serde(with = "array")]
    within: Array2<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total_count: Option<u64>,
    #[serde(
        with = "array::optional",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    total_mean: Option<Array1<f64>>,
    #[serde(
        with = "array::optional",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    total_scatter: Option<Array2<f64>>,
}

impl Serialize for ClassMoments {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut class_means = Array2::zeros((self.classes.len(), self.dim));
        for (mut row, class) in class_means
            .rows_mut()
            .into_iter()
            .zip(self.classes.values())
        {
            row.assign(&class.mean);
        }
        MomentsForm {
            dim: self.dim,
            class_labels: self.classes.keys().copied().collect(),
            class_counts: self.classes.values().map(|m| m.count).collect(),
            class_means,
            within: self.within.clone(),
            total_count: self.total.as_ref().map(|(m, _)| m.count),
            total_mean: self.total.as_ref().map(|(m, _)| m.mean.clone()),
            total_scatter: self.total.as_ref().map(|(_, s)| s.clone()),
        }
        .serialize(serializer)
    }
}

impl TryFrom<MomentsForm> for ClassMoments {
    type Error = Error;

    fn try_from(form: MomentsForm) -> Result<Self> {
        let dim = form.dim;
        let classes = form.class_labels.len();
        check_classes(&form.class_labels)?;
        check_len("the class counts", form.class_counts.len(), classes)?;
        if form.class_means.dim() != (classes, dim) || form.within.dim() != (dim, dim) {
            return Err(Error::custom(format!(
                "its class means are {:?} and its scatter {:?}, where {classes} classes of {dim} \
                 features were expected",
                form.class_means.shape(),
                form.within.shape()
            )));
        }
        let mut seen = 0_u64;
        for &count in &form.class_counts {
            check_count(count, "a class")?;
            if count == 0 {
                return Err(Error::custom("a class of its moments counts no sample"));
            }
            seen += count;
            check_count(seen, "the classes together")?;
        }
        let total = match (form.total_count, form.total_mean, form.total_scatter) {
            (None, None, None) => None,
            (Some(count), Some(mean), Some(scatter)) => {
                if count != seen || mean.len() != dim || scatter.dim() != (dim, dim) {
                    return Err(Error::custom(format!(
                        "its overall moments count {count} samples of {} features with a \
                         {:?} scatter, where the classes count {seen} of {dim}",
                        mean.len(),
                        scatter.shape()
                    )));
                }
                Some((Mean { count, mean }, scatter))
            }
            _ => {
                return Err(Error::custom(
                    "its overall moments are incomplete (total_count, total_mean and \
                     total_scatter go together)",
                ));
            }
        };
        let classes = form
            .class_labels
            .into_iter()
            .zip(form.class_counts)
            .zip(form.class_means.rows())
            .map(|((label, count), mean)| {
                (
                    label,
                    Mean {
                        count,
                        mean: mean.to_owned(),
                    },
                )
            })
            .collect();
        Ok(ClassMoments {
            dim,
            classes,
            within: form.within,
            total,
        })
    }
}

/// Merges the statistics `part` into `running` (means only) and returns
/// the weight and mean difference of the scatter correction
/// n_a·n_b/(n_a+n_b) · δδᵀ the merge adds.
fn merge(running: &mut Mean, part: &Mean) -> (f64, Array1<f64>) {
    let (na, nb) = (running.count as f64, part.count as f64);
    let n = na + nb;
    let delta = &part.mean - &running.mean;
    running.mean.scaled_add(nb / n, &delta);
    running.count += part.count;
    (na * nb / n, delta)
}

/// `scatter += Σ w δδᵀ`, as one product of the stacked √w·δ rows.
fn add_rank_updates(scatter: &mut Array2<f64>, updates: &[(f64, Array1<f64>)]) {
    let rows: Vec<_> = updates.iter().filter(|(w, _)| *w > 0.0).collect();
    if rows.is_empty() {
        return;
    }
    let dim = scatter.nrows();
    let mut stacked = Array2::zeros((rows.len(), dim));
    for (mut out, (w, delta)) in stacked.rows_mut().into_iter().zip(rows) {
        out.assign(&(delta * w.sqrt()));
    }
    add_gram_lower(scatter, stacked.view());
}

/// The mean of feature rows, streamed in `f64` (the plain sum: fit features
/// are finite and their count is far below 2⁵³). In a partial fit's file:
/// `mean_sum` and `mean_count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunningMean {
    #[serde(rename = "mean_sum", with = "array")]
    sum: Array1<f64>,
    #[serde(rename = "mean_count")]
    count: u64,
}

impl RunningMean {
    pub(crate) fn new(dim: usize) -> Self {
        RunningMean {
            sum: Array1::zeros(dim),
            count: 0,
        }
    }

    /// Adds rows `(n, dim)`.
    pub(crate) fn update(&mut self, features: ArrayView2<f32>) {
        for row in features.rows() {
            self.sum.zip_mut_with(&row, |s, &v| *s += f64::from(v));
        }
        self.count += features.nrows() as u64;
    }

    /// Errors unless the count can be one of fit samples and the sum is
    /// `dim` wide.
    pub(crate) fn validate(&self, dim: usize) -> Result<()> {
        check_count(self.count, "its running mean")?;
        check_len("its running sum", self.sum.len(), dim)
    }

    /// Adds what `other` summed (rows of the same width).
    pub(crate) fn absorb(&mut self, other: RunningMean) {
        self.sum += &other.sum;
        self.count += other.count;
    }

    /// The mean, or an error naming `detector` when nothing was added.
    pub(crate) fn finish(self, detector: &str) -> Result<Array1<f64>> {
        if self.count == 0 {
            return Err(Error::Empty {
                what: format!("the fit data of {detector}"),
                hint: "fit on at least one sample".into(),
            });
        }
        Ok(self.sum / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Direct two-pass statistics of the same data.
    fn direct(x: &Array2<f64>, labels: &[i64]) -> (BTreeMap<i64, Array1<f64>>, Array2<f64>) {
        let mut means = BTreeMap::new();
        for &c in labels {
            let rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
            let m = x.select(Axis(0), &rows).mean_axis(Axis(0)).unwrap();
            means.insert(c, m);
        }
        let d = x.ncols();
        let mut within = Array2::zeros((d, d));
        for (i, &c) in labels.iter().enumerate() {
            let r = &x.row(i) - &means[&c];
            for a in 0..d {
                for b in 0..d {
                    within[[a, b]] += r[a] * r[b];
                }
            }
        }
        (means, within)
    }

    #[test]
    fn chunked_moments_equal_the_two_pass_ones() {
        let x = array![
            [1.0_f32, 2.0],
            [3.0, 1.0],
            [100.0, -4.0],
            [2.0, 2.5],
            [101.0, -2.0],
            [99.5, -3.0],
            [0.5, 1.5]
        ];
        let labels = array![0_i64, 0, 5, 0, 5, 5, 0];
        let (means, within) = direct(&x.mapv(f64::from), labels.as_slice().unwrap());
        for chunk in [1, 2, 3, 7] {
            let mut m = ClassMoments::new(2, true);
            for (xs, ls) in x
                .axis_chunks_iter(Axis(0), chunk)
                .zip(labels.axis_chunks_iter(Axis(0), chunk))
            {
                m.update(xs, ls);
            }
            assert_eq!(m.count(), 7);
            for (c, expected) in &means {
                let found = &m.classes()[c].mean;
                assert!((found - expected).iter().all(|d| d.abs() < 1e-12));
            }
            assert!(
                (m.within() - &within).iter().all(|d| d.abs() < 1e-9),
                "{chunk}"
            );
            let (total, scatter) = m.total().unwrap();
            let (_, all) = direct(&x.mapv(f64::from), &[0; 7]);
            assert!((&scatter - &all).iter().all(|d| d.abs() < 1e-9));
            assert!((total.mean[0] - 307.0 / 7.0).abs() < 1e-12);
        }
    }
}
