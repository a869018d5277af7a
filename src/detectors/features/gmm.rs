//! Class-conditional Gaussians, one covariance per class (quadratic
//! discriminant analysis; Lee et al., NeurIPS 2018, share one covariance):
//! the features' density under the mixture of the classes.

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, Array3, Axis};
use serde::{Deserialize, Serialize};

use super::PartialState;
use super::moments::ClassMoments;
use super::partial::{check_classes, check_len};
use super::stored::StoredState;
use super::traits::merge_check;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, Needs, Param, Registration, built_features, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::linalg::{gemm, symmetric_eigen};
use crate::model::Model;

/// GMM: each class c of the fit data is a Gaussian N(μ_c, Σ_c) with its own
/// covariance (where [`Mahalanobis`](super::Mahalanobis), after Lee et al.,
/// NeurIPS 2018, shares one; with one per class it is quadratic
/// discriminant analysis's generative model), and
/// weight π_c, its share of the fit samples; the score is the negative log
/// density of the feature under the mixture (higher = more OOD):
/// score = −ln Σ_c π_c N(f; μ_c, Σ_c + εI).
///
/// The regularisation ε = `regularization` × tr(Σ_c)/D is relative to each
/// class's mean variance, so it does not depend on the features' scale
/// (default 10⁻⁶, the size of scikit-learn's `reg_covar`); it keeps a class
/// with fewer samples than dimensions invertible. Everything is in `f64`,
/// the moments stream (Chan et al.'s update, memory O(classes · D²)), and
/// the density is combined in log space (no underflow far from every
/// class). Needs labels, at least 2 samples per class.
///
/// OpenOOD v1.5's `gmm` postprocessor is another method by that name (a
/// tied-covariance mixture of 50 clusters on PCA-reduced features, over
/// several layers); this one follows the class-conditional form.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{FeatureDetector, Gmm, ScoreFeatures};
///
/// // Class 0 spreads along x, class 1 (around (10, 0)) along y.
/// let fit = array![
///     [-1.0_f32, 0.1], [1.0, 0.1], [0.0, -0.2],
///     [10.0, 1.0], [10.1, -1.0], [9.9, 0.0],
/// ];
/// let labels = array![0_i64, 0, 0, 1, 1, 1];
/// let gmm = Gmm::new(0.0)?.fit_features(fit.view(), labels.view())?;
/// let s = gmm.score_features(array![[3.0_f32, 0.0], [0.0, 3.0]].view())?;
/// // Along class 0's long axis is less unusual than across it.
/// assert!(s[0] < s[1]);
/// assert_eq!(gmm.classes(), vec![0, 1]);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Gmm {
    regularization: f64,
    options: FeatureOptions,
}

impl Default for Gmm {
    /// Regularisation 10⁻⁶ of each class's mean variance, on the
    /// penultimate layer.
    fn default() -> Self {
        Gmm {
            regularization: 1e-6,
            options: FeatureOptions::default(),
        }
    }
}

impl Gmm {
    /// Class Gaussians whose covariances get `regularization` (finite,
    /// ≥ 0) times their mean variance added to the diagonal.
    pub fn new(regularization: f64) -> Result<Self> {
        if !(regularization >= 0.0 && regularization.is_finite()) {
            return Err(Error::invalid(
                "regularization",
                regularization,
                "must be finite and ≥ 0 (a fraction of each class's mean variance, e.g. 1e-6)",
            ));
        }
        Ok(Gmm {
            regularization,
            ..Gmm::default()
        })
    }

    /// The regularisation, relative to each class's mean variance.
    pub fn regularization(&self) -> f64 {
        self.regularization
    }
}

impl FeatureDetector for Gmm {
    type Fitter = GmmFitter;
    type Fitted = FittedGmm;

    fn name(&self) -> &'static str {
        "GMM"
    }

    fn needs_labels(&self) -> bool {
        true
    }

    fn fitter(&self, width: usize, _model: Option<&dyn Model>) -> Result<GmmFitter> {
        Ok(GmmFitter {
            regularization: self.regularization,
            width,
            classes: BTreeMap::new(),
        })
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// Streams each class's mean and scatter.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "GmmForm<Array2<f64>>")]
pub struct GmmFitter {
    regularization: f64,
    width: usize,
    classes: BTreeMap<i64, ClassMoments>,
}

/// A [`GmmFitter`] in a partial fit's file: the classes ascending, with
/// their counts, means (rows of `class_means`) and scatters (the arrays
/// `class_scatters.{i}`, lower triangles as accumulated).
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "S: array::ToArray", deserialize = "S: array::FromArray"))]
struct GmmForm<S> {
    regularization: f64,
    width: usize,
    class_labels: Vec<i64>,
    class_counts: Vec<u64>,
    #[serde(with = "array")]
    class_means: Array2<f64>,
    #[serde(with = "array::list")]
    class_scatters: Vec<S>,
}

