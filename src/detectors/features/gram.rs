//! Gram-matrix statistics (Sastry & Oore, ICML 2020), with quantile bounds
//! as in the Python toolkit.

use std::collections::BTreeMap;

use ndarray::{Array1, ArrayView1, Axis};

use super::PartialState;
use super::partial::{check_classes, check_len};
use super::quantile::quantile;
use super::stored::StoredState;
use super::traits::merge_check;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, Needs, Param, Registration, built_features, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::metrics::argmax;
use crate::model::Model;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

/// Keeps the deviation normalisation finite at zero bounds.
const EPSILON: f64 = 1e-6;

/// Gram: for each order p, the statistics of a feature vector f are the
/// row sums of the lower triangle of its p-th order Gram matrix
/// G_p = sign(f^p f^pᵀ) |f^p f^pᵀ|^(1/p). Per class, the fit data gives
/// bounds [lo, hi] = the [q, 1 − q] quantiles (linear interpolation) of
/// each statistic; the score sums, over orders and statistics, the
/// deviations outside them: (lo − s)/(|lo| + 10⁻⁶) below, (s − hi)/(|hi| + 10⁻⁶)
/// above (higher = more OOD).
///
/// The class is the model's prediction (fit and score), as in the paper.
/// [`fit_features`](FeatureDetector::fit_features) takes the given labels as classes;
/// [`score_features`](ScoreFeatures::score_features), which has no predictions,
/// compares each sample with the class it deviates least from. A predicted
/// class absent from the fit data is an error.
///
/// On `(N, D)` features, entry (i, j) of G_p is g_i g_j with g = f for odd
/// p and g = |f| for even p, so the statistics are g ⊙ cumsum(g): computed
/// in O(D), not O(D²), and odd orders coincide, as do even ones (for
/// non-negative features, e.g. after a ReLU, all orders do), exactly as in
/// the Python toolkit's dense-layer case. The quantiles need every fit
/// sample's statistics: memory O(N·D) (`f32`, one or two vectors per
/// sample), so fit on a subset when N·D is large.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{FeatureDetector, Gram, ScoreFeatures};
///
/// let fit = array![[1.0_f32, 1.0], [2.0, 2.0], [1.5, 1.5], [1.2, 1.8]];
/// let gram = Gram::default().fit_features(fit.view(), array![0_i64, 0, 0, 0].view())?;
/// let scores = gram.score_features(array![[1.5_f32, 1.5], [9.0, 9.0]].view())?;
/// assert_eq!(scores[0], 0.0); // inside every bound
/// assert!(scores[1] > 10.0);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases** (not errors): Identical fit features: the bounds
/// collapse to one value per statistic and every deviation from it counts,
/// relative to its size. An input inside every bound scores 0 (often: see
/// the MNIST table in BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    orders: Vec<u32>,
    quantile: f64,
    options: FeatureOptions,
}

impl Default for Gram {
    /// Orders 1 to 5, quantile 0.01 (the Python toolkit's defaults).
    fn default() -> Self {
        Gram {
            orders: (1..=5).collect(),
            quantile: 0.01,
            options: FeatureOptions::default(),
        }
    }
}

impl Gram {
    /// Gram with these orders (each ≥ 1, at least one) and bounds at the
    /// `quantile` q and 1 − q (q in [0, 0.5); 0 gives min and max, the
    /// paper's bounds).
    pub fn new(orders: impl IntoIterator<Item = u32>, quantile: f64) -> Result<Self> {
        let orders: Vec<u32> = orders.into_iter().collect();
        if orders.is_empty() || orders.contains(&0) {
            return Err(Error::invalid(
                "orders",
                format!("{orders:?}"),
                "give at least one order, each at least 1",
            ));
        }
        if !(0.0..0.5).contains(&quantile) {
            return Err(Error::invalid("quantile", quantile, "must be in [0, 0.5)"));
        }
        Ok(Gram {
            orders,
            quantile,
            options: FeatureOptions::default(),
        })
    }

    /// The orders.
    pub fn orders(&self) -> &[u32] {
        &self.orders
    }

    /// How many orders are odd and how many even.
    fn multiplicities(&self) -> Multiplicities {
        let odd = self.orders.iter().filter(|&&p| p % 2 == 1).count() as f64;
        Multiplicities {
            odd,
            even: self.orders.len() as f64 - odd,
        }
    }
}

