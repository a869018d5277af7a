//! The CIFAR ResNet's inference on Flex without autodiff, through the
//! crate's folded convolutions instead of burn's layers.
//!
//! Each batch norm is folded into its convolution once per call; then every
//! image runs the whole network on one thread, in buffers that thread
//! reuses: the activations of one image stay in cache and nothing is
//! allocated per layer. Activations stay in zero-padded planes, where the
//! stride-1 3x3 convolutions (all but three layers) run directly, with the
//! bias, the shortcut and the ReLU added as each output leaves the
//! registers; the stem and the two stride-2 convolutions go through a patch
//! matrix and a matrix product. Images are spread over rayon's
//! threads. Under autodiff (input gradients, training) or on another
//! backend the network runs burn's layers as before; both give the same
//! values to float rounding, which the tests check.

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::resnet::{BasicBlock, CifarResNet};
use crate::kernels::{BatchNormStats, FoldedConv, PaddedConv3x3, PaddedPlanes, flex_f32};

/// A basic block with its batch norms folded.
struct FoldedBlock {
    conv1: FirstConv,
    /// Always stride 1, padding 1 in a basic block.
    conv2: PaddedConv3x3,
    /// The option-A shortcut's zero channels on each side, if the block
    /// halves the resolution; `None` for the identity.
    shortcut_pad: Option<usize>,
}

/// A block's first convolution: direct on padded planes when it keeps the
/// resolution, through the patch matrix when it has stride 2.
enum FirstConv {
    Direct(PaddedConv3x3),
    Patches(FoldedConv),
}

/// The network's convolutions folded, ready for [`FoldedResNet::stages`].
pub(super) struct FoldedResNet {
    stem: FoldedConv,
    stages: [Vec<FoldedBlock>; 3],
}

/// `conv` then `bn`, folded; `None` unless it is a square convolution
/// without bias, groups or dilation, with square padding, in `f32`.
fn fold(conv: &Conv2d, bn: &BatchNorm) -> Option<FoldedConv> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right)
            if top == left && left == bottom && bottom == right =>
        {
            top
        }
        PaddingConfig2d::Valid => 0,
        _ => return None,
    };
    if conv.bias.is_some()
        || conv.groups != 1
        || conv.dilation != [1, 1]
        || conv.stride[0] != conv.stride[1]
    {
        return None;
    }
    let weight = conv.weight.val();
    let dims = weight.dims();
    let weight: Vec<f32> = weight.into_data().try_into_vec::<f32>().ok()?;
    let vector = |t: Tensor<1>| -> Option<Vec<f32>> { t.into_data().try_into_vec::<f32>().ok() };
    let gamma = vector(bn.gamma.val())?;
    let beta = vector(bn.beta.val())?;
    let mean = vector(bn.running_mean.value())?;
    let var = vector(bn.running_var.value())?;
    let stats = BatchNormStats {
        gamma: &gamma,
        beta: &beta,
        mean: &mean,
        var: &var,
        epsilon: bn.epsilon,
    };
    FoldedConv::fold(&weight, dims, conv.stride[0], padding, &stats)
}

fn fold_block(block: &BasicBlock) -> Option<FoldedBlock> {
    let conv1 = fold(&block.conv1, &block.bn1)?;
    let conv1 = match PaddedConv3x3::new(&conv1) {
        Some(direct) => FirstConv::Direct(direct),
        None => FirstConv::Patches(conv1),
    };
    let conv2 = PaddedConv3x3::new(&fold(&block.conv2, &block.bn2)?)?;
    let shortcut_pad = if block.changes_shape() {
        // Option A subsamples by two: the block must too, and the padding
        // must bring the channels to `planes`.
        let pad = block.planes / 4;
        if block.stride != 2 || block.in_planes + 2 * pad != block.planes {
            return None;
        }
        Some(pad)
    } else {
        None
    };
    Some(FoldedBlock {
        conv1,
        conv2,
        shortcut_pad,
    })
}

