//! OpenMax (Bendale & Boult, CVPR 2016): extreme-value models of the
//! distance of the logits to each class's mean, and an "unknown" class.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

use super::{
    ScoreLogits, StoredLogits, check_fit_logits, check_label_range, fit_logits, score_rows,
};
use crate::datasets::BatchSource;
use crate::detectors::Detector;
use crate::detectors::file::array;
use crate::detectors::registry::{Needs, Param, Registration, built, load_as};
use crate::error::{Error, Result};
use crate::model::Model;
use serde::{Deserialize, Serialize};

/// A two-parameter Weibull distribution of `x + shift`, as libMR's
/// `FitHigh` fits the largest distances: the tail is shifted so that its
/// smallest value sits at libMR's `translate_amount`, and the shape and
/// scale are the maximum likelihood ones of the shifted tail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weibull {
    shape: f64,
    scale: f64,
    shift: f64,
}

impl Weibull {
    /// Fits the largest `tail` values of `values` (libMR's `FitHigh`),
    /// shifted so that the smallest of them sits at `translate` (libMR's
    /// `translate_amount`: 1 in libMR 0.1.9 and later, which OpenOOD v1.5
    /// runs; 10 000 in earlier versions). Errors with fewer than 2 values,
    /// when the tail's values are all equal (no spread to fit), or on a
    /// `translate` that is not finite and positive.
    pub fn fit_high(values: &[f64], tail: usize, translate: f64) -> Result<Weibull> {
        check_translate(translate)?;
        let mut sorted: Vec<f64> = values.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        sorted.truncate(tail.max(2));
        let smallest = sorted.last().copied().unwrap_or(0.0);
        let largest = sorted.first().copied().unwrap_or(0.0);
        if sorted.len() < 2 || largest <= smallest || !largest.is_finite() {
            return Err(Error::numerical(
                "OpenMax's Weibull fit",
                format!(
                    "its tail of {} distances has no spread: it needs at least 2 distinct values",
                    sorted.len()
                ),
            ));
        }
        let shift = translate - smallest;
        let x: Vec<f64> = sorted.iter().map(|v| v + shift).collect();
        let (shape, scale) = weibull_mle(&x);
        Ok(Weibull {
            shape,
            scale,
            shift,
        })
    }

    /// A Weibull from its parameters (shape and scale > 0, all finite).
    pub fn new(shape: f64, scale: f64, shift: f64) -> Result<Weibull> {
        let positive = shape > 0.0 && scale > 0.0;
        if !(positive && shape.is_finite() && scale.is_finite() && shift.is_finite()) {
            return Err(Error::invalid(
                "weibull",
                format!("shape {shape}, scale {scale}, shift {shift}"),
                "shape and scale must be finite and > 0, the shift finite",
            ));
        }
        Ok(Weibull {
            shape,
            scale,
            shift,
        })
    }

    /// The shape k.
    pub fn shape(&self) -> f64 {
        self.shape
    }

    /// The scale λ.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The shift added to a value before the distribution is read.
    pub fn shift(&self) -> f64 {
        self.shift
    }

    /// P(X ≤ x + shift) = 1 − exp(−((x + shift)/λ)^k), 0 below 0 (libMR's
    /// `W_score`).
    pub fn cdf(&self, x: f64) -> f64 {
        let t = x + self.shift;
        if t <= 0.0 {
            return 0.0;
        }
        1.0 - (-(self.shape * (t / self.scale).ln()).exp()).exp()
    }
}

/// A translate amount is finite and positive (the shifted tail is then
/// positive, as a Weibull's support).
fn check_translate(translate: f64) -> Result<()> {
    if translate.is_finite() && translate > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "translate",
            translate,
            "the shifted tail must start above 0: give a finite amount > 0 (libMR's default is \
             1; before libMR 0.1.9 it was 10000)",
        ))
    }
}

/// Maximum-likelihood shape and scale of positive samples `x` (not all
/// equal): the root in k of Σ xᵏ ln x / Σ xᵏ − 1/k − mean ln x, by
/// bisection in ln k, with x scaled by its maximum so that no power
/// overflows.
fn weibull_mle(x: &[f64]) -> (f64, f64) {
    let top = x.iter().copied().fold(f64::MIN_POSITIVE, f64::max);
    let logs: Vec<f64> = x.iter().map(|v| (v / top).ln()).collect();
    let mean_log = logs.iter().sum::<f64>() / logs.len() as f64;
    let equation = |k: f64| {
        let (mut num, mut den) = (0.0, 0.0);
        for &l in &logs {
            let w = (k * l).exp();
            num += w * l;
            den += w;
        }
        num / den - 1.0 / k - mean_log
    };
    let (mut lo, mut hi) = (1e-6_f64.ln(), 1e12_f64.ln());
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if equation(mid.exp()) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let k = (0.5 * (lo + hi)).exp();
    let mean_power = logs.iter().map(|&l| (k * l).exp()).sum::<f64>() / logs.len() as f64;
    (k, top * mean_power.powf(1.0 / k))
}