impl FeatureDetector for Gram {
    type Fitter = GramFitter;
    type Fitted = FittedGram;

    fn name(&self) -> &'static str {
        "Gram"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, _model: Option<&dyn Model>) -> Result<GramFitter> {
        Ok(GramFitter {
            dim: width,
            quantile: self.quantile,
            mult: self.multiplicities(),
            stats: BTreeMap::new(),
        })
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// The number of odd and of even orders: the distinct statistics and their
/// weights in the deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Multiplicities {
    odd: f64,
    even: f64,
}

impl Multiplicities {
    /// The weights of the statistics kept (odd first), zeros left out.
    fn weights(self) -> Vec<f64> {
        [self.odd, self.even]
            .into_iter()
            .filter(|&w| w > 0.0)
            .collect()
    }

    /// The statistics of one sample, one block of D per kept parity.
    fn statistics(self, f: ArrayView1<f32>, out: &mut Vec<f32>) {
        let mut push = |g: &dyn Fn(f32) -> f32| {
            let mut cumsum = 0.0_f64;
            for &v in f {
                let gv = f64::from(g(v));
                cumsum += gv;
                out.push((gv * cumsum) as f32);
            }
        };
        if self.odd > 0.0 {
            push(&|v| v);
        }
        if self.even > 0.0 {
            push(&f32::abs);
        }
    }
}

/// The class of each row: the prediction when there are logits, else the
/// label.
fn classes(batch: &LayerBatch) -> Option<Vec<i64>> {
    match (batch.logits, batch.labels) {
        (Some(logits), _) => Some(
            logits
                .rows()
                .into_iter()
                .map(|r| argmax(r.iter().copied()) as i64)
                .collect(),
        ),
        (None, Some(labels)) => Some(labels.to_vec()),
        (None, None) => None,
    }
}

/// Collects one layer's Gram statistics per class.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "GramForm<Vec<f32>>")]
pub struct GramFitter {
    dim: usize,
    quantile: f64,
    mult: Multiplicities,
    /// Per class, the statistics of its samples, row after row.
    stats: BTreeMap<i64, Vec<f32>>,
}

/// A [`GramFitter`] in a partial fit's file: the classes ascending, each
/// one's statistics an array `class_statistics.{i}`.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "S: array::ToArray", deserialize = "S: array::FromArray"))]
struct GramForm<S> {
    dim: usize,
    quantile: f64,
    odd_orders: f64,
    even_orders: f64,
    class_labels: Vec<i64>,
    #[serde(with = "array::list")]
    class_statistics: Vec<S>,
}

impl Serialize for GramFitter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        GramForm {
            dim: self.dim,
            quantile: self.quantile,
            odd_orders: self.mult.odd,
            even_orders: self.mult.even,
            class_labels: self.stats.keys().copied().collect(),
            class_statistics: self.stats.values().collect(),
        }
        .serialize(serializer)
    }
}

impl TryFrom<GramForm<Vec<f32>>> for GramFitter {
    type Error = Error;

    fn try_from(form: GramForm<Vec<f32>>) -> Result<Self> {
        let mult = Multiplicities {
            odd: form.odd_orders,
            even: form.even_orders,
        };
        let orders = mult.odd + mult.even;
        let counts = [mult.odd, mult.even];
        if !(counts.iter().all(|c| *c >= 0.0 && c.fract() == 0.0) && orders >= 1.0) {
            return Err(Error::custom(format!(
                "its numbers of odd and even orders ({}, {}) are not counts of at least one order",
                mult.odd, mult.even
            )));
        }
        if !(0.0..0.5).contains(&form.quantile) {
            return Err(Error::custom(format!(
                "its quantile {} is outside [0, 0.5)",
                form.quantile
            )));
        }
        check_classes(&form.class_labels)?;
        check_len(
            "its list of class statistics",
            form.class_statistics.len(),
            form.class_labels.len(),
        )?;
        let row = mult.weights().len() * form.dim;
        if row == 0
            || form
                .class_statistics
                .iter()
                .any(|v| !v.len().is_multiple_of(row))
        {
            return Err(Error::custom(format!(
                "its class statistics are not rows of {row} values"
            )));
        }
        Ok(GramFitter {
            dim: form.dim,
            quantile: form.quantile,
            mult,
            stats: form
                .class_labels
                .into_iter()
                .zip(form.class_statistics)
                .collect(),
        })
    }
}