impl Serialize for GmmFitter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut class_means = Array2::zeros((self.classes.len(), self.width));
        let mut class_counts = Vec::with_capacity(self.classes.len());
        for (mut row, (label, moments)) in class_means.rows_mut().into_iter().zip(&self.classes) {
            if let Some(class) = moments.classes().get(label) {
                row.assign(&class.mean);
                class_counts.push(class.count);
            }
        }
        GmmForm {
            regularization: self.regularization,
            width: self.width,
            class_labels: self.classes.keys().copied().collect(),
            class_counts,
            class_means,
            class_scatters: self
                .classes
                .values()
                .map(ClassMoments::raw_within)
                .collect(),
        }
        .serialize(serializer)
    }
}

impl TryFrom<GmmForm<Array2<f64>>> for GmmFitter {
    type Error = Error;

    fn try_from(form: GmmForm<Array2<f64>>) -> Result<Self> {
        Gmm::new(form.regularization)?;
        let classes = form.class_labels.len();
        check_classes(&form.class_labels)?;
        check_len("its class counts", form.class_counts.len(), classes)?;
        check_len("its class scatters", form.class_scatters.len(), classes)?;
        if form.class_means.dim() != (classes, form.width) {
            return Err(Error::custom(format!(
                "its class means are {:?} for {classes} classes of {} features",
                form.class_means.shape(),
                form.width
            )));
        }
        let moments = form
            .class_labels
            .iter()
            .zip(form.class_counts)
            .zip(form.class_means.rows())
            .zip(form.class_scatters)
            .map(|(((&label, count), mean), scatter)| {
                ClassMoments::of_one_class(label, count, mean.to_owned(), scatter)
                    .map(|m| (label, m))
            })
            .collect::<Result<_>>()?;
        Ok(GmmFitter {
            regularization: form.regularization,
            width: form.width,
            classes: moments,
        })
    }
}