/// OpenMax on the logits: for each class c, the mean logit vector (MAV)
/// μ_c of the fit samples of class c the model classifies right, and a
/// Weibull model of the largest of their distances ‖l − μ_c‖. An input's
/// top `alpha` classes (by logit) are revised: the r-th gets weight
/// ω = (alpha + 1 − r)/alpha, w_c = the Weibull CDF of its distance to μ_c,
/// l̂_c = l_c (1 − ω w_c), and the removed mass Σ_c (l_c − l̂_c) becomes
/// the logit of an unknown class. The score is the unknown class's
/// probability, exp(Σ (l − l̂)) / (Σ_c exp(l̂_c) + exp(Σ (l − l̂)))
/// (higher = more OOD).
///
/// As OpenOOD v1.5's `openmax` postprocessor, which runs libMR: Euclidean
/// distances, a tail of 20, alpha 3, and libMR's `FitHigh` (see
/// [`Weibull`]), written here, with libMR's translate amount of 1 (that of
/// libMR 0.1.9 and later, which OpenOOD installs; earlier versions shifted
/// by 10 000, [`OpenMax::with_translate`]). Fit data must be labelled; every class it
/// holds needs at least 2 correctly classified fit samples at distinct
/// distances (the error names the class). A class of the network absent
/// from the fit labels (a network with more outputs than the classes it
/// was trained on) has no mean to be near: every input counts as beyond
/// its tail (w = 1). Fitting keeps the fit logits until it ends (memory
/// O(N · C)).
///
/// ```
/// use ndarray::{Array2, array};
/// use oodkit::detectors::{OpenMax, ScoreLogits};
///
/// // Two classes, fit logits spread around (4, 0) and (0, 4).
/// let fit = Array2::from_shape_fn((40, 2), |(i, j)| {
///     let spread = (i / 2) as f32 * 0.05;
///     if j == i % 2 { 4.0 + spread } else { spread }
/// });
/// let labels = ndarray::Array1::from_shape_fn(40, |i| (i % 2) as i64);
/// let openmax = OpenMax::new(20, 2)?.fit_logits(fit.view(), labels.view())?;
/// let s = openmax.score_logits(array![[4.5_f32, 0.5], [30.0, 30.0]].view())?;
/// // Near a class mean the unknown class has little mass; far from both, most.
/// assert!(s[0] < 0.1 && s[1] > 0.5);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenMax {
    tail: usize,
    alpha: usize,
    translate: f64,
}

impl Default for OpenMax {
    /// A tail of 20, alpha 3, translate 1 (OpenOOD's values).
    fn default() -> Self {
        OpenMax {
            tail: 20,
            alpha: 3,
            translate: Self::DEFAULT_TRANSLATE,
        }
    }
}

impl OpenMax {
    /// libMR's default translate amount since 0.1.9 (what OpenOOD v1.5
    /// runs).
    pub const DEFAULT_TRANSLATE: f64 = 1.0;

    /// Shifts each class's fitted tail so that its smallest distance sits
    /// at `translate` (default [`OpenMax::DEFAULT_TRANSLATE`]; 10 000
    /// reproduces libMR before 0.1.9). Errors unless finite and > 0.
    pub fn with_translate(mut self, translate: f64) -> Result<Self> {
        check_translate(translate)?;
        self.translate = translate;
        Ok(self)
    }

    /// The translate amount of the Weibull fits.
    pub fn translate(&self) -> f64 {
        self.translate
    }

    /// OpenMax fitting the largest `tail` distances of each class (≥ 2) and
    /// revising an input's top `alpha` classes (≥ 1).
    pub fn new(tail: usize, alpha: usize) -> Result<Self> {
        if tail < 2 {
            return Err(Error::invalid(
                "tail",
                tail,
                "a Weibull fit needs a tail of at least 2 distances (OpenOOD uses 20)",
            ));
        }
        if alpha == 0 {
            return Err(Error::invalid(
                "alpha",
                alpha,
                "revise at least the top class (OpenOOD uses 3)",
            ));
        }
        Ok(OpenMax {
            tail,
            alpha,
            translate: Self::DEFAULT_TRANSLATE,
        })
    }

