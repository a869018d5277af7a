//! The initialisation of the toy networks: Keras' defaults, as the
//! reference networks were trained with.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

/// Glorot-uniform weights, as Keras initialises the reference network (burn's
/// default, Kaiming-uniform, trains it to a slightly different optimum).
pub(crate) fn glorot() -> Initializer {
    Initializer::XavierUniform { gain: 1.0 }
}

/// A zero bias of `size` (Keras' default; burn draws biases like weights).
pub(crate) fn zero_bias(size: usize, device: &Device) -> Param<Tensor<1>> {
    Initializer::Zeros.init([size], device)
}

/// A Keras-initialised dense layer.
pub(crate) fn dense(inputs: usize, outputs: usize, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(inputs, outputs)
        .with_initializer(glorot())
        .init(device);
    linear.bias = Some(zero_bias(outputs, device));
    linear
}
