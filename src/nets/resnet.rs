//! The CIFAR ResNets of He et al. (2016, section 4.2), as trained in
//! PyTorch by github.com/akamaster/pytorch_resnet_cifar10, with a loader
//! for their weights saved as safetensors.

use std::path::Path;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::resnet_inference::FoldedResNet;
use crate::error::{Error, Result};
use crate::model::BurnClassifier;

/// The depths of the CIFAR ResNet family: 6n + 2 for n = 3, 5, 7, 9 basic
/// blocks per stage.
pub const CIFAR_RESNET_DEPTHS: [usize; 4] = [20, 32, 44, 56];

/// Builds a [`CifarResNet`] with fresh weights.
#[derive(Debug, Clone)]
pub struct CifarResNetConfig {
    /// 20, 32, 44 or 56.
    pub depth: usize,
    /// Number of classes (10 for CIFAR-10).
    pub num_classes: usize,
}

impl CifarResNetConfig {
    /// A ResNet of `depth` (20, 32, 44 or 56) for `num_classes` classes.
    pub fn new(depth: usize, num_classes: usize) -> Self {
        CifarResNetConfig { depth, num_classes }
    }

    /// Basic blocks per stage, checked.
    fn blocks(&self) -> Result<usize> {
        if !CIFAR_RESNET_DEPTHS.contains(&self.depth) {
            return Err(Error::invalid(
                "depth",
                self.depth,
                format!("the CIFAR ResNets have depth {CIFAR_RESNET_DEPTHS:?}"),
            ));
        }
        if self.num_classes == 0 {
            return Err(Error::invalid("num_classes", 0, "must be at least 1"));
        }
        Ok((self.depth - 2) / 6)
    }

    /// The network with burn's default initialisation on `device`.
    pub fn init(&self, device: &Device) -> Result<CifarResNet> {
        let n = self.blocks()?;
        let stage = |in_planes: usize, planes: usize, stride: usize| -> Vec<BasicBlock> {
            (0..n)
                .map(|i| {
                    let (input, stride) = if i == 0 {
                        (in_planes, stride)
                    } else {
                        (planes, 1)
                    };
                    BasicBlock::new(input, planes, stride, device)
                })
                .collect()
        };
        Ok(CifarResNet {
            conv1: conv3x3(3, 16, 1, device),
            bn1: BatchNormConfig::new(16).init(device),
            layer1: stage(16, 16, 1),
            layer2: stage(16, 32, 2),
            layer3: stage(32, 64, 2),
            linear: LinearConfig::new(64, self.num_classes).init(device),
            activation: Relu,
            depth: self.depth,
        })
    }
}

/// A 3x3 convolution, padding 1, no bias.
fn conv3x3(input: usize, output: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([input, output], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// conv3x3-BN-ReLU-conv3x3-BN plus the option-A shortcut, then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub(super) conv1: Conv2d,
    pub(super) bn1: BatchNorm,
    pub(super) conv2: Conv2d,
    pub(super) bn2: BatchNorm,
    activation: Relu,
    pub(super) in_planes: usize,
    pub(super) planes: usize,
    pub(super) stride: usize,
}

impl BasicBlock {
    fn new(in_planes: usize, planes: usize, stride: usize, device: &Device) -> Self {
        BasicBlock {
            conv1: conv3x3(in_planes, planes, stride, device),
            bn1: BatchNormConfig::new(planes).init(device),
            conv2: conv3x3(planes, planes, 1, device),
            bn2: BatchNormConfig::new(planes).init(device),
            activation: Relu,
            in_planes,
            planes,
            stride,
        }
    }

    /// Whether the block changes the resolution or the channel count, so
    /// its shortcut is option A rather than the identity.
    pub(super) fn changes_shape(&self) -> bool {
        self.stride != 1 || self.in_planes != self.planes
    }

    /// The block's output.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self
            .activation
            .forward(self.bn1.forward(self.conv1.forward(x.clone())));
        let out = self.bn2.forward(self.conv2.forward(out));
        let shortcut = if self.changes_shape() {
            option_a_shortcut(x, self.planes)
        } else {
            x
        };
        self.activation.forward(out + shortcut)
    }
}

