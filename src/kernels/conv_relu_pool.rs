//! A valid 3x3 convolution, ReLU and 2x2 max-pool as one differentiable
//! operation on Flex: the toy convnet's stage, forward and backward,
//! through the direct kernels, one image per task, in buffers each thread
//! reuses.
//!
//! Forward: each image's planes are loaded whole into the padded layout
//! (a valid convolution of `(h, w)` is the padded one of the inner
//! `(h − 2, w − 2)`), convolved with the bias and ReLU fused
//! ([`PaddedConv3x3`]) and pooled; the pool keeps, in a byte per output,
//! which of its four inputs won, or that the ReLU clipped it (then the
//! gradient is zero). Backward: the output gradient is scattered to the
//! winners once into each layout its two products read: the weight
//! gradient's ([`WeightGradShape`]), and the input gradient's, which is the
//! direct kernel again on the gradient padded by two, with the weights
//! flipped and their channels swapped. Values and gradients equal burn's
//! `Conv2d`, `Relu` and `MaxPool2d` composed, to float rounding (ties
//! included), which the tests check.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::conv3x3_weight_grad::WeightGradShape;
use super::padded_conv3x3::{PaddedConv3x3, PaddedPlanes};
use super::{contiguous, flex_f32};

/// A pooled output whose maximum the ReLU clipped to zero: no gradient.
const CLIPPED: u8 = u8::MAX;

/// `max_pool(relu(conv(x)))` with a 2x2, stride-2 pool (an odd last row or
/// column dropped), through the fused kernels; `None` (the caller runs
/// burn's layers) unless `x` is an `f32` tensor on Flex whose shape fits
/// and `conv` is a 3x3 convolution without padding, stride, dilation or
/// groups, with a bias.
pub(crate) fn conv_relu_pool(conv: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    let [out_channels, in_channels, _, _] = conv.weight.dims();
    let [n, channels, h, w] = x.dims();
    let fits = flex_f32(x)
        && is_valid_3x3(conv)
        && channels == in_channels
        && n > 0
        && out_channels > 0
        && h >= 4
        && w >= 4;
    let bias = conv.bias.as_ref().filter(|_| fits)?;
    let out = <Dispatch as ConvReluPool>::conv_relu_pool(
        x.clone().into_dispatch(),
        conv.weight.val().into_dispatch(),
        bias.val().into_dispatch(),
    );
    Some(Tensor::from_dispatch(out))
}

/// Whether `conv` is a 3x3 convolution without padding, stride, dilation
/// or groups: the one the direct kernels compute (bias not checked).
pub(crate) fn is_valid_3x3(conv: &Conv2d) -> bool {
    let [_, _, kh, kw] = conv.weight.dims();
    conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && [kh, kw] == [3, 3]
        && matches!(conv.padding, PaddingConfig2d::Valid)
}

/// `buffer` cut into `n` per-image chunks of `size` if `wanted`, else `n`
/// `None`s (the buffer is then empty): what a parallel loop over images
/// zips with for an output only some calls need.
fn per_image<T>(buffer: &mut [T], size: usize, n: usize, wanted: bool) -> Vec<Option<&mut [T]>> {
    if wanted {
        buffer.chunks_mut(size.max(1)).map(Some).collect()
    } else {
        (0..n).map(|_| None).collect()
    }
}

/// The differentiable operation, routed by burn to the backend a tensor
/// lives on.
#[backend_extension(Flex, Autodiff)]
pub(super) trait ConvReluPool: Backend {
    /// `x (N, C, H, W)`, `weight (O, C, 3, 3)`, `bias (O)`: the pooled
    /// `(N, O, (H − 2) / 2, (W − 2) / 2)`.
    fn conv_relu_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The forward and backward of a concrete backend, which the autodiff
/// implementation composes.
pub(super) trait ConvReluPoolKernels: Backend {
    /// What the backward needs.
    type Saved: Clone + Send + Sync + std::fmt::Debug + 'static;

