//! SHE, the simplified Hopfield energy (Zhang et al., ICLR 2023).

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, Axis};

use super::PartialState;
use super::partial::{check_classes, check_count, check_len};
use super::stored::StoredState;
use super::traits::merge_check;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, Needs, Registration, built_features, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::linalg::gemm;
use crate::metrics::argmax;
use crate::model::Model;
use serde::{Deserialize, Serialize};

/// SHE: the mean feature μ_c of each class over the in-distribution fit
/// data; score = −max_c ⟨f, μ_c⟩ / D (higher = more OOD).
///
/// Fitted through a model, the means take only the fit samples the model
/// classifies correctly (label = prediction), as in the paper.
/// [`fit_features`](FeatureDetector::fit_features) has no predictions: it averages
/// every sample given, so pass the correctly classified ones there. Every
/// class needs at least two samples. Memory O(classes·D).
/// [`with_input_perturbation`](FeatureDetector::with_input_perturbation) adds ODIN's
/// input step, which the Python toolkit applies by default (ε = 0.0014,
/// T = 1000); here it is off unless asked for, since it needs input
/// gradients.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{FeatureDetector, ScoreFeatures, She};
///
/// let fit = array![[2.0_f32, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 3.0]];
/// let she = She::new().fit_features(fit.view(), array![0_i64, 0, 1, 1].view())?;
/// // Means (3, 0) and (0, 2): −max(3·1, 2·1) / 2 for (1, 1).
/// let scores = she.score_features(array![[1.0_f32, 1.0]].view())?;
/// assert!((scores[0] + 1.5).abs() < 1e-6);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases** (not errors): One class: −(x · mean) / D, a
/// projection on the one mean. Identical fit features: their mean is that
/// feature.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct She {
    options: FeatureOptions,
}

impl She {
    /// SHE on the penultimate layer, without input perturbation.
    pub fn new() -> Self {
        Self::default()
    }
}

impl FeatureDetector for She {
    type Fitter = SheFitter;
    type Fitted = FittedShe;

    fn name(&self) -> &'static str {
        "SHE"
    }

    fn needs_labels(&self) -> bool {
        true
    }

    fn fitter(&self, width: usize, _model: Option<&dyn Model>) -> Result<SheFitter> {
        Ok(SheFitter {
            dim: width,
            sums: BTreeMap::new(),
            seen: BTreeMap::new(),
        })
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// Sums one layer's correctly classified fit features per class.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SheForm")]
pub struct SheFitter {
    dim: usize,
    /// Per class: count and sum of the kept samples.
    sums: BTreeMap<i64, (u64, Array1<f64>)>,
    /// Per class: samples seen, kept or not (for the error message).
    seen: BTreeMap<i64, u64>,
}

/// A [`SheFitter`] in a partial fit's file: the classes ascending, with
/// the samples seen and kept and the sum of those kept (rows of
/// `class_sums`).
#[derive(Serialize, Deserialize)]
struct SheForm {
    dim: usize,
    class_labels: Vec<i64>,
    class_seen: Vec<u64>,
    class_kept: Vec<u64>,
    #[serde(with = "array")]
    class_sums: Array2<f64>,
}

impl Serialize for SheFitter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut class_sums = Array2::zeros((self.seen.len(), self.dim));
        let mut class_kept = Vec::with_capacity(self.seen.len());
        for (mut row, label) in class_sums.rows_mut().into_iter().zip(self.seen.keys()) {
            let (kept, sum) = self
                .sums
                .get(label)
                .map_or((0, None), |(c, s)| (*c, Some(s)));
            class_kept.push(kept);
            if let Some(sum) = sum {
                row.assign(sum);
            }
        }
        SheForm {
            dim: self.dim,
            class_labels: self.seen.keys().copied().collect(),
            class_seen: self.seen.values().copied().collect(),
            class_kept,
            class_sums,
        }
        .serialize(serializer)
    }
}

impl TryFrom<SheForm> for SheFitter {
    type Error = Error;

