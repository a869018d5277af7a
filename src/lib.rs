//! # oodkit
//!
//! Out-of-distribution (OOD) detection for neural networks: load a dataset,
//! split it into in-distribution and OOD classes, stream it in batches
//! through a classifier, score how unlike the training data each input is
//! (higher score = more OOD), and measure how well the scores separate the
//! two.
//!
//! ```
//! use ndarray::{Array1, Array2, Array4, ArrayView4, Axis};
//! use oodkit::prelude::*;
//!
//! // Eight 1x4x4 images of the classes 0..4 (pixel value = class * 50).
//! let labels = Array1::from(vec![0, 1, 2, 3, 0, 1, 2, 3]);
//! let inputs = Array4::from_shape_fn((8, 1, 4, 4), |(n, _, _, _)| labels[n] as f32 * 50.0);
//! let data = OodDataset::from_arrays(inputs, labels)?;
//!
//! // Classes 0 and 1 are in-distribution, 2 and 3 are OOD.
//! let (ds_in, ds_out) = data.split_by_class(&[0, 1])?;
//! assert_eq!(ds_out.classes(), vec![2, 3]);
//!
//! // Batches of 3, pixels scaled to [0, 1].
//! let config = PrepareConfig::new(3).preprocess(|mut b| {
//!     b.inputs /= 255.0;
//!     Ok(b)
//! });
//! let (ds_in, ds_out) = (ds_in.prepare(&config)?, ds_out.prepare(&config)?);
//!
//! // A tiny "classifier" over the mean pixel m of an image: the logit of
//! // class k is 1 - 40 (m - c_k)^2, c_k the mean pixel of class k: high near
//! // a class it was trained on, low away from both.
//! let centres = [0.0_f32, 50.0 / 255.0];
//! let model = oodkit::model::from_fn(move |x: ArrayView4<f32>| -> oodkit::Result<Array2<f32>> {
//!     let n = x.shape()[0];
//!     let flat = x.to_shape((n, x.len() / n))?;
//!     let m = flat.mean_axis(Axis(1)).ok_or_else(|| Error::custom("no pixels"))?;
//!     Ok(Array2::from_shape_fn((n, 2), |(i, k)| 1.0 - 40.0 * (m[i] - centres[k]).powi(2)))
//! });
//!
//! // Fit a detector on the model, score both sets (higher = more OOD), and
//! // measure how well the scores separate them.
//! let mls = Mls::new().fit(&model, None)?;
//! let scores_in = mls.score(&ds_in)?.scores;
//! let scores_out = mls.score(&ds_out)?.scores;
//! let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr"])?;
//! println!("{report}");
//! assert_eq!(report.get("auroc"), Some(1.0));
//! assert_eq!(report.get("fpr95tpr"), Some(0.0));
//! # Ok::<(), oodkit::Error>(())
//! ```
//!
//! The pieces, in the order data flows through them: [`datasets`] (loaders
//! for MNIST, CIFAR-10, SVHN, batching, transforms, downloads), [`model`]
//! (the [`Model`](model::Model) trait, closures, the burn and ONNX
//! adapters, activation shaping, [`evaluate`](model::evaluate)),
//! [`detectors`] (the [`Detector`] trait and its two families:
//! [`detectors::logits`] — [`Mls`] and MSP, energy, entropy, GEN, ODIN,
//! temperature scaling, KLM, OpenMax, RankFeat, MC dropout — and
//! [`detectors::features`] — Mahalanobis, RMDS, KNN, ViM, SHE, Gram, DICE,
//! VRA, fDBD, NCI, NNGuide, GradNorm, Residual, GMM),
//! [`metrics`] (exact AUROC, FPR@TPR, AUPR, accuracy), [`calibration`]
//! (conformal p-values and verdicts with a known false-alarm rate;
//! fitted detectors save to files with [`detectors::file`]) and, with the `burn`
//! feature, `nets` (the toy networks and the CIFAR ResNets) and `training`
//! (their trainer). [`prelude`] imports the common names.
//!
//! Cargo features (all on by default): `download` (fetch the public
//! datasets), `burn` (the burn adapter and networks, on burn's pure-Rust
//! Flex CPU backend), `plots` (score histograms, ROC curves, 2-D feature
//! maps as PNG or SVG; see `plots`).

#![warn(missing_docs)]

pub mod batch;
pub mod calibration;
pub mod datasets;
pub mod detectors;
pub mod error;
#[cfg(feature = "burn")]
mod kernels;
mod linalg;
pub mod metrics;
pub mod model;
#[cfg(feature = "burn")]
pub mod nets;
#[cfg(feature = "plots")]
pub mod plots;
pub mod prelude;
#[cfg(feature = "burn")]
pub mod training;

pub use batch::Batch;
pub use datasets::{OodDataset, PrepareConfig};
pub use detectors::{Detector, Mls, ScoreLogits};
pub use error::{Error, Result};

/// Compiles the README's code samples as doc tests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