impl FoldedBlock {
    fn in_channels(&self) -> usize {
        match &self.conv1 {
            FirstConv::Direct(conv) => conv.in_channels(),
            FirstConv::Patches(conv) => conv.in_channels(),
        }
    }

    /// The block's output planes for input planes `x`.
    fn output_planes(&self, x: PaddedPlanes) -> PaddedPlanes {
        let channels = self.conv2.out_channels();
        match &self.conv1 {
            FirstConv::Direct(_) => PaddedPlanes { channels, ..x },
            FirstConv::Patches(conv) => PaddedPlanes {
                channels,
                h: conv.output_side(x.h),
                w: conv.output_side(x.w),
            },
        }
    }
}

/// One thread's buffers, reused from image to image: the patch matrix and
/// compact planes for the patch-matrix convolutions, padded planes for the
/// rest.
#[derive(Default)]
struct Workspace {
    cols: Vec<f32>,
    compact_in: Vec<f32>,
    compact_out: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    hidden: Vec<f32>,
    shortcut: Vec<f32>,
}

impl FoldedResNet {
    /// The folded network, or `None` if a layer is not one this path knows
    /// (then burn's layers run).
    fn new(net: &CifarResNet) -> Option<Self> {
        let stage =
            |blocks: &[BasicBlock]| blocks.iter().map(fold_block).collect::<Option<Vec<_>>>();
        Some(FoldedResNet {
            stem: fold(&net.conv1, &net.bn1)?,
            stages: [
                stage(&net.layer1)?,
                stage(&net.layer2)?,
                stage(&net.layer3)?,
            ],
        })
    }

    /// The stem's output planes for an `(h, w)` input.
    fn stem_planes(&self, [h, w]: [usize; 2]) -> PaddedPlanes {
        PaddedPlanes {
            channels: self.stem.out_channels(),
            h: self.stem.output_side(h),
            w: self.stem.output_side(w),
        }
    }

    /// `net`'s three stages' outputs for `x` through the folded
    /// convolutions, or `None` (before any folding) if `x` is not an `f32`
    /// tensor on Flex without autodiff, or if `net` or `x` does not fit.
    pub(super) fn stages_of(net: &CifarResNet, x: &Tensor<4>) -> Option<[Tensor<4>; 3]> {
        if !flex_f32(x) || x.device().is_autodiff() {
            return None;
        }
        FoldedResNet::new(net)?.stages(x)
    }

    /// The three stages' outputs for `x` (an `f32` tensor on Flex), or
    /// `None` if it does not fit the network.
    fn stages(&self, x: &Tensor<4>) -> Option<[Tensor<4>; 3]> {
        let [n, channels, h, w] = x.dims();
        if channels != self.stem.in_channels() || n == 0 || h == 0 || w == 0 {
            return None;
        }
        // The planes after each stage, and the largest activation of one
        // image (the size of each thread's buffers).
        let mut planes = self.stem_planes([h, w]);
        let mut largest = Largest::default();
        largest.grow(planes);
        let mut stage_planes = [planes; 3];
        for (s, blocks) in self.stages.iter().enumerate() {
            for block in blocks {
                if block.in_channels() != planes.channels {
                    return None;
                }
                planes = block.output_planes(planes);
                largest.grow(planes);
            }
            stage_planes[s] = planes;
        }
        let sizes = stage_planes.map(|p| p.channels * p.h * p.w);
        let input: Vec<f32> = x.clone().into_data().try_into_vec::<f32>().ok()?;
        let mut outputs = sizes.map(|size| vec![0.0_f32; n * size]);
        let [o1, o2, o3] = &mut outputs;
        input
            .par_chunks(channels * h * w)
            .zip(o1.par_chunks_mut(sizes[0]))
            .zip(o2.par_chunks_mut(sizes[1]))
            .zip(o3.par_chunks_mut(sizes[2]))
            .try_for_each_init(Workspace::default, |ws, (((image, o1), o2), o3)| {
                self.image(image, [h, w], largest, ws, [o1, o2, o3])
            })?;
        let device = x.device();
        let mut tensors = outputs.into_iter().zip(stage_planes).map(|(values, p)| {
            Tensor::<4>::from_data(TensorData::new(values, [n, p.channels, p.h, p.w]), &device)
        });
        Some([tensors.next()?, tensors.next()?, tensors.next()?])
    }

