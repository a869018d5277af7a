//! A 2x2, stride-2 max-pool with its own forward and backward on the Flex
//! backend, as a burn backend extension.
//!
//! burn's `MaxPool2d` on Flex goes through a generic 3-D pooling that
//! computes 64-bit argmax indices (BENCHMARKS.md has what it costs). This
//! kernel reads each 2x2 window once, keeps the
//! winner's position in a byte, and scatters the gradient back through it
//! (the windows do not overlap). Values, tie-breaking (the first maximum in
//! row-major order wins; NaN wins) and gradients are burn's, which the tests
//! check. On any other backend [`max_pool_2x2`] is burn's own pooling.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::pool::MaxPool2d;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{contiguous, flex_f32};

/// 2x2 max-pool with stride 2 (an odd last row or column is dropped), the
/// same values and gradients as `pool` (a `MaxPool2dConfig::new([2, 2])`
/// layer), through the Flex kernel when `x` lives on Flex.
pub(crate) fn max_pool_2x2(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if flex_f32(&x) && h >= 2 && w >= 2 {
        Tensor::from_dispatch(<Dispatch as MaxPool2x2>::max_pool_2x2(x.into_dispatch()))
    } else {
        pool.forward(x)
    }
}

/// The differentiable operation, routed by burn to the backend a tensor
/// lives on.
#[backend_extension(Flex, Autodiff)]
pub(super) trait MaxPool2x2: Backend {
    /// 2x2, stride-2 max-pool of an `(N, C, H, W)` tensor.
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The forward (keeping where each maximum was) and backward kernels of a
/// concrete backend, which the autodiff implementation composes.
pub(super) trait MaxPool2x2Kernels: Backend {
    /// Where each window's maximum was, for the backward pass.
    type Winners: Clone + Send + Sync + std::fmt::Debug + 'static;

    /// The pooled tensor and where each maximum was.
    fn max_pool_2x2_forward(x: FloatTensor<Self>) -> (FloatTensor<Self>, Self::Winners);

    /// The gradient of the input, `grad` routed to the window maxima.
    fn max_pool_2x2_backward(grad: FloatTensor<Self>, winners: &Self::Winners)
    -> FloatTensor<Self>;
}

/// Each output's winning position in its window (0..4, row-major), and the
/// input's shape.
#[derive(Debug, Clone)]
pub(super) struct FlexWinners {
    positions: Arc<Vec<u8>>,
    input_shape: [usize; 4],
}

impl MaxPool2x2 for Flex {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Flex as MaxPool2x2Kernels>::max_pool_2x2_forward(x).0
    }
}

impl MaxPool2x2Kernels for Flex {
    type Winners = FlexWinners;

    fn max_pool_2x2_forward(x: FlexTensor) -> (FlexTensor, FlexWinners) {
        let shape = four_dims(&x);
        let [n, c, h, w] = shape;
        let (oh, ow) = (h / 2, w / 2);
        let x = contiguous(x);
        // Only f32 tensors reach the kernel (see `max_pool_2x2`).
        let x = x.as_slice::<f32>().unwrap_or(&[]);
        let mut out = vec![0.0_f32; n * c * oh * ow];
        let mut positions = vec![0_u8; out.len()];
        out.par_chunks_mut(oh * ow)
            .zip(positions.par_chunks_mut(oh * ow))
            .zip(x.par_chunks(h * w))
            .for_each(|((out, positions), plane)| {
                // NaN is rare: the exact rule only runs on planes holding one,
                // which keeps the common loop free of it (and vectorised).
                let has_nan = plane.iter().fold(false, |acc, v| acc | v.is_nan());
                for i in 0..oh {
                    let top = &plane[2 * i * w..][..w];
                    let bottom = &plane[(2 * i + 1) * w..][..w];
                    let out = &mut out[i * ow..][..ow];
                    let positions = &mut positions[i * ow..][..ow];
                    if has_nan {
                        pool_row::<true>(top, bottom, out, positions);
                    } else {
                        pool_row::<false>(top, bottom, out, positions);
                    }
                }
            });
        let pooled = FlexTensor::from_data(TensorData::new(out, [n, c, oh, ow]));
        let winners = FlexWinners {
            positions: Arc::new(positions),
            input_shape: shape,
        };
        (pooled, winners)
    }

