//! Networks (and, to come, their trainer) on burn.
//!
//! [`ToyConvnet`] is the small convnet of the Python toolkit's MNIST
//! tutorial, usable through [`BurnModel`](crate::model::BurnModel) by every
//! detector.

mod toy_convnet;

pub use toy_convnet::{ToyConvnet, ToyConvnetConfig};