/// The parameter-free shortcut "option A" where a block changes shape:
/// `x[:, :, ::2, ::2]` with `planes / 4` zero channels added on each side.
pub fn option_a_shortcut(x: Tensor<4>, planes: usize) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    // Every other row and column: split each spatial axis in pairs and
    // keep the first of each (odd sizes keep their last row/column, as
    // ::2 does).
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let padded = if h % 2 == 1 || w % 2 == 1 {
        let zeros_h = Tensor::<4>::zeros([n, c, h2 * 2 - h, w], &device);
        let x = Tensor::cat(vec![x, zeros_h], 2);
        let zeros_w = Tensor::<4>::zeros([n, c, h2 * 2, w2 * 2 - w], &device);
        Tensor::cat(vec![x, zeros_w], 3)
    } else {
        x
    };
    let sub = padded
        .reshape([n, c, h2, 2, w2, 2])
        .slice([0..n, 0..c, 0..h2, 0..1, 0..w2, 0..1])
        .reshape([n, c, h2, w2]);
    let pad = planes / 4;
    let zeros = || Tensor::<4>::zeros([n, pad, h2, w2], &device);
    Tensor::cat(vec![zeros(), sub, zeros()], 1)
}

/// The CIFAR ResNet: conv3x3(3→16)-BN-ReLU, three stages of basic blocks
/// (16, 32, 64 channels; the first block of stages 2 and 3 halves the
/// resolution), global average pooling, Linear(64 → classes).
///
/// As a [`BurnClassifier`] its feature layers are `layer1` and `layer2`
/// (channel means of those stages' outputs) and `pool` (the pooled
/// 64-vector, penultimate; the `head` is the linear layer), so every
/// feature detector works on it.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use oodkit::model::BurnClassifier;
/// use oodkit::nets::CifarResNetConfig;
///
/// let device = Device::flex();
/// let net = CifarResNetConfig::new(20, 10).init(&device)?;
/// assert_eq!(net.num_parameters(), 269_722); // as PyTorch counts ResNet-20's
/// let logits = net.logits(Tensor::zeros([2, 3, 32, 32], &device));
/// assert_eq!(logits.dims(), [2, 10]);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Module, Debug)]
pub struct CifarResNet {
    pub(super) conv1: Conv2d,
    pub(super) bn1: BatchNorm,
    pub(super) layer1: Vec<BasicBlock>,
    pub(super) layer2: Vec<BasicBlock>,
    pub(super) layer3: Vec<BasicBlock>,
    linear: Linear,
    activation: Relu,
    depth: usize,
}

impl CifarResNet {
    /// The depth (20, 32, 44 or 56).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Parameters, as PyTorch counts them (BatchNorm's running statistics
    /// are not parameters).
    pub fn num_parameters(&self) -> usize {
        let convs = |blocks: &[BasicBlock]| -> usize {
            blocks
                .iter()
                .map(|b| {
                    b.conv1.weight.val().shape().num_elements()
                        + b.conv2.weight.val().shape().num_elements()
                        + 4 * b.planes
                })
                .sum()
        };
        let [d_in, d_out] = self.linear.weight.val().dims();
        self.conv1.weight.val().shape().num_elements()
            + 2 * 16
            + convs(&self.layer1)
            + convs(&self.layer2)
            + convs(&self.layer3)
            + d_in * d_out
            + d_out
    }

    /// The three stages' outputs: at inference on Flex through the folded
    /// convolutions (`resnet_inference`), else through burn's layers.
    fn stages(&self, x: Tensor<4>) -> [Tensor<4>; 3] {
        if let Some(stages) = FoldedResNet::stages_of(self, &x) {
            return stages;
        }
        self.layer_stages(x)
    }

