//! The crate's own burn kernels on the Flex CPU backend: a valid
//! convolution and a 2x2 max-pool, each with a handwritten backward, as
//! burn backend extensions, and an inference-only convolution with its
//! batch norm folded in, on plain slices (the CIFAR ResNet's fast path).
//! The networks (`nets`) and the trainer use them; on any other backend or
//! dtype they fall back to burn's layers, so every device keeps working.

use burn::backend::DispatchDevice;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor};

mod conv;
mod folded_conv;
mod max_pool;

pub(crate) use conv::conv2d;
pub(crate) use folded_conv::{BatchNormStats, FoldedConv};
pub(crate) use max_pool::max_pool_2x2;

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
