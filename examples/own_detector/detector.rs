//! A detector written outside oodkit: the standardised distance of a
//! feature vector to the mean of the fit features (a diagonal Mahalanobis
//! distance). Everything here uses the crate's public API only; the
//! example (`main.rs`) and a test (`tests/own_detector.rs`) share it.

use ndarray::{Array1, ArrayView2};
use oodkit::detectors::file::array;
use oodkit::detectors::registry::{
    self, BoxedDetector, Capability, Needs, Param, Params, Registration,
};
use oodkit::detectors::{
    FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures, StoredState,
};
use oodkit::model::Model;
use oodkit::{Error, Result};
use serde::{Deserialize, Serialize};

/// The parameters: a floor added to each feature's variance.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanDistance {
    floor: f64,
    options: FeatureOptions,
}

impl MeanDistance {
    /// With variance floor `floor` (> 0).
    pub fn new(floor: f64) -> Result<Self> {
        if !(floor > 0.0 && floor.is_finite()) {
            return Err(Error::custom(format!(
                "mean-distance's floor is {floor}: give a positive number (e.g. 1e-6)"
            )));
        }
        Ok(MeanDistance {
            floor,
            options: FeatureOptions::default(),
        })
    }
}

/// Streams the sums of one layer's features.
#[derive(Debug, Clone)]
pub struct MeanDistanceFitter {
    floor: f64,
    count: usize,
    sum: Array1<f64>,
    sum_sq: Array1<f64>,
}

impl LayerFitter for MeanDistanceFitter {
    type Fitted = FittedMeanDistance;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        for row in batch.features.rows() {
            for ((s, q), &v) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(row) {
                *s += f64::from(v);
                *q += f64::from(v) * f64::from(v);
            }
        }
        self.count += batch.features.nrows();
        Ok(())
    }

    /// Another shard's sums add (fits on shards merge into one).
    fn merge(&mut self, other: Self) -> Result<()> {
        if self.sum.len() != other.sum.len() || self.floor != other.floor {
            return Err(Error::custom(
                "mean-distance: cannot merge fitters of other widths or floors",
            ));
        }
        self.count += other.count;
        self.sum += &other.sum;
        self.sum_sq += &other.sum_sq;
        Ok(())
    }

    fn finish(self) -> Result<FittedMeanDistance> {
        if self.count < 2 {
            return Err(Error::custom(
                "mean-distance needs at least 2 fit samples to estimate a spread",
            ));
        }
        let n = self.count as f64;
        let mean = &self.sum / n;
        let variance = (&self.sum_sq / n - &mean * &mean).mapv(|v| v.max(0.0) + self.floor);
        let fitted = FittedMeanDistance {
            floor: self.floor,
            mean,
            inv_std: variance.mapv(|v| 1.0 / v.sqrt()),
        };
        fitted.validate()?;
        Ok(fitted)
    }
}

impl FeatureDetector for MeanDistance {
    type Fitter = MeanDistanceFitter;
    type Fitted = FittedMeanDistance;

    fn name(&self) -> &'static str {
        KIND
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, _model: Option<&dyn Model>) -> Result<MeanDistanceFitter> {
        Ok(MeanDistanceFitter {
            floor: self.floor,
            count: 0,
            sum: Array1::zeros(width),
            sum_sq: Array1::zeros(width),
        })
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// What it learns of a layer. Serde does the file: `floor` goes to the
/// JSON header, the two arrays to the safetensors table as
/// `layer.{l}.mean` and `layer.{l}.inv_std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedMeanDistance {
    floor: f64,
    #[serde(with = "array")]
    mean: Array1<f64>,
    #[serde(with = "array")]
    inv_std: Array1<f64>,
}

impl ScoreFeatures for FittedMeanDistance {
    fn width(&self) -> usize {
        self.mean.len()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        Ok(distances(batch.features, &self.mean, &self.inv_std))
    }
}

/// √Σ ((x − μ) / σ)² per row.
fn distances(features: ArrayView2<f32>, mean: &Array1<f64>, inv_std: &Array1<f64>) -> Array1<f32> {
    features
        .rows()
        .into_iter()
        .map(|row| {
            row.iter()
                .zip(mean)
                .zip(inv_std)
                .map(|((&x, m), s)| ((f64::from(x) - m) * s).powi(2))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect()
}

impl StoredState for FittedMeanDistance {
    const KINDS: &'static [&'static str] = &[KIND];

    fn state_kind(&self) -> &'static str {
        KIND
    }

    /// What loading checks beyond finite arrays: one scale per feature,
    /// all positive, and a valid floor.
    fn validate(&self) -> Result<()> {
        if self.inv_std.len() != self.mean.len() || self.mean.is_empty() {
            return Err(Error::custom(format!(
                "{} scales for {} means",
                self.inv_std.len(),
                self.mean.len()
            )));
        }
        if self.inv_std.iter().any(|&s| s <= 0.0) {
            return Err(Error::custom("a scale is not positive"));
        }
        MeanDistance::new(self.floor).map(|_| ())
    }
}

/// The kind written in its files.
pub const KIND: &str = "MeanDistance";

/// Its registration: the kind, the name by which `registry::find` and a
/// command line built on the registry know it, its parameter, its needs,
/// how it is built and how its files are read.
pub static REGISTRATION: Registration = Registration::new(
    KIND,
    "mean-distance",
    "standardised distance to the mean fit feature (features; an example detector)",
    &[Param {
        name: "floor",
        doc: "added to each feature's variance [default: 1e-6]",
    }],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features],
    },
    build,
    registry::load_features::<FittedMeanDistance>,
);

fn build(params: &Params) -> Result<BoxedDetector> {
    let detector = MeanDistance::new(params.number("floor")?.unwrap_or(1e-6))?;
    let detector = match params.layers() {
        Some(layers) => detector.with_layers(layers.to_vec())?,
        None => detector,
    };
    registry::built(detector)
}