    /// The pooled output.
    fn forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The pooled output and what the backward needs.
    fn forward_saving(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, Self::Saved);

    /// The gradients of the input (if `input` is asked for), the weight and
    /// the bias, from the output's.
    fn backward(
        grad: FloatTensor<Self>,
        saved: &Self::Saved,
        input: bool,
    ) -> Gradient<FloatTensor<Self>>;
}

/// The three gradients of the operation.
pub(super) struct Gradient<T> {
    input: Option<T>,
    weight: T,
    bias: T,
}

impl ConvReluPool for Flex {
    fn conv_relu_pool(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        <Flex as ConvReluPoolKernels>::forward(x, weight, bias)
    }
}

/// What the Flex backward keeps from the forward.
#[derive(Debug, Clone)]
pub(super) struct FlexSaved {
    /// The input, contiguous.
    x: FlexTensor,
    /// `(O, C, 3, 3)`, row-major.
    weight: Arc<Vec<f32>>,
    /// Per pooled output, the winner's place in its window (0..4,
    /// row-major) or [`CLIPPED`].
    winners: Arc<Vec<u8>>,
    input_shape: [usize; 4],
    out_channels: usize,
}

/// The sizes one image's stage works with.
#[derive(Debug, Clone, Copy)]
struct Stage {
    /// The input's inner planes, loaded whole: a valid convolution of the
    /// input is the padded convolution of these.
    inner: PaddedPlanes,
    out_channels: usize,
}

impl Stage {
    fn new([_, c, h, w]: [usize; 4], out_channels: usize) -> Self {
        Stage {
            inner: PaddedPlanes {
                channels: c,
                h: h - 2,
                w: w - 2,
            },
            out_channels,
        }
    }

    /// The convolution's maps, in the padded layout.
    fn maps(&self) -> PaddedPlanes {
        PaddedPlanes {
            channels: self.out_channels,
            ..self.inner
        }
    }

    fn input_len(&self) -> usize {
        self.inner.channels * (self.inner.h + 2) * (self.inner.w + 2)
    }

    fn pooled_len(&self) -> usize {
        self.out_channels * (self.inner.h / 2) * (self.inner.w / 2)
    }
}

/// One thread's buffers for [`stage_forward`], reused from image to
/// image.
#[derive(Debug, Default)]
pub(crate) struct StageBuffers {
    input: Vec<f32>,
    maps: Vec<f32>,
}

/// One image's stage: its compact `(C, h, w)` planes convolved (bias and
/// ReLU fused) and pooled into compact planes `out`, each window's winner
/// into `winners` if given (see [`pool_2x2`]); the pooled side. `None` if
/// the image is smaller than 4x4 or a buffer is too short.
pub(crate) fn stage_forward(
    conv: &PaddedConv3x3,
    image: &[f32],
    [h, w]: [usize; 2],
    ws: &mut StageBuffers,
    out: &mut [f32],
    winners: Option<&mut [u8]>,
) -> Option<[usize; 2]> {
    if h < 4 || w < 4 {
        return None;
    }
    let stage = Stage::new([1, conv.in_channels(), h, w], conv.out_channels());
    ws.input.resize(stage.inner.len(), 0.0);
    ws.maps.resize(stage.maps().len(), 0.0);
    stage.inner.load_bordered(image, &mut ws.input)?;
    conv.run(&ws.input, [h - 2, w - 2], &mut ws.maps, None)?;
    pool_2x2(&ws.maps, stage.maps(), out, winners)?;
    Some([(h - 2) / 2, (w - 2) / 2])
}

impl ConvReluPoolKernels for Flex {
    type Saved = FlexSaved;

    fn forward(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        flex_forward(x, weight, bias, false).0
    }

    fn forward_saving(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
    ) -> (FlexTensor, FlexSaved) {
        flex_forward(x, weight, bias, true)
    }