    /// The three stages' outputs through burn's layers.
    pub(super) fn layer_stages(&self, x: Tensor<4>) -> [Tensor<4>; 3] {
        let stem = self
            .activation
            .forward(self.bn1.forward(self.conv1.forward(x)));
        let run =
            |x: Tensor<4>, stage: &[BasicBlock]| stage.iter().fold(x, |x, block| block.forward(x));
        let l1 = run(stem, &self.layer1);
        let l2 = run(l1.clone(), &self.layer2);
        let l3 = run(l2.clone(), &self.layer3);
        [l1, l2, l3]
    }

    /// Loads a PyTorch state dict of this architecture saved as
    /// safetensors (`conv1.weight`, `bn1.{weight,bias,running_mean,running_var}`,
    /// `layer{1,2,3}.{i}.conv{1,2}.weight`, `layer{1,2,3}.{i}.bn{1,2}.*`,
    /// `linear.{weight,bias}`, all `f32`; a `module.` prefix, as
    /// `nn.DataParallel` saves, is accepted; `num_batches_tracked` and any
    /// other extra tensor are ignored). The number of classes comes from
    /// `linear.bias`. A missing, misshaped or non-`f32` tensor is an error
    /// naming it.
    pub fn from_safetensors(path: impl AsRef<Path>, depth: usize, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    path: path.to_path_buf(),
                    hint: "give the path of a .safetensors state dict".into(),
                }
            } else {
                Error::io(path, e)
            }
        })?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::corrupt(path, None, format!("not a safetensors file: {e}")))?;
        let weights = Weights::new(&file, path, device);
        let classes = weights.len_of("linear.bias")?;
        let mut net = CifarResNetConfig::new(depth, classes).init(device)?;
        net.conv1.weight = weights.param("conv1.weight", [16, 3, 3, 3])?;
        weights.batch_norm(&mut net.bn1, "bn1", 16)?;
        for (s, stage) in [&mut net.layer1, &mut net.layer2, &mut net.layer3]
            .into_iter()
            .enumerate()
        {
            for (i, block) in stage.iter_mut().enumerate() {
                let prefix = format!("layer{}.{i}", s + 1);
                let (input, planes) = (block.in_planes, block.planes);
                block.conv1 = Conv2d {
                    weight: weights
                        .param(&format!("{prefix}.conv1.weight"), [planes, input, 3, 3])?,
                    ..block.conv1.clone()
                };
                block.conv2 = Conv2d {
                    weight: weights
                        .param(&format!("{prefix}.conv2.weight"), [planes, planes, 3, 3])?,
                    ..block.conv2.clone()
                };
                weights.batch_norm(&mut block.bn1, &format!("{prefix}.bn1"), planes)?;
                weights.batch_norm(&mut block.bn2, &format!("{prefix}.bn2"), planes)?;
            }
        }
        // PyTorch stores (out, in); burn's Linear holds (in, out).
        let w: Tensor<2> = weights.tensor("linear.weight", [classes, 64])?;
        net.linear.weight = Param::from_tensor(w.transpose());
        net.linear.bias = Some(weights.param("linear.bias", [classes])?);
        Ok(net)
    }
}

/// Tensors of a safetensors file, read by name and checked.
struct Weights<'a> {
    file: &'a SafeTensors<'a>,
    path: &'a Path,
    device: &'a Device,
    /// The prefix the file's names carry (`""` or `"module."`).
    prefix: String,
}

