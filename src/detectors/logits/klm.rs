//! KL matching (Hendrycks et al., ICML 2022, "Scaling out-of-distribution
//! detection for real-world settings").

use serde::{Deserialize, Serialize};

use ndarray::{Array1, Array2, ArrayView2};

use super::{ScoreLogits, StoredLogits, check_fit_logits, fit_logits, score_rows};
use crate::datasets::BatchSource;
use crate::detectors::Detector;
use crate::detectors::file::array;
use crate::detectors::registry::{Needs, Registration, built, load_as};
use crate::detectors::softmax::softmax_f64;
use crate::error::{Error, Result};
use crate::model::Model;

/// KL matching: each class k has a template d_k, the mean softmax of the
/// in-distribution fit samples the model *predicts* as k (labels are not
/// used); an input's score is the smallest KL divergence of its softmax p
/// to a template, min_k KL(p ‖ d_k) = min_k Σ_c p_c ln(p_c / d_kc) (higher =
/// more OOD).
///
/// As OpenOOD v1.5's `klm` postprocessor: a class no fit sample is
/// predicted as gets the one-hot template of that class. In `f64`; a KL
/// beyond f32's range scores f32::MAX. Fitting keeps only the templates
/// (memory O(C²)).
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{Klm, ScoreLogits};
///
/// // Two fit samples, each predicted as its own class.
/// let fit = array![[2.0_f32, 0.0], [0.0, 2.0]];
/// let klm = Klm::new().fit_logits(fit.view())?;
/// let s = klm.score_logits(array![[2.0_f32, 0.0], [0.0, 0.0]].view())?;
/// // The first matches a template exactly; the even one does not.
/// assert!(s[0].abs() < 1e-6 && s[1] > 0.1);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Klm;

impl Klm {
    /// KL matching (it has no parameter).
    pub fn new() -> Self {
        Klm
    }

    /// Fits the templates on precomputed logits `(N, C)` of
    /// in-distribution data. Errors on no rows and non-finite logits.
    pub fn fit_logits(&self, logits: ArrayView2<f32>) -> Result<FittedKlm> {
        check_fit_logits(logits, None, "KLM")?;
        let c = logits.ncols();
        let mut sums = Array2::<f64>::zeros((c, c));
        let mut counts = vec![0_u64; c];
        for row in logits.rows() {
            let p = softmax_f64(row);
            let k = crate::metrics::argmax(row.iter().copied());
            counts[k] += 1;
            sums.row_mut(k).zip_mut_with(&p, |s, &v| *s += v);
        }
        for (k, mut template) in sums.rows_mut().into_iter().enumerate() {
            if counts[k] == 0 {
                template[k] = 1.0;
            } else {
                template /= counts[k] as f64;
            }
        }
        FittedKlm::new(sums)
    }
}

impl Detector for Klm {
    type Fitted = FittedKlm;

    /// Runs `model` over `fit_data` (required; labels not needed) and fits
    /// the templates on its logits.
    fn fit_model(
        &self,
        model: &dyn Model,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<FittedKlm> {
        let (logits, _) = fit_logits(model, fit_data, "KLM", false)?;
        self.fit_logits(logits.view())
    }
}

/// What KL matching learns: one template distribution per class, `(C, C)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedKlm {
    #[serde(with = "array")]
    templates: Array2<f64>,
}

impl FittedKlm {
    /// Templates `(C, C)`: row k the mean softmax of class k, each row a
    /// distribution (non-negative, summing to 1 within 10⁻⁶).
    pub fn new(templates: Array2<f64>) -> Result<Self> {
        let klm = FittedKlm { templates };
        klm.validate()?;
        Ok(klm)
    }

    /// The templates `(C, C)`.
    pub fn templates(&self) -> &Array2<f64> {
        &self.templates
    }
}

impl ScoreLogits for FittedKlm {
    fn name(&self) -> &'static str {
        "KLM"
    }

    fn score_logits(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        let c = self.templates.ncols();
        if logits.ncols() != c {
            return Err(Error::ShapeMismatch {
                what: "logits scored by KLM".into(),
                expected: format!("(N, {c}), the classes at fit time"),
                found: format!("{:?}", logits.shape()),
            });
        }
        score_rows(logits, |row| {
            let p = softmax_f64(row);
            let best = self
                .templates
                .rows()
                .into_iter()
                .map(|d| {
                    p.iter()
                        .zip(d)
                        .filter(|(pc, _)| **pc > 0.0)
                        .map(|(&pc, &dc)| pc * (pc / dc).ln())
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min);
            best.min(f64::from(f32::MAX)) as f32
        })
    }
}

impl StoredLogits for FittedKlm {
    const KINDS: &'static [&'static str] = &["KLM"];

    fn validate(&self) -> Result<()> {
        let templates = &self.templates;
        if templates.nrows() == 0 || templates.nrows() != templates.ncols() {
            return Err(Error::ShapeMismatch {
                what: "KLM templates".into(),
                expected: "(C, C): one distribution over the C classes per class".into(),
                found: format!("{:?}", templates.shape()),
            });
        }
        for (k, row) in templates.rows().into_iter().enumerate() {
            let sum: f64 = row.sum();
            if row.iter().any(|&v| !(0.0..=1.0).contains(&v)) || (sum - 1.0).abs() > 1e-6 {
                return Err(Error::invalid(
                    "templates",
                    format!("row {k}"),
                    "each template must be a probability distribution",
                ));
            }
        }
        Ok(())
    }
}

/// KLM in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "KLM",
    "klm",
    "KL matching to the mean softmax of each predicted class (logits; fit data)",
    &[],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[],
    },
    |_| built(Klm::new()),
    load_as::<FittedKlm>,
);