    fn backward(grad: FlexTensor, saved: &FlexSaved, input: bool) -> Gradient<FlexTensor> {
        let [n, c, h, w] = saved.input_shape;
        let o = saved.out_channels;
        let stage = Stage::new(saved.input_shape, o);
        let grad = contiguous(grad);
        let grad = grad.as_slice::<f32>().unwrap_or(&[]);
        let images = saved.x.as_slice::<f32>().unwrap_or(&[]);
        let products = WeightGradShape {
            channels: c,
            h,
            w,
            out_channels: o,
        };
        // The input's gradient is the padded convolution, on the `(h, w)`
        // grid, of the output gradient placed one pixel in: weights
        // flipped, input and output channels swapped, no bias or ReLU.
        let spread = PaddedPlanes { channels: o, h, w };
        let gathered = PaddedPlanes { channels: c, h, w };
        let transposed = input
            .then(|| flipped(&saved.weight, o, c))
            .and_then(|weight| {
                PaddedConv3x3::from_parts(&weight, &vec![0.0; c], c)
                    .map(PaddedConv3x3::without_relu)
            });
        let mut input_grad = vec![0.0_f32; if input { n * c * h * w } else { 0 }];
        let mut input_grads = per_image(&mut input_grad, stage.input_len(), n, input);
        let pooled_len = stage.pooled_len();
        let pooled_side = [stage.inner.h / 2, stage.inner.w / 2];
        let image = ImageBackward {
            products: &products,
            pooled_side,
            spread,
            gathered,
            transposed: transposed.as_ref(),
            grid: [h, w],
        };
        // Fixed groups of images, each summed alone, then the groups added
        // in order: the same gradients whatever the thread count or the
        // way rayon splits the work (seeded training repeats exactly).
        let sums = grad
            .par_chunks(pooled_len * IMAGES_PER_SUM)
            .zip(images.par_chunks(stage.input_len() * IMAGES_PER_SUM))
            .zip(saved.winners.par_chunks(pooled_len * IMAGES_PER_SUM))
            .zip(input_grads.par_chunks_mut(IMAGES_PER_SUM))
            .map_init(
                BackwardWorkspace::default,
                |ws, (((grad, images), winners), input_grads)| {
                    let mut sums = Sums::new(&products);
                    for (((grad, x), winners), input_grad) in grad
                        .chunks(pooled_len)
                        .zip(images.chunks(stage.input_len()))
                        .zip(winners.chunks(pooled_len))
                        .zip(input_grads.iter_mut())
                    {
                        image.run(grad, x, winners, input_grad.as_deref_mut(), ws, &mut sums)?;
                    }
                    Some(sums)
                },
            )
            .collect::<Option<Vec<Sums>>>()
            .and_then(|groups| groups.into_iter().try_fold(Sums::new(&products), Sums::add));
        let (weight, bias) = match sums {
            Some(sums) => (sums.weight_grad(&products), sums.bias),
            None => {
                // Unreachable for the shapes let through; never silent.
                input_grad.fill(f32::NAN);
                (vec![f32::NAN; o * c * 9], vec![f32::NAN; o])
            }
        };
        Gradient {
            input: input.then(|| FlexTensor::from_data(TensorData::new(input_grad, [n, c, h, w]))),
            weight: FlexTensor::from_data(TensorData::new(weight, [o, c, 3, 3])),
            bias: FlexTensor::from_data(TensorData::new(bias, [o])),
        }
    }
}

/// The Flex forward; the winners are kept only if `keep` (the rest of
/// what the backward needs is shared, not copied).
fn flex_forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    keep: bool,
) -> (FlexTensor, FlexSaved) {
    let input_shape = dims4(&x);
    let out_channels = weight.layout().shape()[0];
    let stage = Stage::new(input_shape, out_channels);
    let n = input_shape[0];
    let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
    // `conv_relu_pool` let only f32 tensors of these shapes through.
    let weight: Vec<f32> = weight.as_slice::<f32>().unwrap_or(&[]).to_vec();
    let conv =
        PaddedConv3x3::from_parts(&weight, bias.as_slice::<f32>().unwrap_or(&[]), out_channels);
    let images = x.as_slice::<f32>().unwrap_or(&[]);
    let mut out = vec![0.0_f32; n * stage.pooled_len()];
    let mut winners = vec![0_u8; if keep { out.len() } else { 0 }];
    let done = conv.and_then(|conv| {
        let winners = per_image(&mut winners, stage.pooled_len(), n, keep);
        out.par_chunks_mut(stage.pooled_len())
            .zip(images.par_chunks(stage.input_len()))
            .zip(winners)
            .try_for_each_init(StageBuffers::default, |ws, ((out, image), winners)| {
                let [_, _, h, w] = input_shape;
                stage_forward(&conv, image, [h, w], ws, out, winners).map(|_| ())
            })
    });
    if done.is_none() {
        // Unreachable for the shapes let through; never silent.
        out.fill(f32::NAN);
    }
    let [_, _, h, w] = input_shape;
    let pooled = FlexTensor::from_data(TensorData::new(
        out,
        [n, out_channels, (h - 2) / 2, (w - 2) / 2],
    ));
    let saved = FlexSaved {
        x,
        weight: Arc::new(weight),
        winners: Arc::new(winners),
        input_shape,
        out_channels,
    };
    (pooled, saved)
}

