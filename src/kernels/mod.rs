//! The crate's own burn kernels on the Flex CPU backend: a valid
//! convolution and a 2x2 max-pool, each with a handwritten backward, as
//! burn backend extensions; and, for inference on plain slices (the CIFAR
//! ResNet's fast path), convolutions with their batch norm folded in: a
//! direct 3x3 one on zero-padded planes with run-time chosen SIMD, and one
//! through a patch matrix for the other shapes.
//! The networks (`nets`) and the trainer use them; on any other backend or
//! dtype they fall back to burn's layers, so every device keeps working.

use burn::backend::DispatchDevice;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor};

mod conv;
mod conv3x3_weight_grad;
mod conv_relu_pool;
mod folded_conv;
mod max_pool;
mod padded_conv3x3;
#[cfg(test)]
mod test_values;

pub(crate) use conv::conv2d;
pub(crate) use conv_relu_pool::{StageBuffers, conv_relu_pool, stage_forward};
pub(crate) use folded_conv::{BatchNormStats, FoldedConv};
pub(crate) use max_pool::max_pool_2x2;
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
