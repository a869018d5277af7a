//! The toy convnet's two conv-ReLU-pool stages at inference on Flex
//! without autodiff: each image runs both stages on one thread
//! ([`stage_forward`], the direct 3x3 convolution with bias and ReLU fused,
//! then the pool) in buffers that thread reuses, and no gradient state is
//! kept. Under autodiff (training, input gradients) the stages are the
//! fused autodiff operation on the same kernels, and on another backend
//! burn's layers; all give the same values to float rounding, which the
//! tests check.

use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::kernels::{PaddedConv3x3, StageBuffers, flex_f32, is_valid_3x3, stage_forward};

/// The two stages' outputs `(pool1, pool2)` for `x`, or `None` (then the
/// caller runs burn's layers) unless `x` is an `f32` tensor on Flex
/// without autodiff that fits the convolutions.
pub(super) fn convolutions(
    conv1: &Conv2d,
    conv2: &Conv2d,
    x: &Tensor<4>,
) -> Option<(Tensor<4>, Tensor<4>)> {
    if !flex_f32(x) || x.device().is_autodiff() {
        return None;
    }
    let [n, channels, h, w] = x.dims();
    let (first, second) = (direct(conv1)?, direct(conv2)?);
    if n == 0 || channels != first.in_channels() || second.in_channels() != first.out_channels() {
        return None;
    }
    // conv1 on (h, w) → (h − 2, w − 2), pooled to half; conv2 the same.
    let pooled_side = |[h, w]: [usize; 2]| -> Option<[usize; 2]> {
        let side = |s: usize| s.checked_sub(2).map(|s| s / 2).filter(|&s| s > 0);
        Some([side(h)?, side(w)?])
    };
    let pooled1 = pooled_side([h, w])?;
    let pooled2 = pooled_side(pooled1)?;
    let sizes = [
        first.out_channels() * pooled1[0] * pooled1[1],
        second.out_channels() * pooled2[0] * pooled2[1],
    ];
    let input: Vec<f32> = x.clone().into_data().try_into_vec::<f32>().ok()?;
    let mut outputs = sizes.map(|size| vec![0.0_f32; n * size]);
    let [o1, o2] = &mut outputs;
    input
        .par_chunks(channels * h * w)
        .zip(o1.par_chunks_mut(sizes[0]))
        .zip(o2.par_chunks_mut(sizes[1]))
        .try_for_each_init(StageBuffers::default, |ws, ((image, o1), o2)| {
            let pooled = stage_forward(&first, image, [h, w], ws, o1, None)?;
            stage_forward(&second, o1, pooled, ws, o2, None).map(|_| ())
        })?;
    let device = x.device();
    let [o1, o2] = outputs;
    let tensor = |values, c: usize, [h, w]: [usize; 2]| {
        Tensor::<4>::from_data(TensorData::new(values, [n, c, h, w]), &device)
    };
    Some((
        tensor(o1, first.out_channels(), pooled1),
        tensor(o2, second.out_channels(), pooled2),
    ))
}

/// `conv` repacked for the direct kernel, or `None` unless it is a 3x3
/// convolution without padding, stride, dilation or groups, with a bias.
fn direct(conv: &Conv2d) -> Option<PaddedConv3x3> {
    if !is_valid_3x3(conv) {
        return None;
    }
    let weight = conv.weight.val();
    let [out_channels, _, _, _] = weight.dims();
    let bias = conv
        .bias
        .as_ref()?
        .val()
        .into_data()
        .try_into_vec::<f32>()
        .ok()?;
    let weight = weight.into_data().try_into_vec::<f32>().ok()?;
    PaddedConv3x3::from_parts(&weight, &bias, out_channels)
}
