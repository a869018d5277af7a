//! The toy multi-layer perceptron of the Python toolkit's tutorials.

use burn::module::Module;
use burn::nn::{Linear, Relu};
use burn::tensor::{Device, Tensor};

use super::init::dense;
use crate::error::{Error, Result};
use crate::model::BurnClassifier;

/// How to build a [`ToyMlp`]: input channels and side, number of classes.
#[derive(Debug, Clone, PartialEq)]
pub struct ToyMlpConfig {
    /// Input channels (1 for MNIST, 3 for CIFAR-10).
    pub in_channels: usize,
    /// Height and width of the (square) input images.
    pub image_size: usize,
    /// Number of classes.
    pub num_classes: usize,
}

impl ToyMlpConfig {
    /// The network for `in_channels` x `image_size` x `image_size` images and
    /// `num_classes` classes.
    pub fn new(in_channels: usize, image_size: usize, num_classes: usize) -> Self {
        ToyMlpConfig {
            in_channels,
            image_size,
            num_classes,
        }
    }

    /// Builds the network with freshly initialised weights on `device`.
    pub fn init(&self, device: &Device) -> Result<ToyMlp> {
        for (name, value) in [
            ("in_channels", self.in_channels),
            ("image_size", self.image_size),
            ("num_classes", self.num_classes),
        ] {
            if value == 0 {
                return Err(Error::invalid(name, value, "must be at least 1"));
            }
        }
        let inputs = self.in_channels * self.image_size * self.image_size;
        Ok(ToyMlp {
            fc1: dense(inputs, 300, device),
            fc2: dense(300, 150, device),
            out: dense(150, self.num_classes, device),
            activation: Relu,
        })
    }
}

/// Flatten, Dense(300) ReLU, Dense(150) ReLU, Dense(→classes).
///
/// As a [`BurnClassifier`] it exposes the layers `"fc1"` (`(N, 300)`) and
/// `"fc2"` (the penultimate layer, `(N, 150)`), after their ReLU, and the
/// logits.
#[derive(Module, Debug)]
pub struct ToyMlp {
    fc1: Linear,
    fc2: Linear,
    out: Linear,
    activation: Relu,
}

impl ToyMlp {
    /// The logits of a batch `(N, C, H, W)`.
    pub fn forward(&self, inputs: Tensor<4>) -> Tensor<2> {
        let (_, hidden) = self.hidden(inputs);
        self.out.forward(hidden)
    }

    /// The two hidden layers' activations.
    fn hidden(&self, inputs: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let fc1 = self
            .activation
            .forward(self.fc1.forward(inputs.flatten(1, 3)));
        let fc2 = self.activation.forward(self.fc2.forward(fc1.clone()));
        (fc1, fc2)
    }
}

impl BurnClassifier for ToyMlp {
    fn logits(&self, inputs: Tensor<4>) -> Tensor<2> {
        self.forward(inputs)
    }

    fn feature_layers(&self) -> Vec<String> {
        ["fc1", "fc2"].map(String::from).to_vec()
    }

    fn forward_features(&self, inputs: Tensor<4>) -> (Vec<Tensor<2>>, Tensor<2>) {
        let (fc1, fc2) = self.hidden(inputs);
        let logits = self.out.forward(fc2.clone());
        (vec![fc1, fc2], logits)
    }

    fn head(&self, penultimate: Tensor<2>) -> Option<Tensor<2>> {
        Some(self.out.forward(penultimate))
    }

    fn head_linear(&self) -> Option<&Linear> {
        Some(&self.out)
    }
}
