//! A valid (unpadded, stride 1) 2-D convolution as im2col and matrix
//! products, with its own backward, as a burn backend extension on Flex.
//!
//! burn's `Conv2d` on Flex runs a generic 3-D convolution, and its backward
//! a transposed convolution for the input and a separate weight kernel
//! (BENCHMARKS.md has what they cost). Here the forward is one im2col (row
//! copies) and one batched matrix product; the backward is two batched
//! matrix products and a col2im (row additions), and skips the input's
//! gradient when the input needs none (the first layer). The products are
//! Flex's (the `gemm` crate); only the copies are written here. Values and
//! gradients match burn's `Conv2d` to float rounding, which the tests check.
//! On any other backend, or for a convolution with padding, stride,
//! dilation or groups, [`conv2d`] is burn's own.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::{contiguous, flex_f32};

/// `conv.forward(x)`, through the Flex kernels when `x` lives on Flex and the
/// convolution is a plain one (no padding, stride 1, no dilation, one group,
/// with a bias).
pub(crate) fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let plain = conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Valid);
    match &conv.bias {
        Some(bias) if plain && flex_f32(&x) => {
            let out = <Dispatch as Conv2dValid>::conv2d_valid(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
            );
            Tensor::from_dispatch(out)
        }
        _ => conv.forward(x),
    }
}

/// The differentiable operation, routed by burn to the backend a tensor
/// lives on.
#[backend_extension(Flex, Autodiff)]
pub(super) trait Conv2dValid: Backend {
    /// `x (N, C, H, W)` convolved with `weight (Cout, C, KH, KW)`, plus
    /// `bias (Cout)`: `(N, Cout, H - KH + 1, W - KW + 1)`.
    fn conv2d_valid(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The data movements of a concrete backend; the arithmetic is its matrix
/// product.
pub(super) trait Conv2dKernels: Backend {
    /// `x (N, C, H, W)` to its patches `(N, C·KH·KW, OH·OW)`: row
    /// `(c, ky, kx)` holds `x[c, oy + ky, ox + kx]` for every output `(oy, ox)`.
    fn im2col(x: FloatTensor<Self>, kernel: [usize; 2]) -> FloatTensor<Self>;

    /// The adjoint of [`im2col`](Self::im2col): patches summed back into an
    /// input of `shape`.
    fn col2im(cols: FloatTensor<Self>, shape: [usize; 4], kernel: [usize; 2]) -> FloatTensor<Self>;
}

impl Conv2dKernels for Flex {
    fn im2col(x: FlexTensor, [kh, kw]: [usize; 2]) -> FlexTensor {
        let [n, c, h, w] = dims4(&x.shape());
        let (oh, ow) = (h + 1 - kh, w + 1 - kw);
        let (rows, cols) = (c * kh * kw, oh * ow);
        let x = contiguous(x);
        let x = x.as_slice::<f32>().unwrap_or(&[]);
        let mut patches = vec![0.0_f32; n * rows * cols];
        patches
            .par_chunks_mut(rows * cols)
            .zip(x.par_chunks(c * h * w))
            .for_each(|(patches, image)| {
                for (row, patch_row) in patches.chunks_mut(cols).enumerate() {
                    let (ci, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
                    let plane = &image[ci * h * w..][..h * w];
                    for (oy, out) in patch_row.chunks_mut(ow).enumerate() {
                        out.copy_from_slice(&plane[(oy + ky) * w + kx..][..ow]);
                    }
                }
            });
        FlexTensor::from_data(TensorData::new(patches, [n, rows, cols]))
    }

    fn col2im(cols: FlexTensor, [n, c, h, w]: [usize; 4], [kh, kw]: [usize; 2]) -> FlexTensor {
        let (oh, ow) = (h + 1 - kh, w + 1 - kw);
        let per_image = c * kh * kw * oh * ow;
        let cols = contiguous(cols);
        let cols = cols.as_slice::<f32>().unwrap_or(&[]);
        let mut image_grad = vec![0.0_f32; n * c * h * w];
        image_grad
            .par_chunks_mut(c * h * w)
            .zip(cols.par_chunks(per_image))
            .for_each(|(image, patches)| {
                for (row, patch_row) in patches.chunks(oh * ow).enumerate() {
                    let (ci, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
                    let plane = &mut image[ci * h * w..][..h * w];
                    for (oy, grad) in patch_row.chunks(ow).enumerate() {
                        let target = &mut plane[(oy + ky) * w + kx..][..ow];
                        for (t, g) in target.iter_mut().zip(grad) {
                            *t += g;
                        }
                    }
                }
            });
        FlexTensor::from_data(TensorData::new(image_grad, [n, c, h, w]))
    }
}

/// The convolution on a concrete backend, returning its patches too (the
/// backward needs them).
fn forward<B: Conv2dKernels>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [n, _, h, w] = dims4(&x.shape());
    let [out_channels, c, kh, kw] = dims4(&weight.shape());
    let (oh, ow) = (h + 1 - kh, w + 1 - kw);
    let patches = B::im2col(x, [kh, kw]);
    let kernel = B::float_reshape(weight, Shape::new([1, out_channels, c * kh * kw]));
    let out = B::float_matmul(kernel, patches.clone());
    let bias = B::float_reshape(bias, Shape::new([1, out_channels, 1]));
    let out = B::float_add(out, bias);
    let out = B::float_reshape(out, Shape::new([n, out_channels, oh, ow]));
    (out, patches)
}

impl Conv2dValid for Flex {
    fn conv2d_valid(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        forward::<Flex>(x, weight, bias).0
    }
}

/// What the backward step keeps: the patches, the weight and the input's
/// shape.
#[derive(Debug, Clone)]
struct Saved<T> {
    patches: T,
    weight: T,
    input_shape: [usize; 4],
}

/// The backward step of [`Conv2dValid`] under autodiff.
#[derive(Debug)]
struct Conv2dValidBackward;

impl<B: Conv2dKernels> Backward<B, 3> for Conv2dValidBackward {
    type State = Saved<FloatTensor<B>>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weight_node, bias_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Saved {
            patches,
            weight,
            input_shape,
        } = ops.state;
        let [n, out_channels, oh, ow] = dims4(&grad.shape());
        let weight_shape = weight.shape();
        let [_, c, kh, kw] = dims4(&weight_shape);
        let grad = B::float_reshape(grad, Shape::new([n, out_channels, oh * ow]));

        if let Some(node) = bias_node {
            let summed = B::float_sum_dim(B::float_sum_dim(grad.clone(), 2), 0);
            grads.register::<B>(
                node.id,
                B::float_reshape(summed, Shape::new([out_channels])),
            );
        }
        if let Some(node) = weight_node {
            // Σ_n grad[n] · patches[n]ᵀ
            let per_image = B::float_matmul(grad.clone(), B::float_swap_dims(patches, 1, 2));
            let summed = B::float_sum_dim(per_image, 0);
            grads.register::<B>(node.id, B::float_reshape(summed, weight_shape));
        }
        if let Some(node) = x_node {
            let kernel = B::float_reshape(weight, Shape::new([1, out_channels, c * kh * kw]));
            let patch_grads = B::float_matmul(B::float_swap_dims(kernel, 1, 2), grad);
            grads.register::<B>(node.id, B::col2im(patch_grads, input_shape, [kh, kw]));
        }
    }
}

impl<B: Conv2dKernels, C: CheckpointStrategy> Conv2dValid for Autodiff<B, C> {
    fn conv2d_valid(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let input_shape = dims4(&x.shape());
        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        let (bias, bias_node) = bias.into_parts();
        match Conv2dValidBackward
            .prepare::<C>([x_node, weight_node, bias_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, patches) = forward::<B>(x, weight.clone(), bias);
                let saved = Saved {
                    patches,
                    weight,
                    input_shape,
                };
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward::<B>(x, weight, bias).0),
        }
    }
}

/// The four dimensions of a 4-D shape.
fn dims4(shape: &Shape) -> [usize; 4] {
    [shape[0], shape[1], shape[2], shape[3]]
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::conv2d;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.try_into_vec_as::<f32>().unwrap()
    }

