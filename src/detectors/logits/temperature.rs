//! Temperature scaling (Guo et al., ICML 2017) as an OOD score: MSP at the
//! temperature that calibrates the classifier on in-distribution data.

use serde::{Deserialize, Serialize};

use ndarray::{Array1, ArrayView1, ArrayView2};

use super::{
    ScoreLogits, StoredLogits, check_fit_logits, check_label_range, fit_logits, score_rows,
    tempered_exp_sum,
};
use crate::datasets::BatchSource;
use crate::detectors::Detector;
use crate::detectors::registry::{Needs, Registration, built, load_logits};
use crate::error::{Error, Result};
use crate::model::Model;

/// Temperature scaling: the temperature T minimising the negative
/// log-likelihood (1/N) Σ −ln softmax(l_i / T)_{y_i} of labelled
/// in-distribution data, then MSP at that temperature:
/// score = −max softmax(l / T) (higher = more OOD).
///
/// As OpenOOD v1.5's `temperature_scaling` postprocessor, which fits T
/// with L-BFGS from T = 1.5; the likelihood is convex in 1/T, so here its
/// minimum is found exactly, by bisection of the derivative over
/// T ∈ [10⁻³, 10³] (a minimum beyond gives that bound: T = 10⁻³ when every
/// fit sample is classified right with room to spare). Fit data must be
/// labelled; its logits are kept during the fit only (memory O(N · C)).
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{ScoreLogits, TemperatureScaling};
///
/// // Three of four fit samples right, by a logit gap of 2: the likelihood is
/// // best where the softmax of the right class, sigmoid(2 / T), is ¾.
/// let logits = array![[2.0_f32, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]];
/// let labels = array![0_i64, 0, 0, 1];
/// let tempered = TemperatureScaling::new().fit_logits(logits.view(), labels.view())?;
/// // So T = 2 / ln 3.
/// assert!((tempered.temperature() - 2.0 / 3.0_f32.ln()).abs() < 1e-4);
/// assert!((tempered.score_logits(array![[2.0_f32, 0.0]].view())?[0] + 0.75).abs() < 1e-5);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TemperatureScaling;

impl TemperatureScaling {
    /// The smallest temperature searched.
    pub const MIN_TEMPERATURE: f32 = 1e-3;
    /// The largest temperature searched.
    pub const MAX_TEMPERATURE: f32 = 1e3;

    /// Temperature scaling (it has no parameter).
    pub fn new() -> Self {
        TemperatureScaling
    }

    /// Fits the temperature on precomputed logits `(N, C)` of
    /// in-distribution data and their labels. Errors on no rows, labels of
    /// another length or outside `0..C`, and non-finite logits.
    pub fn fit_logits(
        &self,
        logits: ArrayView2<f32>,
        labels: ArrayView1<i64>,
    ) -> Result<FittedTemperatureScaling> {
        check_fit_logits(logits, Some(labels), "temperature scaling")?;
        check_label_range(labels, logits.ncols())?;
        let slope = |beta: f64| nll_slope(logits, labels, beta);
        // β = 1/T; the NLL is convex in β, so its slope only increases.
        let (mut lo, mut hi) = (
            (1.0 / f64::from(Self::MAX_TEMPERATURE)).ln(),
            (1.0 / f64::from(Self::MIN_TEMPERATURE)).ln(),
        );
        let beta = if slope(lo.exp()) >= 0.0 {
            lo.exp()
        } else if slope(hi.exp()) <= 0.0 {
            hi.exp()
        } else {
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if slope(mid.exp()) < 0.0 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            (0.5 * (lo + hi)).exp()
        };
        FittedTemperatureScaling::new((1.0 / beta) as f32)
    }
}

/// d/dβ of the mean NLL at β = 1/T: mean over rows of E_softmax(βl)[l] − l_y.
fn nll_slope(logits: ArrayView2<f32>, labels: ArrayView1<i64>, beta: f64) -> f64 {
    let mut total = 0.0;
    for (row, &y) in logits.rows().into_iter().zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (mut z, mut weighted) = (0.0, 0.0);
        for &v in row {
            let e = (beta * f64::from(v - max)).exp();
            z += e;
            weighted += e * f64::from(v);
        }
        total += weighted / z - f64::from(row[y as usize]);
    }
    total / logits.nrows() as f64
}

impl Detector for TemperatureScaling {
    type Fitted = FittedTemperatureScaling;

    /// Runs `model` over the labelled `fit_data` (required) and fits the
    /// temperature on its logits.
    fn fit_model(
        &self,
        model: &dyn Model,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<FittedTemperatureScaling> {
        let (logits, labels) = fit_logits(model, fit_data, "temperature scaling", true)?;
        let labels = labels.ok_or_else(|| Error::custom("labels were required"))?;
        self.fit_logits(logits.view(), labels.view())
    }
}

/// What temperature scaling learns: the temperature; it scores
/// −max softmax(l / T).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FittedTemperatureScaling {
    temperature: f32,
}

impl FittedTemperatureScaling {
    /// MSP at `temperature`, finite and > 0 (e.g. one fitted elsewhere).
    pub fn new(temperature: f32) -> Result<Self> {
        let fitted = FittedTemperatureScaling { temperature };
        fitted.validate()?;
        Ok(fitted)
    }

    /// The temperature.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }
}

impl ScoreLogits for FittedTemperatureScaling {
    fn name(&self) -> &'static str {
        "TemperatureScaling"
    }

    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        score_rows(logits, |row| {
            -1.0 / tempered_exp_sum(row, self.temperature).1
        })
    }
}

impl StoredLogits for FittedTemperatureScaling {
    const KINDS: &'static [&'static str] = &["TemperatureScaling"];

    fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !(t > 0.0 && t.is_finite()) {
            return Err(Error::invalid(
                "temperature",
                t,
                "must be a finite number > 0",
            ));
        }
        Ok(())
    }
}

/// Temperature scaling in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "TemperatureScaling",
    "temp-scaling",
    "MSP at the temperature fitted on the fit data by likelihood (logits; fit data labelled)",
    &[],
    Needs {
        fit_data: true,
        labels: true,
        capabilities: &[],
    },
    |_| built(TemperatureScaling::new()),
    load_logits::<FittedTemperatureScaling>,
);
