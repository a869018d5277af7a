//! The toy convnet of the Python toolkit's MNIST tutorial.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, Relu};
use burn::tensor::{Device, Distribution, Tensor};

use super::init::{dense, glorot, zero_bias};
use crate::error::{Error, Result};
use crate::kernels::conv_relu_pool;
use crate::model::{BurnClassifier, dropout_mask};

/// How to build a [`ToyConvnet`]: input channels and side, number of
/// classes, dropout rate.
#[derive(Debug, Clone, PartialEq)]
pub struct ToyConvnetConfig {
    /// Input channels (1 for MNIST, 3 for CIFAR-10).
    pub in_channels: usize,
    /// Height and width of the (square) input images.
    pub image_size: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Dropout rate before the last layer, while training.
    pub dropout: f64,
}

/// The most weights the toy convnet's dense layer may take (256 Mi, 1 GiB
/// of `f32`: images of about 1000x1000 with 10 classes).
const MAX_DENSE_WEIGHTS: usize = 1 << 28;

impl ToyConvnetConfig {
    /// The network for `in_channels` x `image_size` x `image_size` images and
    /// `num_classes` classes, with dropout 0.5.
    pub fn new(in_channels: usize, image_size: usize, num_classes: usize) -> Self {
        ToyConvnetConfig {
            in_channels,
            image_size,
            num_classes,
            dropout: 0.5,
        }
    }

    /// Sets the dropout rate.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Side of the feature maps after the second pooling.
    fn final_side(&self) -> Option<usize> {
        let after_first = self.image_size.checked_sub(2)? / 2;
        Some(after_first.checked_sub(2)? / 2).filter(|&s| s > 0)
    }

    /// Builds the network with freshly initialised weights on `device`.
    pub fn init(&self, device: &Device) -> Result<ToyConvnet> {
        if self.in_channels == 0 {
            return Err(Error::invalid("in_channels", 0, "need at least one"));
        }
        if self.num_classes == 0 {
            return Err(Error::invalid("num_classes", 0, "need at least one"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                "dropout",
                self.dropout.to_string(),
                "must be in [0, 1)",
            ));
        }
        let side = self.final_side().ok_or_else(|| {
            Error::invalid(
                "image_size",
                self.image_size.to_string(),
                "two 3x3 convolutions and 2x2 poolings need images of at least 10x10",
            )
        })?;
        // The dense layer grows with the square of the side: a size typed
        // wrong (or read from a hostile image) would take all memory.
        let dense_weights = (64 * side * side).checked_mul(self.num_classes);
        if dense_weights.is_none_or(|n| n > MAX_DENSE_WEIGHTS) {
            return Err(Error::invalid(
                "image_size",
                format!("{} with {} classes", self.image_size, self.num_classes),
                format!(
                    "its last layer would hold more than {MAX_DENSE_WEIGHTS} weights: the toy \
                     convnet is meant for small images (e.g. 28x28 or 32x32; give a smaller \
                     --size)"
                ),
            ));
        }
        let conv = |channels: [usize; 2]| {
            let mut conv = Conv2dConfig::new(channels, [3, 3])
                .with_initializer(glorot())
                .init(device);
            conv.bias = Some(zero_bias(channels[1], device));
            conv
        };
        Ok(ToyConvnet {
            conv1: conv([self.in_channels, 32]),
            conv2: conv([32, 64]),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            activation: Relu,
            dropout: DropoutConfig::new(self.dropout).init(),
            linear: dense(64 * side * side, self.num_classes, device),
        })
    }
}

/// Conv2d(C→32, 3x3) ReLU MaxPool2 Conv2d(32→64, 3x3) ReLU MaxPool2 Flatten
/// Dropout Linear(→classes): the Python toolkit's MNIST network (1600
/// features before the last layer on 28x28 inputs).
///
/// As a [`BurnClassifier`] it exposes the layers `"pool1"` and `"pool2"`
/// (globally average-pooled to `(N, 32)` and `(N, 64)`), `"flatten"` (the
/// penultimate layer, `(N, 1600)` on MNIST) and the logits.
#[derive(Module, Debug)]
pub struct ToyConvnet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    activation: Relu,
    dropout: Dropout,
    linear: Linear,
}