    /// Largest difference, relative to the largest expected magnitude.
    fn relative_gap(got: &[f32], expected: &[f32]) -> f32 {
        assert_eq!(got.len(), expected.len());
        let worst = got
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst
            / expected
                .iter()
                .map(|v| v.abs())
                .fold(f32::MIN_POSITIVE, f32::max)
    }

    #[test]
    fn values_match_burns_conv() {
        let device = Device::flex();
        for (channels, side, kernel) in [
            ([1, 32], 28, [3, 3]),
            ([32, 64], 13, [3, 3]),
            ([3, 5], 7, [2, 4]),
        ] {
            let conv = Conv2dConfig::new(channels, kernel).init(&device);
            let x =
                Tensor::<4>::random([4, channels[0], side, side], Distribution::Default, &device);
            let expected = conv.forward(x.clone());
            let got = conv2d(&conv, x);
            assert_eq!(got.dims(), expected.dims());
            let gap = relative_gap(&values(got), &values(expected));
            assert!(gap < 1e-5, "{channels:?} {kernel:?}: {gap}");
        }
    }

    #[test]
    fn gradients_match_burns_conv() {
        let device = Device::flex().autodiff();
        for (channels, side, kernel) in [([1, 8], 12, [3, 3]), ([6, 4], 9, [3, 2])] {
            let conv = Conv2dConfig::new(channels, kernel).init(&device);
            let x =
                Tensor::<4>::random([3, channels[0], side, side], Distribution::Default, &device)
                    .require_grad();
            let out_dims = conv.forward(x.clone()).dims();
            let weights = Tensor::<4>::random(out_dims, Distribution::Default, &device);
            let gradients = |out: Tensor<4>| {
                let grads = (out * weights.clone()).sum().backward();
                [
                    values(x.grad(&grads).unwrap()),
                    values(conv.weight.val().grad(&grads).unwrap()),
                    values(conv.bias.as_ref().unwrap().val().grad(&grads).unwrap()),
                ]
            };
            let expected = gradients(conv.forward(x.clone()));
            let got = gradients(conv2d(&conv, x.clone()));
            for (what, (g, e)) in ["input", "weight", "bias"]
                .iter()
                .zip(got.iter().zip(&expected))
            {
                let gap = relative_gap(g, e);
                assert!(gap < 1e-5, "{what} {channels:?}: {gap}");
            }
        }
    }

    #[test]
    fn an_input_without_gradient_still_trains_the_weights() {
        let device = Device::flex().autodiff();
        let conv = Conv2dConfig::new([1, 4], [3, 3]).init(&device);
        let x = Tensor::<4>::random([2, 1, 6, 6], Distribution::Default, &device);
        let grads = conv2d(&conv, x.clone()).sum().backward();
        let expected = conv.forward(x).sum().backward();
        let got = values(conv.weight.val().grad(&grads).unwrap());
        let want = values(conv.weight.val().grad(&expected).unwrap());
        assert!(relative_gap(&got, &want) < 1e-5);
    }
}
