//! The small network and data the committed detector files
//! (`tests/fixtures/format1/`) were fitted and scored with: every value a
//! formula, no random generator, so the files' recorded scores can be
//! reproduced by any later version of the crate.
//!
//! Inputs `(N, 1, 1, WIDTH)`; layer "input" is the pixels, layer "hidden"
//! a ReLU of `input · P`, the logits `hidden · Wᵀ + b`. The input gradient
//! is exact (`((g · W) ⊙ [hidden > 0]) · Pᵀ`), so ODIN's step runs too.

#![allow(dead_code)] // each test binary uses part of it

use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayView4};
use oodkit::datasets::OodDataset;
use oodkit::model::{FeatureModel, InputGradient, LastLayer, LayerId, Model, ModelOutput};

pub const WIDTH: usize = 6;
pub const HIDDEN: usize = 4;
pub const CLASSES: usize = 3;

/// The fixture network (see the module docs).
#[derive(Debug, Clone)]
pub struct FixtureNet {
    projection: Array2<f32>,
    weights: Array2<f32>,
    bias: Array1<f32>,
}

impl Default for FixtureNet {
    fn default() -> Self {
        let projection = Array2::from_shape_fn((WIDTH, HIDDEN), |(i, j)| {
            if i == j {
                1.0
            } else {
                0.05 * ((i + j) % 3) as f32
            }
        });
        let weights =
            Array2::from_shape_fn(
                (CLASSES, HIDDEN),
                |(c, j)| {
                    if c == j { 2.0 } else { 0.1 * j as f32 }
                },
            );
        FixtureNet {
            projection,
            weights,
            bias: Array1::from(vec![0.1, -0.2, 0.3]),
        }
    }
}

impl FixtureNet {
    fn layers(&self, x: ArrayView4<f32>) -> oodkit::Result<(Array2<f32>, Array2<f32>)> {
        let n = x.shape()[0];
        let input = x.to_shape((n, WIDTH))?.to_owned();
        // A ReLU that keeps NaN, as the networks' do.
        let hidden = input
            .dot(&self.projection)
            .mapv(|v| if v > 0.0 || v.is_nan() { v } else { 0.0 });
        Ok((input, hidden))
    }
}

impl Model for FixtureNet {
    fn forward(&self, inputs: ArrayView4<f32>) -> oodkit::Result<Array2<f32>> {
        let (_, hidden) = self.layers(inputs)?;
        Ok(hidden.dot(&self.weights.t()) + &self.bias)
    }

    fn as_features(&self) -> Option<&dyn FeatureModel> {
        Some(self)
    }

    fn as_last_layer(&self) -> Option<&dyn LastLayer> {
        Some(self)
    }

    fn as_input_gradient(&self) -> Option<&dyn InputGradient> {
        Some(self)
    }
}

impl InputGradient for FixtureNet {
    fn input_gradient(
        &self,
        inputs: ArrayView4<f32>,
        logits_grad: ArrayView2<f32>,
    ) -> oodkit::Result<Array4<f32>> {
        let (input, hidden) = self.layers(inputs)?;
        let mut through = logits_grad.dot(&self.weights);
        through.zip_mut_with(&hidden, |g, &h| {
            if h <= 0.0 {
                *g = 0.0
            }
        });
        let grad = through.dot(&self.projection.t());
        Ok(grad.into_shape_with_order((input.nrows(), 1, 1, WIDTH))?)
    }
}

impl FeatureModel for FixtureNet {
    fn layer_names(&self) -> Vec<String> {
        vec!["input".into(), "hidden".into(), "logits".into()]
    }

    fn forward_features(
        &self,
        inputs: ArrayView4<f32>,
        layers: &[LayerId],
    ) -> oodkit::Result<ModelOutput> {
        let names = self.layer_names();
        let (input, hidden) = self.layers(inputs)?;
        let logits = hidden.dot(&self.weights.t()) + &self.bias;
        let all = [input, hidden, logits.clone()];
        let features = layers
            .iter()
            .map(|l| Ok(all[l.resolve(&names)?].clone()))
            .collect::<oodkit::Result<Vec<_>>>()?;
        Ok(ModelOutput { features, logits })
    }
}

impl LastLayer for FixtureNet {
    fn head_parameters(&self) -> oodkit::Result<(Array2<f32>, Array1<f32>)> {
        Ok((self.weights.clone(), self.bias.clone()))
    }
}

/// A value in [0, 1) from two integers: a fixed hash, no generator.
fn hashed(i: usize, j: usize, salt: usize) -> f32 {
    let mut h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (j as u64 + 7).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (salt as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// `n` labelled inputs of the three classes (class c lifts pixel c by 1.5
/// over a background of 0.6 · U[0, 1)).
pub fn fixture_data(n: usize, salt: usize) -> OodDataset {
    lifted_data(n, salt, 1.5)
}

/// [`fixture_data`] with class c's pixel lifted by `lift`.
pub fn lifted_data(n: usize, salt: usize, lift: f32) -> OodDataset {
    let labels: Array1<i64> = (0..n).map(|i| (i % CLASSES) as i64).collect();
    let images = Array4::from_shape_fn((n, 1, 1, WIDTH), |(i, _, _, j)| {
        let on = if j as i64 == labels[i] { lift } else { 0.0 };
        on + 0.6 * hashed(i, j, salt)
    });
    OodDataset::from_arrays(images, labels).expect("valid fixture data")
}

/// The fit data (90 inputs), the calibration data (60) and the scored data
/// (40 inputs near the classes, 20 far from them).
pub fn fit_data() -> OodDataset {
    fixture_data(90, 1)
}

pub fn calibration_data() -> OodDataset {
    fixture_data(60, 2)
}

pub fn scored_data() -> OodDataset {
    let near = fixture_data(40, 3);
    let far = Array4::from_shape_fn((20, 1, 1, WIDTH), |(i, _, _, j)| {
        3.0 * hashed(i, j, 4) - 0.5
    });
    let (near_inputs, near_labels) = (near.inputs().to_owned(), near.labels().to_owned());
    let inputs = ndarray::concatenate(ndarray::Axis(0), &[near_inputs.view(), far.view()])
        .expect("same widths");
    let labels = ndarray::concatenate(
        ndarray::Axis(0),
        &[near_labels.view(), Array1::<i64>::zeros(20).view()],
    )
    .expect("1-D");
    OodDataset::from_arrays(inputs, labels).expect("valid fixture data")
}