    /// Fits on precomputed logits `(N, C)` of in-distribution data and
    /// their labels. Errors on no rows, labels of another length or outside
    /// `0..C`, non-finite logits, alpha above C, and a class without 2
    /// correctly classified samples at distinct distances.
    pub fn fit_logits(
        &self,
        logits: ArrayView2<f32>,
        labels: ArrayView1<i64>,
    ) -> Result<FittedOpenMax> {
        check_fit_logits(logits, Some(labels), "OpenMax")?;
        let c = logits.ncols();
        check_label_range(labels, c)?;
        if self.alpha > c {
            return Err(Error::invalid(
                "alpha",
                self.alpha,
                format!("exceeds the {c} classes: revise at most all of them"),
            ));
        }
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); c];
        let mut present = vec![false; c];
        for (i, (row, &y)) in logits.rows().into_iter().zip(labels).enumerate() {
            present[y as usize] = true;
            if crate::metrics::argmax(row.iter().copied()) == y as usize {
                members[y as usize].push(i);
            }
        }
        let mut means = Array2::<f64>::zeros((c, c));
        let mut weibulls = Vec::with_capacity(c);
        for (k, rows) in members.iter().enumerate() {
            if !present[k] {
                weibulls.push(None);
                continue;
            }
            if rows.len() < 2 {
                return Err(Error::InvalidLabel {
                    label: k as i64,
                    reason: format!(
                        "OpenMax needs at least 2 fit samples of class {k} the model classifies \
                         right; it has {}: fit on more data of it",
                        rows.len()
                    ),
                });
            }
            let mut mean = Array1::<f64>::zeros(c);
            for &i in rows {
                mean.zip_mut_with(&logits.row(i), |m, &v| *m += f64::from(v));
            }
            mean /= rows.len() as f64;
            let distances: Vec<f64> = rows
                .iter()
                .map(|&i| distance(logits.row(i), mean.view()))
                .collect();
            let weibull =
                Weibull::fit_high(&distances, self.tail, self.translate).map_err(|e| {
                    Error::InvalidLabel {
                        label: k as i64,
                        reason: format!("class {k}: {e}"),
                    }
                })?;
            means.row_mut(k).assign(&mean);
            weibulls.push(Some(weibull));
        }
        FittedOpenMax::new(means, weibulls, self.alpha)
    }
}

/// ‖l − μ‖ in f64.
fn distance(l: ArrayView1<f32>, mean: ArrayView1<f64>) -> f64 {
    l.iter()
        .zip(mean)
        .map(|(&v, &m)| (f64::from(v) - m).powi(2))
        .sum::<f64>()
        .sqrt()
}

impl Detector for OpenMax {
    type Fitted = FittedOpenMax;

    /// Runs `model` over the labelled `fit_data` (required) and fits on
    /// its logits.
    fn fit_model(
        &self,
        model: &dyn Model,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<FittedOpenMax> {
        let (logits, labels) = fit_logits(model, fit_data, "OpenMax", true)?;
        let labels = labels.ok_or_else(|| Error::custom("labels were required"))?;
        self.fit_logits(logits.view(), labels.view())
    }
}

/// What OpenMax learns: each class's mean logit vector `(C, C)` and
/// Weibull model (none for a class absent from the fit data), and alpha.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "StoredOpenMax", try_from = "StoredOpenMax")]
pub struct FittedOpenMax {
    means: Array2<f64>,
    weibulls: Vec<Option<Weibull>>,
    alpha: usize,
}

impl FittedOpenMax {
    /// The parts, checked: means `(C, C)`, one Weibull model per class
    /// (`None`: the class was absent from the fit data), 1 ≤ alpha ≤ C.
    pub fn new(means: Array2<f64>, weibulls: Vec<Option<Weibull>>, alpha: usize) -> Result<Self> {
        let openmax = FittedOpenMax {
            means,
            weibulls,
            alpha,
        };
        openmax.validate()?;
        Ok(openmax)
    }

    /// The mean logit vector of each class `(C, C)`.
    pub fn means(&self) -> &Array2<f64> {
        &self.means
    }

    /// Each class's Weibull model (`None` for a class absent from the fit
    /// data).
    pub fn weibulls(&self) -> &[Option<Weibull>] {
        &self.weibulls
    }

    /// The number of top classes revised.
    pub fn alpha(&self) -> usize {
        self.alpha
    }