impl PartialState for GramFitter {
    const DETECTORS: &'static [&'static str] = &["Gram"];

    fn detector(&self) -> &'static str {
        "Gram"
    }

    fn width(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl LayerFitter for GramFitter {
    type Fitted = FittedGram;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        let Some(classes) = classes(batch) else {
            return Ok(());
        };
        for (row, class) in batch.features.rows().into_iter().zip(classes) {
            self.mult
                .statistics(row, self.stats.entry(class).or_default());
        }
        Ok(())
    }

    /// Each class's statistics concatenate (its bounds are quantiles,
    /// which do not depend on the order).
    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("Gram", "feature widths", &self.dim, &other.dim)?;
        merge_check("Gram", "quantiles", &self.quantile, &other.quantile)?;
        merge_check("Gram", "orders", &self.mult, &other.mult)?;
        for (class, values) in other.stats {
            self.stats.entry(class).or_default().extend(values);
        }
        Ok(())
    }

    fn finish(self) -> Result<FittedGram> {
        if self.stats.is_empty() {
            return Err(Error::Empty {
                what: "the fit data of Gram".into(),
                hint: "fit on at least one sample".into(),
            });
        }
        let width = self.mult.weights().len() * self.dim;
        let mut bounds = BTreeMap::new();
        for (class, values) in self.stats {
            let n = values.len() / width.max(1);
            if n < 2 {
                return Err(Error::InvalidLabel {
                    label: class,
                    reason: format!(
                        "Gram needs at least 2 fit samples per class to bound its statistics; \
                         class {class} has {n}: fit on more data"
                    ),
                });
            }
            let mut lo = Vec::with_capacity(width);
            let mut hi = Vec::with_capacity(width);
            let mut column = vec![0.0_f32; n];
            for j in 0..width {
                for (i, c) in column.iter_mut().enumerate() {
                    *c = values[i * width + j];
                }
                lo.push(quantile(&mut column, self.quantile));
                hi.push(quantile(&mut column, 1.0 - self.quantile));
            }
            bounds.insert(class, (lo, hi));
        }
        Ok(FittedGram {
            dim: self.dim,
            mult: self.mult,
            weights: self.mult.weights(),
            bounds,
        })
    }
}

/// What Gram learns of a layer: per class, the lower and upper bounds of
/// each statistic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "StoredGram", try_from = "StoredGram")]
pub struct FittedGram {
    dim: usize,
    mult: Multiplicities,
    /// `mult.weights()`, once: the deviation runs per sample and class.
    weights: Vec<f64>,
    bounds: BTreeMap<i64, (Vec<f64>, Vec<f64>)>,
}

impl FittedGram {
    /// The classes that have bounds, ascending.
    pub fn classes(&self) -> Vec<i64> {
        self.bounds.keys().copied().collect()
    }

    /// The weighted deviation of statistics `stats` outside the bounds.
    fn deviation(&self, stats: &[f32], (lo, hi): &(Vec<f64>, Vec<f64>)) -> f64 {
        let mut total = 0.0;
        for (j, &s) in stats.iter().enumerate() {
            let s = f64::from(s);
            let dev = if s < lo[j] {
                (lo[j] - s) / (lo[j].abs() + EPSILON)
            } else if s > hi[j] {
                (s - hi[j]) / (hi[j].abs() + EPSILON)
            } else {
                0.0
            };
            total += self.weights[j / self.dim] * dev;
        }
        total
    }
}