impl ToyConvnet {
    /// The logits of a batch `(N, C, H, W)`.
    pub fn forward(&self, inputs: Tensor<4>) -> Tensor<2> {
        let (_, pool2) = self.convolutions(inputs);
        self.head(pool2.flatten(1, 3))
    }

    /// The two conv-ReLU-pool stages: their outputs. At inference on Flex
    /// they run through the crate's direct convolution
    /// ([`toy_convnet_inference`](super::toy_convnet_inference)).
    fn convolutions(&self, inputs: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        if let Some(stages) =
            super::toy_convnet_inference::convolutions(&self.conv1, &self.conv2, &inputs)
        {
            return stages;
        }
        let pool1 = self.stage(&self.conv1, inputs);
        let pool2 = self.stage(&self.conv2, pool1.clone());
        (pool1, pool2)
    }

    /// Convolution, ReLU, max-pool. On Flex (f32, with or without
    /// autodiff) one fused operation on the crate's direct kernels with
    /// its own backward ([`conv_relu_pool`](crate::kernels)); elsewhere
    /// burn's layers, pooling before the ReLU (the same values and
    /// gradients, ReLU being monotonic, on a quarter of the elements).
    fn stage(&self, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
        if let Some(pooled) = conv_relu_pool(conv, &x) {
            return pooled;
        }
        self.activation.forward(self.pool.forward(conv.forward(x)))
    }

    /// Dropout and the last layer, on the flattened features. Dropout acts
    /// as burn's `Dropout` does (only while training under autodiff), with
    /// the crate's counter-based mask ([`dropout_mask`]): burn draws every
    /// entry from a ChaCha generator, a tenth of a training step. The mask's
    /// seed comes from the device's generator, so a seeded run repeats.
    fn head(&self, flat: Tensor<2>) -> Tensor<2> {
        let device = flat.device();
        let dropout = &self.dropout;
        if !dropout.training.is_enabled() || !device.is_autodiff() || dropout.prob == 0.0 {
            return self.linear.forward(flat);
        }
        self.dropped_head(flat, step_seed(&device), false)
    }

    /// The last layer on `flat` with dropout at the module's rate, the
    /// mask drawn from `seed` (none at rate 0): one mask entry per value,
    /// or with `shared` one mask row for every input of the batch (Monte
    /// Carlo dropout, whose scores must not depend on the batch).
    fn dropped_head(&self, flat: Tensor<2>, seed: u64, shared: bool) -> Tensor<2> {
        if self.dropout.prob == 0.0 {
            return self.linear.forward(flat);
        }
        let [n, d] = flat.dims();
        let rows = if shared { 1 } else { n };
        let mask = dropout_mask([rows, d], self.dropout.prob, seed, &flat.device());
        self.linear.forward(flat * mask)
    }
}

/// A seed drawn from `device`'s generator (two uniform draws' bits).
fn step_seed(device: &Device) -> u64 {
    // Converted to f32 whatever the device's float type, which cannot fail.
    let draws = Tensor::<1>::random([2], Distribution::Default, device)
        .try_into_vec_as::<f32>()
        .unwrap_or_default();
    draws
        .iter()
        .fold(0_u64, |seed, v| (seed << 32) | u64::from(v.to_bits()))
}

/// Averages each channel of `(N, C, H, W)` maps to `(N, C)`.
fn global_average_pool(maps: Tensor<4>) -> Tensor<2> {
    maps.flatten::<3>(2, 3).mean_dim(2).flatten(1, 2)
}

impl BurnClassifier for ToyConvnet {
    fn logits(&self, inputs: Tensor<4>) -> Tensor<2> {
        self.forward(inputs)
    }