impl<'a> Weights<'a> {
    fn new(file: &'a SafeTensors<'a>, path: &'a Path, device: &'a Device) -> Self {
        let prefix =
            if file.tensor("conv1.weight").is_err() && file.tensor("module.conv1.weight").is_ok() {
                "module.".to_owned()
            } else {
                String::new()
            };
        Weights {
            file,
            path,
            device,
            prefix,
        }
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'a>> {
        self.file
            .tensor(&format!("{}{name}", self.prefix))
            .map_err(|_| {
                let mut names: Vec<String> =
                    self.file.names().into_iter().map(String::from).collect();
                names.sort();
                let shown = names.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
                Error::corrupt(
                    self.path,
                    None,
                    format!(
                        "tensor `{name}` is missing (the file holds {} tensors: {shown}, ...): \
                         is it a CIFAR ResNet state dict of this depth?",
                        names.len()
                    ),
                )
            })
    }

    /// The length of the 1-D tensor `name`.
    fn len_of(&self, name: &str) -> Result<usize> {
        match self.view(name)?.shape() {
            [len] => Ok(*len),
            shape => Err(Error::corrupt(
                self.path,
                None,
                format!("tensor `{name}` has shape {shape:?}, expected one dimension"),
            )),
        }
    }

    /// Tensor `name`, checked to be `f32` of `shape`.
    fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let view = self.view(name)?;
        if view.shape() != shape {
            return Err(Error::corrupt(
                self.path,
                None,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?} for this depth",
                    view.shape()
                ),
            ));
        }
        if view.dtype() != Dtype::F32 {
            return Err(Error::corrupt(
                self.path,
                None,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::corrupt(
                self.path,
                None,
                format!(
                    "tensor `{name}` holds {} at flat index {i}: the weights are damaged",
                    values[i]
                ),
            ));
        }
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ))
    }

    fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>> {
        Ok(Param::from_tensor(self.tensor(name, shape)?))
    }

    /// A BatchNorm's weight, bias and running statistics from `prefix.*`.
    fn batch_norm(&self, bn: &mut BatchNorm, prefix: &str, size: usize) -> Result<()> {
        bn.gamma = self.param(&format!("{prefix}.weight"), [size])?;
        bn.beta = self.param(&format!("{prefix}.bias"), [size])?;
        bn.running_mean =
            RunningState::new(self.tensor(&format!("{prefix}.running_mean"), [size])?);
        bn.running_var = RunningState::new(self.tensor(&format!("{prefix}.running_var"), [size])?);
        Ok(())
    }
}

/// Averages each channel of `(N, C, H, W)` maps to `(N, C)`.
fn channel_means(maps: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = maps.dims();
    maps.mean_dim(3).mean_dim(2).reshape([n, c])
}

impl BurnClassifier for CifarResNet {
    fn logits(&self, inputs: Tensor<4>) -> Tensor<2> {
        let [_, _, last] = self.stages(inputs);
        self.linear.forward(channel_means(last))
    }

    fn feature_layers(&self) -> Vec<String> {
        ["layer1", "layer2", "pool"].map(String::from).to_vec()
    }

    fn forward_features(&self, inputs: Tensor<4>) -> (Vec<Tensor<2>>, Tensor<2>) {
        let [l1, l2, l3] = self.stages(inputs);
        let pooled = channel_means(l3);
        let logits = self.linear.forward(pooled.clone());
        (vec![channel_means(l1), channel_means(l2), pooled], logits)
    }

    fn head(&self, penultimate: Tensor<2>) -> Option<Tensor<2>> {
        Some(self.linear.forward(penultimate))
    }

    fn head_linear(&self) -> Option<&Linear> {
        Some(&self.linear)
    }

    fn has_feature_map(&self) -> bool {
        true
    }

    /// The output of the last stage, `(N, 64, 8, 8)` on 32x32 inputs.
    fn last_feature_map(&self, inputs: Tensor<4>) -> Option<Tensor<4>> {
        let [_, _, last] = self.stages(inputs);
        Some(last)
    }

    fn logits_from_map(&self, map: Tensor<4>) -> Option<Tensor<2>> {
        Some(self.linear.forward(channel_means(map)))
    }
}