    /// The probability of the unknown class for one row of logits.
    fn unknown(&self, row: ArrayView1<f32>) -> f64 {
        let c = row.len();
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let mut omega = vec![0.0; c];
        for (r, &k) in order.iter().take(self.alpha).enumerate() {
            omega[k] = (self.alpha - r) as f64 / self.alpha as f64;
        }
        let mut revised = Vec::with_capacity(c + 1);
        let mut removed = 0.0;
        for k in 0..c {
            let l = f64::from(row[k]);
            let w = match &self.weibulls[k] {
                Some(weibull) => weibull.cdf(distance(row, self.means.row(k))),
                None => 1.0,
            };
            let kept = l * (1.0 - w * omega[k]);
            removed += l - kept;
            revised.push(kept);
        }
        revised.push(removed);
        let max = revised.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = revised.iter().map(|v| (v - max).exp()).sum();
        (removed - max).exp() / total
    }
}

impl ScoreLogits for FittedOpenMax {
    fn name(&self) -> &'static str {
        "OpenMax"
    }

    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        let c = self.means.nrows();
        if logits.ncols() != c {
            return Err(Error::ShapeMismatch {
                what: "logits scored by OpenMax".into(),
                expected: format!("(N, {c}), the classes at fit time"),
                found: format!("{:?}", logits.shape()),
            });
        }
        // An infinite logit has no distance to a class mean.
        crate::model::check_finite(logits, "logits scored by OpenMax")?;
        score_rows(logits, |row| self.unknown(row) as f32)
    }
}

/// OpenMax in files: `alpha` in the header; the means, one row
/// (shape, scale, shift) per class in `weibulls` and a 0 / 1 flag per class
/// in `fitted` (0: no model, its row zeros).
#[derive(Serialize, Deserialize)]
struct StoredOpenMax {
    alpha: usize,
    #[serde(with = "array")]
    means: Array2<f64>,
    #[serde(with = "array")]
    weibulls: Array2<f64>,
    #[serde(with = "array")]
    fitted: Vec<i64>,
}

impl From<FittedOpenMax> for StoredOpenMax {
    fn from(openmax: FittedOpenMax) -> Self {
        let weibulls = Array2::from_shape_fn((openmax.weibulls.len(), 3), |(k, p)| {
            openmax.weibulls[k].map_or(0.0, |w| [w.shape, w.scale, w.shift][p])
        });
        StoredOpenMax {
            alpha: openmax.alpha,
            fitted: openmax
                .weibulls
                .iter()
                .map(|w| i64::from(w.is_some()))
                .collect(),
            means: openmax.means,
            weibulls,
        }
    }
}

impl TryFrom<StoredOpenMax> for FittedOpenMax {
    type Error = Error;

    fn try_from(stored: StoredOpenMax) -> Result<Self> {
        if stored.weibulls.ncols() != 3 || stored.weibulls.nrows() != stored.fitted.len() {
            return Err(Error::custom(format!(
                "OpenMax's Weibull table is {:?} with {} flags: it needs (classes, 3) and a flag \
                 per class",
                stored.weibulls.shape(),
                stored.fitted.len()
            )));
        }
        let weibulls = stored
            .weibulls
            .rows()
            .into_iter()
            .zip(&stored.fitted)
            .map(|(r, &f)| match f {
                0 => Ok(None),
                1 => Weibull::new(r[0], r[1], r[2]).map(Some),
                _ => Err(Error::custom("OpenMax's \"fitted\" flags are not 0 or 1")),
            })
            .collect::<Result<Vec<_>>>()?;
        FittedOpenMax::new(stored.means, weibulls, stored.alpha)
    }
}

impl StoredLogits for FittedOpenMax {
    const KINDS: &'static [&'static str] = &["OpenMax"];

    fn validate(&self) -> Result<()> {
        let (means, weibulls, alpha) = (&self.means, &self.weibulls, self.alpha);
        let c = means.nrows();
        if c == 0 || means.ncols() != c || weibulls.len() != c {
            return Err(Error::ShapeMismatch {
                what: "OpenMax's class means and Weibull models".into(),
                expected: "means (C, C) and C Weibull models".into(),
                found: format!(
                    "means {:?}, {} Weibull models",
                    means.shape(),
                    weibulls.len()
                ),
            });
        }
        if alpha == 0 || alpha > c {
            return Err(Error::invalid(
                "alpha",
                alpha,
                format!("must be in 1..={c}"),
            ));
        }
        Ok(())
    }
}

/// OpenMax in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "OpenMax",
    "openmax",
    "OpenMax: Weibull models of the distance to each class's mean logits, an unknown class \
     (logits; fit data labelled)",
    &[
        Param {
            name: "tail",
            doc: "the largest distances each Weibull model fits [default: 20]",
        },
        Param {
            name: "alpha",
            doc: "the top classes revised [default: 3]",
        },
        Param {
            name: "translate",
            doc: "where each class's tail starts once shifted, libMR's translate_amount \
                  [default: 1, as libMR >= 0.1.9 and OpenOOD; 10000 before]",
        },
    ],
    Needs {
        fit_data: true,
        labels: true,
        capabilities: &[],
    },
    |p| {
        let default = OpenMax::default();
        built(
            OpenMax::new(
                p.count("tail")?.unwrap_or(default.tail),
                p.count("alpha")?.unwrap_or(default.alpha),
            )?
            .with_translate(p.number("translate")?.unwrap_or(default.translate))?,
        )
    },
    load_as::<FittedOpenMax>,
);