impl ScoreFeatures for FittedGram {
    fn width(&self) -> usize {
        self.dim
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        // The predictions when there are logits; none on precomputed
        // features (whose batch carries no labels either).
        let predicted = if batch.logits.is_some() {
            classes(batch)
        } else {
            None
        };
        let mut stats = Vec::new();
        let mut scores = Array1::zeros(batch.features.nrows());
        for (i, row) in batch.features.axis_iter(Axis(0)).enumerate() {
            stats.clear();
            self.mult.statistics(row, &mut stats);
            scores[i] = match predicted.as_ref().map(|p| p[i]) {
                Some(class) => {
                    let bounds = self.bounds.get(&class).ok_or_else(|| Error::InvalidLabel {
                        label: class,
                        reason: format!(
                            "the model predicts class {class} for sample {i}, a class it never \
                             predicted on the fit data, so Gram has no bounds for it: fit on \
                             data covering every class"
                        ),
                    })?;
                    self.deviation(&stats, bounds)
                }
                None => self
                    .bounds
                    .values()
                    .map(|b| self.deviation(&stats, b))
                    .fold(f64::INFINITY, f64::min),
            } as f32;
        }
        Ok(scores)
    }
}

/// A Gram state in files: the order counts, and per class (ascending) one
/// row of lower and one of upper bounds, statistics in fitting order.
#[derive(Serialize, Deserialize)]
struct StoredGram {
    odd_orders: f64,
    even_orders: f64,
    #[serde(with = "array")]
    classes: Vec<i64>,
    #[serde(with = "array")]
    lower: Array2<f64>,
    #[serde(with = "array")]
    upper: Array2<f64>,
}

impl From<FittedGram> for StoredGram {
    fn from(gram: FittedGram) -> Self {
        let rows = gram.bounds.len();
        let stats = gram.dim * gram.weights.len();
        let (mut lower, mut upper) = (Vec::new(), Vec::new());
        for (lo, hi) in gram.bounds.values() {
            lower.extend_from_slice(lo);
            upper.extend_from_slice(hi);
        }
        // Every class's bounds are `stats` long (fitting makes them so).
        let table = |v: Vec<f64>| Array2::from_shape_vec((rows, stats), v).unwrap_or_default();
        StoredGram {
            odd_orders: gram.mult.odd,
            even_orders: gram.mult.even,
            classes: gram.bounds.keys().copied().collect(),
            lower: table(lower),
            upper: table(upper),
        }
    }
}

impl TryFrom<StoredGram> for FittedGram {
    type Error = Error;

    fn try_from(stored: StoredGram) -> Result<Self> {
        let mult = Multiplicities {
            odd: stored.odd_orders,
            even: stored.even_orders,
        };
        let weights = mult.weights();
        if mult.odd < 0.0 || mult.even < 0.0 || weights.is_empty() {
            return Err(Error::custom(format!(
                "Gram's order counts (odd {}, even {})",
                mult.odd, mult.even
            )));
        }
        let (rows, stats) = stored.lower.dim();
        if stored.upper.dim() != (rows, stats)
            || rows != stored.classes.len()
            || stats == 0
            || stats % weights.len() != 0
        {
            return Err(Error::custom(format!(
                "Gram's bounds {:?} and {:?} for {} classes and {} statistics per feature",
                stored.lower.shape(),
                stored.upper.shape(),
                stored.classes.len(),
                weights.len()
            )));
        }
        let bounds: BTreeMap<i64, (Vec<f64>, Vec<f64>)> = stored
            .classes
            .iter()
            .zip(stored.lower.rows().into_iter().zip(stored.upper.rows()))
            .map(|(&c, (lo, hi))| (c, (lo.to_vec(), hi.to_vec())))
            .collect();
        if bounds.is_empty() || bounds.len() != stored.classes.len() {
            return Err(Error::custom("Gram's classes are empty or repeated"));
        }
        Ok(FittedGram {
            dim: stats / weights.len(),
            mult,
            weights,
            bounds,
        })
    }
}

impl StoredState for FittedGram {
    const KINDS: &'static [&'static str] = &["Gram"];

    fn state_kind(&self) -> &'static str {
        "Gram"
    }

    /// Checked as it is read (its file form is another shape).
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Gram in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "Gram",
    "gram",
    "deviations of Gram-matrix statistics from per-class bounds (features)",
    &[Param {
        name: "quantile",
        doc: "the bounds' quantile [default: 0.01]",
    }],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features],
    },
    |p| {
        let gram = match p.number("quantile")? {
            Some(q) => Gram::new(1..=5, q)?,
            None => Gram::default(),
        };
        built_features(on_layers(gram, p)?)
    },
    load_features::<FittedGram>,
);
