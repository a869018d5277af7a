//! The crate's own kernels on the Flex CPU backend. A direct 3x3
//! convolution on zero-padded planes with run-time chosen SIMD
//! (`padded_conv3x3`) does most of the work: the CIFAR ResNet's inference
//! (with batch norm folded in; the other shapes through a patch matrix,
//! `folded_conv`) and the toy convnet's conv-ReLU-pool stage, which is one
//! burn autodiff operation with a handwritten backward (`conv_relu_pool`,
//! its weight gradient in `conv3x3_weight_grad`). The networks (`nets`)
//! and the trainer use them; on any other backend or dtype the networks
//! run burn's layers, so every device keeps working.

use burn::backend::DispatchDevice;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor};

mod conv3x3_weight_grad;
mod conv_relu_pool;
mod folded_conv;
mod padded_conv3x3;
#[cfg(test)]
mod test_values;

pub(crate) use conv_relu_pool::{StageBuffers, conv_relu_pool, is_valid_3x3, stage_forward};
pub(crate) use folded_conv::{BatchNormStats, FoldedConv};
pub(crate) use padded_conv3x3::{PaddedConv3x3, PaddedPlanes};

/// Whether the crate's kernels can take `x`: an `f32` tensor on Flex (with
/// or without autodiff).
pub(crate) fn flex_f32<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32
        && matches!(
            x.device().without_autodiff().as_dispatch(),
            DispatchDevice::Flex(_)
        )
}

/// A Flex tensor laid out contiguously (copied only if it is not).
fn contiguous(x: FlexTensor) -> FlexTensor {
    if x.as_slice::<f32>().is_some() {
        x
    } else {
        x.to_contiguous()
    }
}