/// Routes one image's pooled gradient `grad` (`(O, ph, pw)`) to the
/// window winners, into the weight product's wide layout and, if given,
/// into padded planes on the input's grid one pixel in (the input
/// gradient's convolution reads it there), and adds what passes to each
/// channel's `bias` gradient. Both targets are zero elsewhere already.
/// `None` if a buffer is too short.
fn scatter(
    grad: &[f32],
    winners: &[u8],
    [ph, pw]: [usize; 2],
    products: &WeightGradShape,
    wide: &mut [f32],
    mut spread: Option<(PaddedPlanes, &mut [f32])>,
    bias: &mut [f32],
) -> Option<()> {
    let area = ph * pw;
    for (ch, (grad, winners)) in grad
        .chunks_exact(area)
        .zip(winners.chunks_exact(area))
        .enumerate()
    {
        // Where pixel (0, 0) of the input grid goes in each target.
        let spread_origin = spread.as_ref().map(|(planes, _)| planes.at(ch, 1, 1));
        let spread_row = spread.as_ref().map_or(0, |(planes, _)| planes.w + 2);
        for (py, (grad, winners)) in grad
            .chunks_exact(pw)
            .zip(winners.chunks_exact(pw))
            .enumerate()
        {
            for (px, (&g, &at)) in grad.iter().zip(winners).enumerate() {
                if at == CLIPPED {
                    continue;
                }
                let y = 2 * py + usize::from(at >> 1);
                let x = 2 * px + usize::from(at & 1);
                *wide.get_mut(products.at(ch, y, x))? = g;
                *bias.get_mut(ch)? += g;
                if let (Some((_, planes)), Some(origin)) = (spread.as_mut(), spread_origin) {
                    *planes.get_mut(origin + y * spread_row + x)? = g;
                }
            }
        }
    }
    Some(())
}

/// Images whose weight and bias gradients are summed together before the
/// groups are added in order.
const IMAGES_PER_SUM: usize = 8;

/// The backward of one image, with what every image shares.
struct ImageBackward<'a> {
    products: &'a WeightGradShape,
    pooled_side: [usize; 2],
    /// The output gradient's padded layout on the input's grid.
    spread: PaddedPlanes,
    /// The input gradient's padded layout.
    gathered: PaddedPlanes,
    /// The input gradient's convolution, if the input gradient is asked for.
    transposed: Option<&'a PaddedConv3x3>,
    grid: [usize; 2],
}