    /// One image through the network, each stage's output into its slot;
    /// `None` if a buffer is short (the sizes disagree with the layers).
    fn image(
        &self,
        image: &[f32],
        [h, w]: [usize; 2],
        largest: Largest,
        ws: &mut Workspace,
        outs: [&mut [f32]; 3],
    ) -> Option<()> {
        let Workspace {
            cols,
            compact_in,
            compact_out,
            a,
            b,
            hidden,
            shortcut,
        } = ws;
        for buffer in [&mut *a, &mut *b, &mut *hidden, &mut *shortcut] {
            buffer.resize(largest.padded, 0.0);
        }
        for buffer in [&mut *compact_in, &mut *compact_out] {
            buffer.resize(largest.compact, 0.0);
        }
        self.stem.run(image, [h, w], cols, compact_out, relu);
        let mut planes = self.stem_planes([h, w]);
        planes.pad(compact_out, a)?;
        for (blocks, out) in self.stages.iter().zip(outs) {
            for block in blocks {
                let next = block.output_planes(planes);
                match &block.conv1 {
                    FirstConv::Direct(conv) => conv.run(a, [planes.h, planes.w], hidden, None)?,
                    FirstConv::Patches(conv) => {
                        planes.unpad(a, compact_in)?;
                        conv.run(compact_in, [planes.h, planes.w], cols, compact_out, relu);
                        let hidden_planes = PaddedPlanes {
                            channels: conv.out_channels(),
                            ..next
                        };
                        hidden_planes.pad(compact_out, hidden)?;
                    }
                }
                let residual = match block.shortcut_pad {
                    None if planes == next => &a[..],
                    None => return None,
                    Some(pad) => {
                        subsampled_shortcut(a, planes, pad, shortcut, next)?;
                        &shortcut[..]
                    }
                };
                block
                    .conv2
                    .run(hidden, [next.h, next.w], b, Some(residual))?;
                std::mem::swap(a, b);
                planes = next;
            }
            planes.unpad(a, out)?;
        }
        Some(())
    }
}

/// The largest activation of one image, padded and compact.
#[derive(Debug, Clone, Copy, Default)]
struct Largest {
    padded: usize,
    compact: usize,
}

impl Largest {
    fn grow(&mut self, planes: PaddedPlanes) {
        self.padded = self.padded.max(planes.len());
        self.compact = self.compact.max(planes.channels * planes.h * planes.w);
    }
}

/// The option-A shortcut: `x[:, ::2, ::2]` with `pad` zero channels on
/// each side, from `x` laid out as `from` into `out` laid out as `to`.
fn subsampled_shortcut(
    x: &[f32],
    from: PaddedPlanes,
    pad: usize,
    out: &mut [f32],
    to: PaddedPlanes,
) -> Option<()> {
    if from.channels + 2 * pad != to.channels
        || to.h != from.h.div_ceil(2)
        || to.w != from.w.div_ceil(2)
    {
        return None;
    }
    let out = out.get_mut(..to.len())?;
    out.fill(0.0);
    for c in 0..from.channels {
        for y in 0..to.h {
            let (target, source) = (to.at(c + pad, y, 0), from.at(c, 2 * y, 0));
            let line = x.get(source..source + from.w)?;
            for (o, v) in out[target..target + to.w]
                .iter_mut()
                .zip(line.iter().step_by(2))
            {
                *o = *v;
            }
        }
    }
    Some(())
}

