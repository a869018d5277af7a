//! # oodkit
//!
//! Out-of-distribution (OOD) detection for neural networks: load a dataset,
//! split it into in-distribution and OOD classes, stream it in batches
//! through a classifier, score how unlike the training data each input is
//! (higher score = more OOD), and measure how well the scores separate the
//! two.
//!
//! ```
//! use ndarray::{Array1, Array4};
//! use oodkit::datasets::{OodDataset, PrepareConfig};
//!
//! // Eight 1x4x4 images of the classes 0..4 (pixel value = class * 50).
//! let labels = Array1::from(vec![0, 1, 2, 3, 0, 1, 2, 3]);
//! let inputs = Array4::from_shape_fn((8, 1, 4, 4), |(n, _, _, _)| labels[n] as f32 * 50.0);
//! let data = OodDataset::from_arrays(inputs, labels)?;
//!
//! // Classes 0 and 1 are in-distribution, 2 and 3 are OOD.
//! let (ds_in, ds_out) = data.split_by_class(&[0, 1])?;
//! let config = PrepareConfig::new(3).preprocess(|mut b| {
//!     b.inputs /= 255.0;
//!     Ok(b)
//! });
//! let mut seen = 0;
//! for batch in &ds_in.prepare(&config)? {
//!     let batch = batch?;
//!     assert!(batch.inputs.iter().all(|&x| x <= 50.0 / 255.0));
//!     seen += batch.len();
//! }
//! assert_eq!(seen, 4);
//! assert_eq!(ds_out.classes(), vec![2, 3]);
//!
//! // Any score where higher means "more OOD" — here the mean pixel, which the
//! // OOD classes (brighter images) have higher — measured against the truth.
//! let mean_pixel = |ds: &OodDataset| -> Vec<f32> {
//!     ds.inputs().outer_iter().map(|img| img.mean().unwrap_or(0.0)).collect()
//! };
//! let report = oodkit::metrics::bench_metrics(
//!     &mean_pixel(&ds_in),
//!     &mean_pixel(&ds_out),
//!     &["auroc", "fpr95tpr"],
//! )?;
//! assert_eq!(report.get("auroc"), Some(1.0));
//! assert_eq!(report.get("fpr95tpr"), Some(0.0));
//! # Ok::<(), oodkit::Error>(())
//! ```
//!
//! See [`datasets`] for the loaders (MNIST, CIFAR-10, SVHN) and downloads,
//! and [`metrics`] for the metrics and their conventions.

#![warn(missing_docs)]

pub mod batch;
pub mod datasets;
pub mod error;
pub mod metrics;

pub use batch::Batch;
pub use datasets::{OodDataset, PrepareConfig};
pub use error::{Error, Result};

/// Compiles the README's code samples as doc tests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