impl ImageBackward<'_> {
    /// Adds the image's weight and bias gradients to `sums` and writes its
    /// input gradient if `input_grad` is given. `None` if a buffer is too
    /// short.
    fn run(
        &self,
        grad: &[f32],
        x: &[f32],
        winners: &[u8],
        input_grad: Option<&mut [f32]>,
        ws: &mut BackwardWorkspace,
        sums: &mut Sums,
    ) -> Option<()> {
        ws.wide.clear();
        ws.wide.resize(self.products.grad_len(), 0.0);
        let input_grad = input_grad.zip(self.transposed);
        if input_grad.is_some() {
            ws.spread.clear();
            ws.spread.resize(self.spread.len(), 0.0);
        }
        let spread = input_grad
            .is_some()
            .then_some((self.spread, &mut ws.spread[..]));
        scatter(
            grad,
            winners,
            self.pooled_side,
            self.products,
            &mut ws.wide,
            spread,
            &mut sums.bias,
        )?;
        self.products.accumulate(x, &ws.wide, &mut sums.weight)?;
        if let Some((input_grad, conv)) = input_grad {
            ws.gathered.resize(self.gathered.len(), 0.0);
            conv.run(&ws.spread, self.grid, &mut ws.gathered, None)?;
            self.gathered.unpad(&ws.gathered, input_grad)?;
        }
        Some(())
    }
}

/// A group's share of the weight and bias gradients.
struct Sums {
    /// `(C·9, stride)`, as [`WeightGradShape::accumulate`] adds to it.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// The backward's per-image buffers.
#[derive(Default)]
struct BackwardWorkspace {
    /// The output gradient in the weight product's layout.
    wide: Vec<f32>,
    /// The output gradient in the padded layout of the input's grid.
    spread: Vec<f32>,
    /// The input gradient, padded.
    gathered: Vec<f32>,
}

impl Sums {
    fn new(shape: &WeightGradShape) -> Self {
        Sums {
            weight: vec![0.0; shape.acc_len()],
            bias: vec![0.0; shape.out_channels],
        }
    }

    fn add(mut self, other: Sums) -> Option<Sums> {
        for (a, b) in self.weight.iter_mut().zip(&other.weight) {
            *a += b;
        }
        for (a, b) in self.bias.iter_mut().zip(&other.bias) {
            *a += b;
        }
        Some(self)
    }

    /// The weight gradient as `(O, C, 3, 3)`, row-major.
    fn weight_grad(&self, shape: &WeightGradShape) -> Vec<f32> {
        let (o, rows, stride) = (shape.out_channels, shape.channels * 9, shape.stride());
        let mut out = vec![0.0; o * rows];
        for (ch, out) in out.chunks_exact_mut(rows).enumerate() {
            for (r, v) in out.iter_mut().enumerate() {
                *v = self.weight[r * stride + ch];
            }
        }
        out
    }
}

/// `weight (O, C, 3, 3)` with each kernel turned half a turn and the
/// channels swapped: `(C, O, 3, 3)`.
fn flipped(weight: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; weight.len()];
    for (i, &v) in weight.iter().enumerate() {
        let (oi, ci, tap) = (i / (c * 9), i / 9 % c, i % 9);
        out[(ci * o + oi) * 9 + 8 - tap] = v;
    }
    out
}