    fn try_from(form: SheForm) -> Result<Self> {
        let classes = form.class_labels.len();
        check_classes(&form.class_labels)?;
        check_len("its counts of samples seen", form.class_seen.len(), classes)?;
        check_len("its counts of samples kept", form.class_kept.len(), classes)?;
        if form.class_sums.dim() != (classes, form.dim) {
            return Err(Error::custom(format!(
                "its class sums are {:?} for {classes} classes of {} features",
                form.class_sums.shape(),
                form.dim
            )));
        }
        for (&seen, &kept) in form.class_seen.iter().zip(&form.class_kept) {
            check_count(seen, "a class")?;
            if kept > seen {
                return Err(Error::custom(format!(
                    "a class keeps {kept} of {seen} samples"
                )));
            }
        }
        let mut sums = BTreeMap::new();
        let mut seen = BTreeMap::new();
        for (((label, n), kept), sum) in form
            .class_labels
            .into_iter()
            .zip(form.class_seen)
            .zip(form.class_kept)
            .zip(form.class_sums.rows())
        {
            seen.insert(label, n);
            sums.insert(label, (kept, sum.to_owned()));
        }
        Ok(SheFitter {
            dim: form.dim,
            sums,
            seen,
        })
    }
}

impl PartialState for SheFitter {
    const DETECTORS: &'static [&'static str] = &["SHE"];

    fn detector(&self) -> &'static str {
        "SHE"
    }

    fn width(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl LayerFitter for SheFitter {
    type Fitted = FittedShe;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        let Some(labels) = batch.labels else {
            return Ok(());
        };
        for (i, (row, &label)) in batch.features.rows().into_iter().zip(labels).enumerate() {
            *self.seen.entry(label).or_default() += 1;
            let correct = batch
                .logits
                .is_none_or(|logits| argmax(logits.row(i).iter().copied()) as i64 == label);
            let entry = self
                .sums
                .entry(label)
                .or_insert_with(|| (0, Array1::zeros(self.dim)));
            if correct {
                entry.0 += 1;
                entry.1 += &row.mapv(f64::from);
            }
        }
        Ok(())
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("SHE", "feature widths", &self.dim, &other.dim)?;
        for (label, (count, sum)) in other.sums {
            let entry = self
                .sums
                .entry(label)
                .or_insert_with(|| (0, Array1::zeros(self.dim)));
            entry.0 += count;
            entry.1 += &sum;
        }
        for (label, seen) in other.seen {
            *self.seen.entry(label).or_default() += seen;
        }
        Ok(())
    }

    fn finish(self) -> Result<FittedShe> {
        if self.sums.is_empty() {
            return Err(Error::Empty {
                what: "the fit data of SHE".into(),
                hint: "fit on at least one labelled sample".into(),
            });
        }
        let mut means = Array2::zeros((self.sums.len(), self.dim));
        for (mut row, (label, (count, sum))) in means.rows_mut().into_iter().zip(&self.sums) {
            if *count < 2 {
                return Err(Error::InvalidLabel {
                    label: *label,
                    reason: format!(
                        "SHE needs at least 2 correctly classified fit samples per class; \
                         class {label} has {count} of {}: fit on more data",
                        self.seen.get(label).copied().unwrap_or(0)
                    ),
                });
            }
            row.assign(&(sum / *count as f64));
        }
        Ok(FittedShe { means })
    }
}

/// What SHE learns of a layer: the class means `(classes, D)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedShe {
    #[serde(with = "array")]
    means: Array2<f64>,
}

impl FittedShe {
    /// The class means `(classes, D)`, classes in ascending label order.
    pub fn means(&self) -> &Array2<f64> {
        &self.means
    }
}

impl ScoreFeatures for FittedShe {
    fn width(&self) -> usize {
        self.means.ncols()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let d = self.means.ncols() as f64;
        let dots = gemm(
            batch.features.mapv(f64::from).view(),
            self.means.view(),
            true,
        );
        Ok(dots.map_axis(Axis(1), |r| {
            (-r.iter().copied().fold(f64::NEG_INFINITY, f64::max) / d) as f32
        }))
    }
}

impl StoredState for FittedShe {
    const KINDS: &'static [&'static str] = &["SHE"];

    fn state_kind(&self) -> &'static str {
        "SHE"
    }

    fn validate(&self) -> Result<()> {
        if self.means.nrows() == 0 {
            return Err(Error::custom("SHE stores no class mean"));
        }
        Ok(())
    }
}

/// SHE in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "SHE",
    "she",
    "simplified Hopfield energy, SHE (features; fit data labelled)",
    &[],
    Needs {
        fit_data: true,
        labels: true,
        capabilities: &[Capability::Features],
    },
    |p| built_features(on_layers(She::new(), p)?),
    load_features::<FittedShe>,
);