    fn max_pool_2x2_backward(grad: FlexTensor, winners: &FlexWinners) -> FlexTensor {
        let [n, c, h, w] = winners.input_shape;
        let (oh, ow) = (h / 2, w / 2);
        let grad = contiguous(grad);
        let grad = grad.as_slice::<f32>().unwrap_or(&[]);
        let mut input_grad = vec![0.0_f32; n * c * h * w];
        input_grad
            .par_chunks_mut(h * w)
            .zip(grad.par_chunks(oh * ow))
            .zip(winners.positions.par_chunks(oh * ow))
            .for_each(|((plane, grad), positions)| {
                for i in 0..oh {
                    for j in 0..ow {
                        let at = positions[i * ow + j] as usize;
                        plane[(2 * i + at / 2) * w + 2 * j + at % 2] = grad[i * ow + j];
                    }
                }
            });
        FlexTensor::from_data(TensorData::new(input_grad, [n, c, h, w]))
    }
}

/// One row of windows: the maximum of each 2x2 window of rows `top` and
/// `bottom`, and its position. burn's rule: a strictly larger value takes
/// over, and so does NaN when `NAN` (the inputs may hold one). Written
/// without branches: on random data every comparison would mispredict.
pub(super) fn pool_row<const NAN: bool>(
    top: &[f32],
    bottom: &[f32],
    out: &mut [f32],
    positions: &mut [u8],
) {
    for (j, (out, at)) in out.iter_mut().zip(positions.iter_mut()).enumerate() {
        let mut best = top[2 * j];
        let mut position = 0_u8;
        for (k, v) in [
            (1, top[2 * j + 1]),
            (2, bottom[2 * j]),
            (3, bottom[2 * j + 1]),
        ] {
            let take = if NAN {
                v > best || v.is_nan()
            } else {
                v > best
            };
            best = if take { v } else { best };
            position = if take { k } else { position };
        }
        *out = best;
        *at = position;
    }
}

/// The backward step of [`MaxPool2x2`] under autodiff.
#[derive(Debug)]
struct MaxPool2x2Backward;

impl<B: MaxPool2x2Kernels> Backward<B, 1> for MaxPool2x2Backward {
    type State = B::Winners;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = parent {
            grads.register::<B>(parent.id, B::max_pool_2x2_backward(grad, &ops.state));
        }
    }
}

impl<B: MaxPool2x2Kernels, C: CheckpointStrategy> MaxPool2x2 for Autodiff<B, C> {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (primitive, node) = x.into_parts();
        match MaxPool2x2Backward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (pooled, winners) = B::max_pool_2x2_forward(primitive);
                prep.finish(winners, pooled)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool_2x2_forward(primitive).0),
        }
    }
}

/// The dimensions of a 4-D Flex tensor.
fn four_dims(x: &FlexTensor) -> [usize; 4] {
    let dims = x.layout().shape();
    [dims[0], dims[1], dims[2], dims[3]]
}

#[cfg(test)]
mod tests {
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::max_pool_2x2;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.try_into_vec_as::<f32>().unwrap()
    }

    /// Inputs with many exact ties (values on a coarse grid), as blank image
    /// regions give after a convolution.
    fn tied(shape: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::<4>::random(shape, Distribution::Default, device)
            .mul_scalar(3.0)
            .round()
    }

    #[test]
    fn values_match_burns_pool_on_even_and_odd_sides_with_ties() {
        let device = Device::flex();
        let pool = MaxPool2dConfig::new([2, 2]).init();
        for [h, w] in [[26, 26], [11, 11], [6, 9], [2, 3]] {
            for x in [
                Tensor::<4>::random([3, 4, h, w], Distribution::Default, &device),
                tied([3, 4, h, w], &device),
            ] {
                let expected = pool.forward(x.clone());
                let got = max_pool_2x2(&pool, x);
                assert_eq!(got.dims(), expected.dims());
                assert_eq!(values(got), values(expected), "{h}x{w}");
            }
        }
    }

    #[test]
    fn gradients_match_burns_pool_including_ties() {
        let device = Device::flex().autodiff();
        let pool = MaxPool2dConfig::new([2, 2]).init();
        for [h, w] in [[26, 26], [11, 11], [5, 8]] {
            let x = tied([2, 3, h, w], &device).require_grad();
            let [oh, ow] = [h / 2, w / 2];
            let weights = Tensor::<4>::random([2, 3, oh, ow], Distribution::Default, &device);
            let gradient = |pooled: Tensor<4>| {
                let grads = (pooled * weights.clone()).sum().backward();
                values(x.grad(&grads).unwrap())
            };
            let expected = gradient(pool.forward(x.clone()));
            let got = gradient(max_pool_2x2(&pool, x.clone()));
            assert_eq!(got, expected, "{h}x{w}");
            assert!(got.iter().any(|&g| g != 0.0));
        }
    }
}