impl PartialState for GmmFitter {
    const DETECTORS: &'static [&'static str] = &["GMM"];

    fn detector(&self) -> &'static str {
        "GMM"
    }

    fn width(&self) -> usize {
        self.width
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl LayerFitter for GmmFitter {
    type Fitted = FittedGmm;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        let Some(labels) = batch.labels else {
            return Ok(());
        };
        let mut rows: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, &label) in labels.iter().enumerate() {
            rows.entry(label).or_default().push(i);
        }
        for (label, rows) in rows {
            let features = batch.features.select(Axis(0), &rows);
            let same = Array1::from_elem(rows.len(), label);
            self.classes
                .entry(label)
                .or_insert_with(|| ClassMoments::new(self.width, false))
                .update(features.view(), same.view());
        }
        Ok(())
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check(
            "GMM",
            "regularizations",
            &self.regularization,
            &other.regularization,
        )?;
        merge_check("GMM", "feature widths", &self.width, &other.width)?;
        for (label, moments) in other.classes {
            match self.classes.get_mut(&label) {
                Some(mine) => mine.absorb(moments),
                None => {
                    self.classes.insert(label, moments);
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<FittedGmm> {
        if self.classes.is_empty() {
            return Err(Error::Empty {
                what: "the fit data of GMM".into(),
                hint: "fit on at least one labelled batch of in-distribution data".into(),
            });
        }
        let d = self.width;
        let total: u64 = self.classes.values().map(ClassMoments::count).sum();
        let c = self.classes.len();
        let mut means = Array2::zeros((c, d));
        let mut precisions = Array3::zeros((c, d, d));
        let mut log_norms = Array1::zeros(c);
        for (k, (&label, moments)) in self.classes.iter().enumerate() {
            moments.require_per_class(2, "GMM")?;
            let n = moments.count() as f64;
            let mean = &moments.classes()[&label].mean;
            let mut cov = moments.within() / n;
            let ridge = self.regularization * cov.diag().sum() / d as f64;
            cov.diag_mut().mapv_inplace(|v| v + ridge);
            let (values, vectors) = symmetric_eigen(&cov, "a class covariance of GMM")?;
            let smallest = values.iter().copied().fold(f64::INFINITY, f64::min);
            let largest = values.iter().copied().fold(0.0, f64::max);
            if !(smallest > largest * 1e-15 && largest > 0.0) {
                return Err(Error::InvalidLabel {
                    label,
                    reason: format!(
                        "GMM's covariance of class {label} is singular (its fit features span \
                         fewer than {d} dimensions): raise the regularization (e.g. \
                         Gmm::new(1e-3)) or fit on more samples of it"
                    ),
                });
            }
            // P = V diag(1/λ) Vᵀ; ln N's constant: −½ (ln|Σ| + D ln 2π).
            let scaled = &vectors / &values.view().insert_axis(Axis(0));
            precisions.index_axis_mut(Axis(0), k).assign(&gemm(
                scaled.view(),
                vectors.view(),
                true,
            ));
            means.row_mut(k).assign(mean);
            let log_det: f64 = values.iter().map(|v| v.ln()).sum();
            log_norms[k] = (n / total as f64).ln()
                - 0.5 * (log_det + d as f64 * (2.0 * std::f64::consts::PI).ln());
        }
        Ok(FittedGmm {
            regularization: self.regularization,
            classes: self.classes.keys().copied().collect(),
            means,
            precisions,
            log_norms,
        })
    }
}

/// What GMM learns of a layer: per class its mean, the inverse of its
/// regularised covariance, and ln π_c − ½ ln|2πΣ_c|, in `f64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedGmm {
    regularization: f64,
    #[serde(with = "array")]
    classes: Vec<i64>,
    #[serde(with = "array")]
    means: Array2<f64>,
    #[serde(with = "array")]
    precisions: Array3<f64>,
    #[serde(with = "array")]
    log_norms: Array1<f64>,
}

impl FittedGmm {
    /// The classes, ascending.
    pub fn classes(&self) -> Vec<i64> {
        self.classes.clone()
    }

    /// Each class's mean `(classes, D)`.
    pub fn means(&self) -> &Array2<f64> {
        &self.means
    }

    /// The log density ln p(f) of each row under the mixture.
    pub fn log_density(&self, features: ndarray::ArrayView2<f32>) -> Array1<f64> {
        let x = features.mapv(f64::from);
        let mut terms = Array2::zeros((x.nrows(), self.classes.len()));
        for (k, mut column) in terms.columns_mut().into_iter().enumerate() {
            let centred = &x - &self.means.row(k);
            let projected = gemm(
                centred.view(),
                self.precisions.index_axis(Axis(0), k),
                false,
            );
            let forms = (&projected * &centred).sum_axis(Axis(1));
            column.assign(&forms.mapv(|q| self.log_norms[k] - 0.5 * q));
        }
        terms.map_axis(Axis(1), |row| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            max + row.iter().map(|&t| (t - max).exp()).sum::<f64>().ln()
        })
    }
}

impl ScoreFeatures for FittedGmm {
    fn width(&self) -> usize {
        self.means.ncols()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        Ok(self.log_density(batch.features).mapv(|l| (-l) as f32))
    }
}

impl StoredState for FittedGmm {
    const KINDS: &'static [&'static str] = &["GMM"];

    fn state_kind(&self) -> &'static str {
        "GMM"
    }

    fn validate(&self) -> Result<()> {
        let (c, d) = (self.classes.len(), self.means.ncols());
        if c == 0 || self.classes.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::custom(
                "GMM's classes are empty, repeated or unordered",
            ));
        }
        if self.means.nrows() != c
            || self.precisions.dim() != (c, d, d)
            || self.log_norms.len() != c
        {
            return Err(Error::custom(format!(
                "GMM's arrays do not agree: {c} classes, means {:?}, precisions {:?}, log \
                 norms ({})",
                self.means.shape(),
                self.precisions.shape(),
                self.log_norms.len()
            )));
        }
        Ok(())
    }
}

/// GMM in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "GMM",
    "gmm",
    "class-conditional Gaussians, one covariance per class, GMM (features; fit data labelled)",
    &[Param {
        name: "regularization",
        doc: "added to each covariance's diagonal [default: 1e-6]",
    }],
    Needs {
        fit_data: true,
        labels: true,
        capabilities: &[Capability::Features],
    },
    |p| {
        let gmm = match p.number("regularization")? {
            Some(r) => Gmm::new(r)?,
            None => Gmm::default(),
        };
        built_features(on_layers(gmm, p)?)
    },
    load_features::<FittedGmm>,
);