/// 2x2 max-pool with stride 2 of the pixels of `maps` (laid out as `from`;
/// an odd last row or column dropped) into compact planes `out`, and each
/// winner's place into `winners` if given ([`CLIPPED`] where the maximum
/// is not above zero). A NaN wins and the first maximum in row-major order wins a
/// tie, as in burn's pooling ([`pool_row`]). `None` if a buffer is too
/// short.
fn pool_2x2(
    maps: &[f32],
    from: PaddedPlanes,
    out: &mut [f32],
    mut winners: Option<&mut [u8]>,
) -> Option<()> {
    let (oh, ow) = (from.h / 2, from.w / 2);
    let out = out.get_mut(..from.channels * oh * ow)?;
    if let Some(winners) = &winners {
        winners.get(..out.len())?;
    }
    for (c, plane) in out.chunks_exact_mut(oh * ow).enumerate() {
        let Some(winners) = winners.as_deref_mut() else {
            for (y, line) in plane.chunks_exact_mut(ow).enumerate() {
                let (top, bottom) = window_rows(maps, from, c, y)?;
                max_row(top, bottom, line);
            }
            continue;
        };
        let places = &mut winners[c * oh * ow..][..oh * ow];
        let pixels = maps.get(from.at(c, 0, 0)..from.at(c, from.h - 1, from.w))?;
        // NaN is rare: the exact rule runs only on planes holding one.
        let has_nan = pixels.iter().fold(false, |acc, v| acc | v.is_nan());
        for (y, (line, places)) in plane
            .chunks_exact_mut(ow)
            .zip(places.chunks_exact_mut(ow))
            .enumerate()
        {
            let (top, bottom) = window_rows(maps, from, c, y)?;
            if has_nan {
                pool_row::<true>(top, bottom, line, places);
            } else {
                pool_row::<false>(top, bottom, line, places);
            }
            for (place, &v) in places.iter_mut().zip(line.iter()) {
                // All ones when clipped, without a branch (half the maxima
                // are zero). False for NaN: its gradient passes, as
                // through burn's ReLU.
                *place |= u8::from(v <= 0.0).wrapping_neg();
            }
        }
    }
    Some(())
}

/// One row of windows: the maximum of each 2x2 window of rows `top` and
/// `bottom`, and its position. burn's rule: a strictly larger value takes
/// over, and so does NaN when `NAN` (the inputs may hold one). Written
/// without branches: on random data every comparison would mispredict.
fn pool_row<const NAN: bool>(top: &[f32], bottom: &[f32], out: &mut [f32], positions: &mut [u8]) {
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

/// The two rows of plane `c` that pooled row `y` reads, `2·(w / 2)` long.
fn window_rows(maps: &[f32], from: PaddedPlanes, c: usize, y: usize) -> Option<(&[f32], &[f32])> {
    let len = from.w / 2 * 2;
    let top = maps.get(from.at(c, 2 * y, 0)..)?.get(..len)?;
    let bottom = maps.get(from.at(c, 2 * y + 1, 0)..)?.get(..len)?;
    Some((top, bottom))
}

/// The maximum of each 2x2 window of rows `top` and `bottom` (NaN wins),
/// when where it was is not needed.
fn max_row(top: &[f32], bottom: &[f32], out: &mut [f32]) {
    for ((o, t), b) in out
        .iter_mut()
        .zip(top.chunks_exact(2))
        .zip(bottom.chunks_exact(2))
    {
        let mut m = t[0];
        for v in [t[1], b[0], b[1]] {
            if v > m || v.is_nan() {
                m = v;
            }
        }
        *o = m;
    }
}

/// The backward step of [`ConvReluPool`] under autodiff.
#[derive(Debug)]
struct ConvReluPoolBackward;

impl<B: ConvReluPoolKernels> Backward<B, 3> for ConvReluPoolBackward {
    type State = B::Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weight_node, bias_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let gradient = B::backward(grad, &ops.state, x_node.is_some());
        if let (Some(node), Some(input)) = (x_node, gradient.input) {
            grads.register::<B>(node.id, input);
        }
        if let Some(node) = weight_node {
            grads.register::<B>(node.id, gradient.weight);
        }
        if let Some(node) = bias_node {
            grads.register::<B>(node.id, gradient.bias);
        }
    }
}

impl<B: ConvReluPoolKernels, C: CheckpointStrategy> ConvReluPool for Autodiff<B, C> {
    fn conv_relu_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        let (bias, bias_node) = bias.into_parts();
        match ConvReluPoolBackward
            .prepare::<C>([x_node, weight_node, bias_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, saved) = B::forward_saving(x, weight, bias);
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::forward(x, weight, bias)),
        }
    }
}