    fn feature_layers(&self) -> Vec<String> {
        ["pool1", "pool2", "flatten"].map(String::from).to_vec()
    }

    fn forward_features(&self, inputs: Tensor<4>) -> (Vec<Tensor<2>>, Tensor<2>) {
        let (pool1, pool2) = self.convolutions(inputs);
        let flat: Tensor<2> = pool2.clone().flatten(1, 3);
        let logits = self.head(flat.clone());
        let features = vec![global_average_pool(pool1), global_average_pool(pool2), flat];
        (features, logits)
    }

    fn head(&self, penultimate: Tensor<2>) -> Option<Tensor<2>> {
        Some(self.head(penultimate))
    }

    /// Dropout is the identity in inference, so the head is this layer.
    fn head_linear(&self) -> Option<&Linear> {
        Some(&self.linear)
    }

    /// The output of the second conv-ReLU-pool stage.
    fn last_feature_map(&self, inputs: Tensor<4>) -> Option<Tensor<4>> {
        Some(self.convolutions(inputs).1)
    }

    fn logits_from_map(&self, map: Tensor<4>) -> Option<Tensor<2>> {
        Some(self.head(map.flatten(1, 3)))
    }

    fn has_feature_map(&self) -> bool {
        true
    }

    fn has_dropout(&self) -> bool {
        true
    }

    /// Dropout of the flattened features at the training rate, whatever the
    /// module's mode and device (burn's own dropout runs only while
    /// training under autodiff).
    fn stochastic_logits(&self, inputs: Tensor<4>, seed: u64) -> Option<Tensor<2>> {
        let flat: Tensor<2> = self.convolutions(inputs).1.flatten(1, 3);
        Some(self.dropped_head(flat, seed, true))
    }

    /// The convolutions once, then one mask and the last layer per pass.
    fn stochastic_passes(&self, inputs: Tensor<4>, seeds: &[u64]) -> Option<Vec<Tensor<2>>> {
        let flat: Tensor<2> = self.convolutions(inputs).1.flatten(1, 3);
        let passes = seeds
            .iter()
            .map(|&seed| self.dropped_head(flat.clone(), seed, true));
        Some(passes.collect())
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::{ToyConvnet, ToyConvnetConfig};

    /// The network written as the reference: ReLU before burn's pool.
    fn plain_logits(net: &ToyConvnet, x: Tensor<4>) -> Tensor<2> {
        let stage = |conv: &burn::nn::conv::Conv2d, x| {
            net.pool.forward(net.activation.forward(conv.forward(x)))
        };
        let maps = stage(&net.conv2, stage(&net.conv1, x));
        net.linear.forward(maps.flatten(1, 3))
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn inference_gives_the_plain_layers_values_to_rounding() {
        let device = Device::flex();
        let net = ToyConvnetConfig::new(1, 28, 10)
            .init(&device)
            .unwrap()
            .valid();
        let x = Tensor::<4>::random([5, 1, 28, 28], Distribution::Default, &device);
        let (got, expected) = (
            values(net.forward(x.clone())),
            values(plain_logits(&net, x)),
        );
        assert_eq!(got.len(), expected.len());
        // The convolution sums in another order: equal to float rounding.
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{g} vs {e}");
        }
    }

    #[test]
    fn inference_on_odd_sides_and_colour_gives_the_plain_layers_values() {
        let device = Device::flex();
        let net = ToyConvnetConfig::new(3, 17, 4).init(&device).unwrap();
        // 17 and 19: odd maps before both poolings, a non-square input.
        let x = Tensor::<4>::random([3, 3, 17, 19], Distribution::Default, &device);
        let (pool1, pool2) =
            crate::nets::toy_convnet_inference::convolutions(&net.conv1, &net.conv2, &x)
                .expect("Flex f32 without autodiff takes the direct path");
        assert_eq!((pool1.dims(), pool2.dims()), ([3, 32, 7, 8], [3, 64, 2, 3]));
        let reference = |conv: &burn::nn::conv::Conv2d, x| {
            net.pool.forward(net.activation.forward(conv.forward(x)))
        };
        let plain1 = reference(&net.conv1, x);
        let plain2 = reference(&net.conv2, plain1.clone());
        for (got, want) in [(pool1, plain1), (pool2, plain2)] {
            let (got, want) = (
                got.try_into_vec_as::<f32>().unwrap(),
                want.try_into_vec_as::<f32>().unwrap(),
            );
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{g} vs {e}");
            }
        }
    }