/// ReLU in place; a NaN stays NaN, as burn's does, so bad input shows.
fn relu(_: usize, plane: &mut [f32]) {
    for v in plane {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::{Param, RunningState};
    use burn::nn::BatchNorm;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::FoldedResNet;
    use crate::nets::CifarResNetConfig;

    /// Batch norms with statistics far from the identity, so a folding
    /// error shows.
    fn perturb(bn: &mut BatchNorm, device: &Device) {
        let [c] = bn.gamma.val().dims();
        let uniform = |lo, hi| Tensor::<1>::random([c], Distribution::Uniform(lo, hi), device);
        bn.gamma = Param::from_tensor(uniform(0.5, 1.5));
        bn.beta = Param::from_tensor(uniform(-0.5, 0.5));
        bn.running_mean = RunningState::new(uniform(-0.3, 0.3));
        bn.running_var = RunningState::new(uniform(0.2, 2.0));
    }

    fn perturbed_resnet20(device: &Device) -> crate::nets::CifarResNet {
        let mut net = CifarResNetConfig::new(20, 10).init(device).unwrap();
        perturb(&mut net.bn1, device);
        for block in net
            .layer1
            .iter_mut()
            .chain(&mut net.layer2)
            .chain(&mut net.layer3)
        {
            perturb(&mut block.bn1, device);
            perturb(&mut block.bn2, device);
        }
        net
    }

    fn largest_relative_gap(a: Tensor<4>, b: Tensor<4>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.into_data().try_into_vec::<f32>().unwrap();
        let b = b.into_data().try_into_vec::<f32>().unwrap();
        let scale = b.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.1, "the activations vanished: {scale}");
        a.iter()
            .zip(&b)
            .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    #[test]
    fn folded_stages_equal_burns_layers() {
        let device = Device::flex();
        let net = perturbed_resnet20(&device);
        let folded = FoldedResNet::new(&net).expect("ResNet-20's layers fold");
        // CIFAR's size, and odd sizes: the stride-2 convolutions and the
        // shortcut's subsampling meet an odd side.
        for [n, h, w] in [[3, 32, 32], [2, 33, 31], [1, 9, 14]] {
            let x = Tensor::<4>::random([n, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
            let fast = folded.stages(&x).expect("Flex f32 without autodiff");
            let reference = net.layer_stages(x);
            for (s, (f, r)) in fast.into_iter().zip(reference).enumerate() {
                let gap = largest_relative_gap(f, r);
                assert!(gap < 1e-4, "stage {s} of {n}x3x{h}x{w}: relative gap {gap}");
            }
        }
    }

    #[test]
    fn autodiff_and_other_inputs_keep_burns_layers() {
        let device = Device::flex();
        let net = perturbed_resnet20(&device);
        let folded = FoldedResNet::new(&net).unwrap();
        // Input gradients need burn's graph.
        let on_autodiff = Tensor::<4>::zeros([1, 3, 8, 8], &device.clone().autodiff());
        assert!(FoldedResNet::stages_of(&net, &on_autodiff).is_none());
        // A grey image does not fit the stem: burn's layer reports it.
        assert!(
            folded
                .stages(&Tensor::<4>::zeros([1, 1, 8, 8], &device))
                .is_none()
        );
        assert!(
            folded
                .stages(&Tensor::<4>::zeros([0, 3, 8, 8], &device))
                .is_none()
        );
    }

    #[test]
    fn nan_input_stays_nan() {
        let device = Device::flex();
        let net = perturbed_resnet20(&device);
        let folded = FoldedResNet::new(&net).unwrap();
        let mut values = vec![0.5_f32; 3 * 8 * 8];
        values[17] = f32::NAN;
        let x =
            Tensor::<4>::from_data(burn::tensor::TensorData::new(values, [1, 3, 8, 8]), &device);
        let [_, _, last] = folded.stages(&x).unwrap();
        let last = last.into_data().try_into_vec::<f32>().unwrap();
        assert!(last.iter().any(|v| v.is_nan()), "a NaN input vanished");
    }
}