/// The dimensions of a 4-D Flex tensor.
fn dims4(x: &FlexTensor) -> [usize; 4] {
    let dims = x.layout().shape();
    [dims[0], dims[1], dims[2], dims[3]]
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::{Device, Distribution, Tensor, TensorData};

    use super::conv_relu_pool;
    use crate::kernels::test_values;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.try_into_vec_as::<f32>().unwrap()
    }

    /// burn's layers in the reference order.
    fn reference(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
        let pool = MaxPool2dConfig::new([2, 2]).init();
        pool.forward(burn::tensor::activation::relu(conv.forward(x)))
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

    /// A convolution and an input on a grid of 1/64, or of 1/2 when `tied`
    /// (exact ties and exact zeros in the maps, as blank image regions
    /// give). On such grids every sum is exact in f32, so burn's layers and
    /// the kernels see the same maps and pick the same winners: with
    /// arbitrary floats two nearly equal maxima can swap under rounding
    /// and send a window's gradient elsewhere.
    fn case(
        [c, o]: [usize; 2],
        [n, h, w]: [usize; 3],
        tied: bool,
        device: &Device,
    ) -> (Conv2d, Tensor<4>) {
        let step = if tied { 0.5 } else { 1.0 / 64.0 };
        let grid = |len: usize, seed: u32| -> Vec<f32> {
            let snap = |v: f32| (v / step).round() * step;
            test_values::values(len, seed)
                .into_iter()
                .map(snap)
                .collect()
        };
        let tensor = |values: Vec<f32>, shape: [usize; 4]| {
            Tensor::<4>::from_data(TensorData::new(values, shape), device)
        };
        let mut conv = Conv2dConfig::new([c, o], [3, 3]).init(device);
        conv.weight = Param::from_tensor(tensor(grid(o * c * 9, 1), [o, c, 3, 3]));
        let bias = Tensor::<1>::from_data(TensorData::new(grid(o, 2), [o]), device);
        conv.bias = Some(Param::from_tensor(bias));
        (conv, tensor(grid(n * c * h * w, 3), [n, c, h, w]))
    }

    const CASES: [([usize; 2], [usize; 3]); 5] = [
        ([1, 32], [3, 28, 28]),
        ([32, 64], [2, 13, 13]),
        ([3, 5], [2, 9, 8]),
        ([2, 3], [1, 4, 5]),
        ([7, 20], [2, 6, 11]),
    ];

    #[test]
    fn values_match_burns_layers_with_and_without_ties() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            for (channels, shape) in CASES {
                for tied in [false, true] {
                    let (conv, x) = case(channels, shape, tied, &device);
                    let expected = reference(&conv, x.clone());
                    let got = conv_relu_pool(&conv, &x).unwrap();
                    assert_eq!(got.dims(), expected.dims());
                    let gap = relative_gap(&values(got), &values(expected));
                    assert!(gap < 1e-5, "{channels:?} {shape:?} tied {tied}: {gap}");
                }
            }
        }
    }

    #[test]
    fn gradients_match_burns_layers_with_and_without_ties() {
        let device = Device::flex().autodiff();
        for (channels, shape) in CASES {
            for tied in [false, true] {
                let (conv, x) = case(channels, shape, tied, &device);
                let x = x.require_grad();
                let out_dims = reference(&conv, x.clone()).dims();
                let weights = Tensor::<4>::random(out_dims, Distribution::Default, &device);
                let gradients = |out: Tensor<4>| {
                    let grads = (out * weights.clone()).sum().backward();
                    [
                        values(x.grad(&grads).unwrap()),
                        values(conv.weight.val().grad(&grads).unwrap()),
                        values(conv.bias.as_ref().unwrap().val().grad(&grads).unwrap()),
                    ]
                };
                let expected = gradients(reference(&conv, x.clone()));
                let got = gradients(conv_relu_pool(&conv, &x).unwrap());
                for (what, (g, e)) in ["input", "weight", "bias"]
                    .iter()
                    .zip(got.iter().zip(&expected))
                {
                    assert!(e.iter().any(|&v| v != 0.0), "{what}: nothing to compare");
                    let gap = relative_gap(g, e);
                    assert!(
                        gap < 1e-5,
                        "{what} {channels:?} {shape:?} tied {tied}: {gap}"
                    );
                }
            }
        }
    }

    #[test]
    fn gradients_are_the_same_bits_whatever_the_thread_count() {
        let device = Device::flex().autodiff();
        // Arbitrary floats (rounding depends on the order of the sums) and
        // a batch that is not a whole number of summing groups.
        let x = Tensor::<4>::random([37, 3, 12, 12], Distribution::Default, &device);
        let mut conv = Conv2dConfig::new([3, 16], [3, 3]).init(&device);
        conv.weight = Param::from_tensor(Tensor::random(
            [16, 3, 3, 3],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        let weights = Tensor::<4>::random([37, 16, 5, 5], Distribution::Default, &device);
        let gradients = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let x = x.clone().require_grad();
                let out = conv_relu_pool(&conv, &x).unwrap();
                let grads = (out * weights.clone()).sum().backward();
                [
                    values(x.grad(&grads).unwrap()),
                    values(conv.weight.val().grad(&grads).unwrap()),
                    values(conv.bias.as_ref().unwrap().val().grad(&grads).unwrap()),
                ]
            })
        };
        let one = gradients(1);
        assert!(one[1].iter().any(|&v| v != 0.0));
        for threads in [2, 3] {
            assert_eq!(gradients(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn an_input_without_gradient_still_trains_the_weights() {
        let device = Device::flex().autodiff();
        let (conv, x) = case([1, 8], [2, 10, 10], false, &device);
        let grads = conv_relu_pool(&conv, &x).unwrap().sum().backward();
        let expected = reference(&conv, x).sum().backward();
        let got = values(conv.weight.val().grad(&grads).unwrap());
        let want = values(conv.weight.val().grad(&expected).unwrap());
        assert!(relative_gap(&got, &want) < 1e-5);
    }

    #[test]
    fn nan_reaches_the_output_and_the_gradients() {
        let device = Device::flex().autodiff();
        let (conv, x) = case([2, 4], [1, 8, 8], false, &device);
        let mut data = values(x);
        data[9] = f32::NAN;
        let x = Tensor::<4>::from_data(TensorData::new(data, [1, 2, 8, 8]), &device).require_grad();
        let out = conv_relu_pool(&conv, &x).unwrap();
        assert!(values(out.clone()).iter().any(|v| v.is_nan()));
        let grads = out.sum().backward();
        assert!(
            values(conv.weight.val().grad(&grads).unwrap())
                .iter()
                .any(|v| v.is_nan())
        );
    }

    #[test]
    fn other_shapes_are_left_to_burn() {
        let device = Device::flex();
        let conv = Conv2dConfig::new([2, 4], [3, 3]).init(&device);
        let wrong_channels = Tensor::<4>::zeros([1, 3, 8, 8], &device);
        assert!(conv_relu_pool(&conv, &wrong_channels).is_none());
        let too_small = Tensor::<4>::zeros([1, 2, 3, 8], &device);
        assert!(conv_relu_pool(&conv, &too_small).is_none());
        let empty = Tensor::<4>::zeros([0, 2, 8, 8], &device);
        assert!(conv_relu_pool(&conv, &empty).is_none());
        let five = Conv2dConfig::new([2, 4], [5, 5]).init(&device);
        assert!(conv_relu_pool(&five, &Tensor::zeros([1, 2, 8, 8], &device)).is_none());
        let no_bias = Conv2dConfig::new([2, 4], [3, 3])
            .with_bias(false)
            .init(&device);
        assert!(conv_relu_pool(&no_bias, &Tensor::zeros([1, 2, 8, 8], &device)).is_none());
    }
}
