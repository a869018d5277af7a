//! The detectors on internal features — Mahalanobis, RMDS, KNN, ViM, SHE,
//! Gram, and the OpenOOD post-hoc methods DICE, VRA, fDBD, NCI, NNGuide,
//! GradNorm, Residual, GMM (those that read the last layer share a checked
//! `Head`) — and what they share: fitting layer by layer in a stream of
//! batches (through a [`FeatureModel`](crate::model::FeatureModel)) or on precomputed features, the
//! second pass some need (ViM), multi-layer aggregation, and scoring.
//!
//! Three traits make a feature detector, and a new one needs only them:
//! - [`FeatureDetector`], its parameters: how to start fitting one layer,
//!   and the [`FeatureOptions`] (layers, aggregation, input step) every
//!   feature detector takes;
//! - [`LayerFitter`], one layer's statistics accumulated batch by batch;
//! - [`ScoreFeatures`], what was learned of one layer: it scores that
//!   layer's features, holds no model and is `Send + Sync`.
//!
//! Fitted through a model ([`Detector::fit`](crate::detectors::Detector::fit)), the layers' fitted states
//! are kept in a [`FittedFeatures`] with the layers they came from and the
//! aggregator that combines them.

pub(crate) mod aggregation;
mod derived;
pub(super) mod dice;
pub(super) mod fdbd;
mod fitted;
mod fitting;
pub(super) mod gmm;
pub(super) mod gradnorm;
pub(super) mod gram;
mod head;
pub(super) mod hnsw;
pub(super) mod knn;
pub(super) mod mahalanobis;
pub(crate) mod moments;
pub(super) mod nci;
mod neighbours;
pub(super) mod nnguide;
mod partial;
pub(crate) use partial::PARTIAL_KIND;
pub use partial::{PartialFit, PartialState};
mod quantile;
pub(super) mod residual;
pub(super) mod she;
mod stored;
pub use stored::StoredState;
mod subspace;
mod traits;
pub(super) mod vim;
pub(super) mod vra;

pub use dice::{Dice, FittedDice};
pub use fdbd::{Fdbd, FdbdNormalizer, FittedFdbd};
pub use fitted::FittedFeatures;
pub use gmm::{FittedGmm, Gmm};
pub use gradnorm::{FittedGradNorm, GradNorm};
pub use gram::{FittedGram, Gram};
pub use hnsw::Hnsw;
pub use knn::{FittedKnn, Knn};
pub use mahalanobis::{FittedMahalanobis, Mahalanobis, Rmds};
pub use nci::{FittedNci, Nci};
pub use nnguide::{FittedNnGuide, NnGuide};
pub use residual::{FittedResidual, Residual};
pub use she::{FittedShe, She};
pub use traits::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
pub use vim::{FittedVim, PrincipalDims, Vim};
pub use vra::{FittedVra, Rectification, Vra};