    #[test]
    fn a_nan_pixel_reaches_the_logits_at_inference() {
        let device = Device::flex();
        let net = ToyConvnetConfig::new(1, 28, 10).init(&device).unwrap();
        let mut values = vec![0.25_f32; 28 * 28];
        values[300] = f32::NAN;
        let x = Tensor::<4>::from_data(
            burn::tensor::TensorData::new(values, [1, 1, 28, 28]),
            &device,
        );
        let logits = net.forward(x).try_into_vec_as::<f32>().unwrap();
        assert!(logits.iter().all(|v| v.is_nan()), "{logits:?}");
    }

    #[test]
    fn training_gives_the_plain_layers_gradients() {
        let device = Device::flex().autodiff();
        let net = ToyConvnetConfig::new(1, 28, 10)
            .with_dropout(0.0)
            .init(&device)
            .unwrap()
            .train();
        let x = Tensor::<4>::random([6, 1, 28, 28], Distribution::Default, &device);
        // A loss that weighs every logit differently.
        let weights = Tensor::<2>::random([6, 10], Distribution::Default, &device);
        let grads_of = |logits: Tensor<2>| {
            let grads = (logits * weights.clone()).sum().backward();
            [
                net.conv1.weight.val().grad(&grads),
                net.conv2.weight.val().grad(&grads),
                net.linear
                    .weight
                    .val()
                    .grad(&grads)
                    .map(|g| g.reshape([-1, 1, 1, 1])),
            ]
            .map(|g| g.unwrap().try_into_vec_as::<f32>().unwrap())
        };
        let fast = grads_of(net.forward(x.clone()));
        let plain = grads_of(plain_logits(&net, x));
        for (layer, (f, p)) in fast.iter().zip(&plain).enumerate() {
            assert_eq!(f.len(), p.len());
            let worst = f
                .iter()
                .zip(p)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let scale = p.iter().map(|v| v.abs()).fold(0.0, f32::max);
            assert!(
                scale > 0.0 && worst <= 1e-5 * scale,
                "layer {layer}: {worst} vs {scale}"
            );
        }
    }

    #[test]
    fn training_drops_half_the_features_with_a_fresh_mask_each_step() {
        let device = Device::flex().autodiff();
        let net = ToyConvnetConfig::new(1, 28, 10)
            .init(&device)
            .unwrap()
            .train();
        // The gradient of the logits' sum reaches a feature only if the
        // mask kept it (and then scaled by 2).
        let kept = || {
            let flat = Tensor::<2>::ones([64, 1600], &device).require_grad();
            let grads = net.head(flat.clone()).sum().backward();
            let grad = flat.grad(&grads).unwrap().try_into_vec_as::<f32>().unwrap();
            grad.iter().map(|&g| g != 0.0).collect::<Vec<bool>>()
        };
        let (first, second) = (kept(), kept());
        let share = first.iter().filter(|&&k| k).count() as f64 / first.len() as f64;
        // 102 400 draws: 5 standard deviations are 0.008.
        assert!((share - 0.5).abs() < 0.008, "kept {share}");
        assert_ne!(first, second, "the same mask twice");
        // At inference the head is the last layer alone.
        let net = net.valid();
        let flat = Tensor::<2>::ones([2, 1600], &Device::flex());
        assert_eq!(
            values(net.head(flat.clone())),
            values(net.linear.forward(flat))
        );
    }
}
