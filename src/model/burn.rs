//! The burn adapter: any burn module implementing [`BurnClassifier`] becomes
//! a [`Model`] (and a [`FeatureModel`]) through [`BurnModel`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayView4};

use super::closure::LOGITS;
use super::shaping::Shaping;
use super::{
    FeatureModel, InputGradient, LastLayer, LayerId, MapEditing, Model, ModelOutput,
    StochasticPasses, pick_layers, resolve_layers,
};
use crate::error::{Error, Result};

/// A burn module that classifies images: `(N, C, H, W)` in, logits
/// `(N, num_classes)` out.
///
/// Implement [`logits`](Self::logits) (usually your module's `forward`).
/// Detectors on features also need [`feature_layers`](Self::feature_layers)
/// and [`forward_features`](Self::forward_features); their defaults expose
/// no layer but the logits.
pub trait BurnClassifier: Module {
    /// The logits of a batch.
    fn logits(&self, inputs: Tensor<4>) -> Tensor<2>;

    /// The names of the layers [`forward_features`](Self::forward_features)
    /// returns, in forward order (the logits are not among them).
    fn feature_layers(&self) -> Vec<String> {
        Vec::new()
    }

    /// The activations of the [`feature_layers`](Self::feature_layers), each
    /// reduced to `(N, D)`, and the logits.
    fn forward_features(&self, inputs: Tensor<4>) -> (Vec<Tensor<2>>, Tensor<2>) {
        (Vec::new(), self.logits(inputs))
    }

    /// The last layer: the logits of activations of the last of the
    /// [`feature_layers`](Self::feature_layers), when that layer feeds the
    /// logits directly. Activation shaping ([`Shaping`]) needs it; the
    /// default (`None`) makes a shaped model an error.
    fn head(&self, penultimate: Tensor<2>) -> Option<Tensor<2>> {
        let _ = penultimate;
        None
    }

    /// The last layer as a [`Linear`], when it is one: what
    /// [`LastLayer::head_parameters`](crate::model::LastLayer::head_parameters) reads (ViM needs it). The default
    /// (`None`) makes that an error.
    fn head_linear(&self) -> Option<&Linear> {
        None
    }

    /// The last convolutional feature map `(N, C, H, W)` of a batch, which
    /// [`logits_from_map`](Self::logits_from_map) finishes into logits:
    /// what RankFeat edits. The default (`None`) makes RankFeat an error.
    /// Say so in [`has_feature_map`](Self::has_feature_map) when you
    /// implement it.
    fn last_feature_map(&self, inputs: Tensor<4>) -> Option<Tensor<4>> {
        let _ = inputs;
        None
    }

    /// The rest of the network after
    /// [`last_feature_map`](Self::last_feature_map): the logits of a map.
    fn logits_from_map(&self, map: Tensor<4>) -> Option<Tensor<2>> {
        let _ = map;
        None
    }

    /// One forward pass with the module's dropout active, as Monte Carlo
    /// dropout needs, its masks drawn from `seed` (the same seed, the same
    /// masks: [`dropout_mask`] draws them so). Draw one mask per layer and
    /// share it by every input of the batch (a `(1, D)` mask broadcast):
    /// an input's logits then depend on the seed alone, not on the batch
    /// it came in or its place there. The default (`None`: the module has
    /// no dropout) makes it an error. Say so in
    /// [`has_dropout`](Self::has_dropout) when you implement it.
    fn stochastic_logits(&self, inputs: Tensor<4>, seed: u64) -> Option<Tensor<2>> {
        let _ = (inputs, seed);
        None
    }

    /// One [`stochastic_logits`](Self::stochastic_logits) pass per seed.
    /// Override it when the passes can share work (a network whose only
    /// dropout is near the end runs the layers before it once).
    fn stochastic_passes(&self, inputs: Tensor<4>, seeds: &[u64]) -> Option<Vec<Tensor<2>>> {
        seeds
            .iter()
            .map(|&seed| self.stochastic_logits(inputs.clone(), seed))
            .collect()
    }

    /// Whether [`last_feature_map`](Self::last_feature_map) and
    /// [`logits_from_map`](Self::logits_from_map) are implemented: the
    /// model then offers [`MapEditing`] (RankFeat), and a detector that
    /// needs it is refused at fit / attach when not. Default `false`.
    fn has_feature_map(&self) -> bool {
        false
    }

    /// Whether [`stochastic_logits`](Self::stochastic_logits) is
    /// implemented (the module has dropout): the model then offers
    /// [`StochasticPasses`] (Monte Carlo dropout), and MC dropout is
    /// refused at fit / attach when not. Default `false`.
    fn has_dropout(&self) -> bool {
        false
    }
}

/// A burn module run as a [`Model`]: batches move into burn and the logits
/// come back as `ndarray`, with the module in inference mode (no dropout, no
/// autodiff graph).
///
/// Any burn [`Device`] works: `Device::flex()` on CPU (the crate's default
/// backend) or the device of whichever backend the application enables.
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::{Device, Tensor};
/// use oodkit::model::{BurnClassifier, BurnModel, Model};
///
/// #[derive(Module, Debug)]
/// struct PixelClassifier {
///     linear: Linear,
/// }
///
/// impl BurnClassifier for PixelClassifier {
///     fn logits(&self, inputs: Tensor<4>) -> Tensor<2> {
///         self.linear.forward(inputs.flatten(1, 3))
///     }
/// }
///
/// let device = Device::flex();
/// let module = PixelClassifier { linear: LinearConfig::new(4, 3).init(&device) };
/// let model = BurnModel::new(module, &device);
/// let logits = model.forward(ndarray::Array4::zeros((5, 1, 2, 2)).view())?;
/// assert_eq!(logits.shape(), &[5, 3]);
/// // No dropout declared (BurnClassifier::has_dropout): MC dropout is
/// // refused when fitted, not at its first score.
/// assert!(model.as_stochastic().is_none());
/// let err = oodkit::detectors::Detector::fit(&oodkit::detectors::McDropout::default(), &model, None);
/// assert!(err.unwrap_err().to_string().contains("dropout"));
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BurnModel<M> {
    module: M,
    device: Device,
    shaping: Option<Shaping>,
}

impl<M: BurnClassifier> BurnModel<M> {
    /// Runs `module` on `device`, in inference mode. An autodiff device is
    /// used without autodiff: scoring never needs gradients.
    pub fn new(module: M, device: &Device) -> Self {
        let device = device.clone().without_autodiff();
        let module = module.valid().to_device(&device);
        BurnModel {
            module,
            device,
            shaping: None,
        }
    }

    /// The same network with its penultimate activations shaped (ReAct,
    /// ASH, SCALE) before the last layer: every logit detector fitted on
    /// the result scores the shaped logits, ODIN included (the gradient runs
    /// through the shaping). The module must implement
    /// [`BurnClassifier::head`]; a model already shaped is an error (one
    /// shaping at a time).
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use oodkit::model::{BurnModel, Model, Shaping};
    /// use oodkit::nets::ToyMlpConfig;
    ///
    /// let device = Device::flex();
    /// let model = BurnModel::new(ToyMlpConfig::new(1, 4, 3).init(&device)?, &device);
    /// let shaped = model.with_shaping(Shaping::ash(0.9)?)?;
    /// assert_eq!(shaped.forward(ndarray::Array4::ones((2, 1, 4, 4)).view())?.shape(), &[2, 3]);
    /// assert!(shaped.with_shaping(Shaping::scale(0.85)?).is_err());
    /// # Ok::<(), oodkit::Error>(())
    /// ```
    pub fn with_shaping(self, shaping: Shaping) -> Result<Self> {
        if let Some(existing) = self.shaping {
            return Err(Error::InvalidParameter {
                name: "shaping",
                value: format!("{shaping:?}"),
                reason: format!(
                    "the model is already shaped ({existing:?}): one shaping at a time"
                ),
            });
        }
        Ok(BurnModel {
            shaping: Some(shaping),
            ..self
        })
    }

    /// The shaping applied before the last layer, if any.
    pub fn shaping(&self) -> Option<&Shaping> {
        self.shaping.as_ref()
    }

    /// The module, in inference mode.
    pub fn module(&self) -> &M {
        &self.module
    }

    /// The device the module runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The module back.
    pub fn into_module(self) -> M {
        self.module
    }

    /// Runs `f` on the module, turning a panic inside burn (e.g. inputs whose
    /// shape does not fit the first layer) into an error.
    fn guarded<T>(&self, what: &str, shape: &[usize], f: impl FnOnce(&M) -> T) -> Result<T> {
        guarded(what, shape, || f(&self.module))
    }
}

/// The module's logits, through `shaping` and its head when shaped.
fn logits_of<M: BurnClassifier>(
    module: &M,
    shaping: Option<&Shaping>,
    x: Tensor<4>,
) -> Result<Tensor<2>> {
    let Some(shaping) = shaping else {
        return Ok(module.logits(x));
    };
    let (mut features, _) = module.forward_features(x);
    let penultimate = features.pop().ok_or_else(|| Error::Unsupported {
        what: "activation shaping".into(),
        hint: "the module lists no feature layer: implement BurnClassifier::feature_layers and \
               forward_features"
            .into(),
    })?;
    module
        .head(shaping.shape_tensor(penultimate))
        .ok_or_else(|| Error::Unsupported {
            what: "activation shaping".into(),
            hint: "implement BurnClassifier::head (the last layer) for this module".into(),
        })
}

/// Runs `f`, turning a panic inside burn (e.g. inputs whose shape does not
/// fit the first layer) into an [`Error::Backend`] naming `what` and the
/// input `shape`.
pub(crate) fn guarded<T>(what: &str, shape: &[usize], f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Error::backend(format!(
            "the burn module panicked in {what} on inputs of shape {shape:?}: {message}"
        ))
    })
}

impl<M: BurnClassifier> Model for BurnModel<M> {
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>> {
        self.forward_owned(inputs.to_owned())
    }

    fn forward_owned(&self, inputs: Array4<f32>) -> Result<Array2<f32>> {
        let shape = inputs.shape().to_vec();
        let x = array_to_tensor(inputs, &self.device);
        let logits =
            self.guarded("logits", &shape, |m| logits_of(m, self.shaping.as_ref(), x))??;
        tensor_to_array(logits)
    }

    fn as_features(&self) -> Option<&dyn FeatureModel> {
        Some(self)
    }

    /// When the module names its last layer ([`BurnClassifier::head_linear`]).
    fn as_last_layer(&self) -> Option<&dyn LastLayer> {
        self.module.head_linear().map(|_| self as &dyn LastLayer)
    }

    fn as_input_gradient(&self) -> Option<&dyn InputGradient> {
        Some(self)
    }

    /// When the module says it has a last feature map
    /// ([`BurnClassifier::has_feature_map`]).
    fn as_map_editing(&self) -> Option<&dyn MapEditing> {
        self.module
            .has_feature_map()
            .then_some(self as &dyn MapEditing)
    }

    /// When the module says it has dropout ([`BurnClassifier::has_dropout`]).
    fn as_stochastic(&self) -> Option<&dyn StochasticPasses> {
        self.module
            .has_dropout()
            .then_some(self as &dyn StochasticPasses)
    }
}

impl<M: BurnClassifier> InputGradient for BurnModel<M> {
    /// Through burn's autodiff: the module runs (still in inference mode,
    /// its weights untracked) on the autodiff version of its device, with the
    /// inputs tracked.
    fn input_gradient(
        &self,
        inputs: ArrayView4<f32>,
        logits_grad: ArrayView2<f32>,
    ) -> Result<Array4<f32>> {
        let shape = inputs.shape().to_vec();
        let (n, classes) = logits_grad.dim();
        let autodiff = self.device.clone().autodiff();
        let module = self.module.clone().to_device(&autodiff);
        let x = array_to_tensor(inputs.to_owned(), &autodiff).require_grad();
        let weights: Vec<f32> = logits_grad.iter().copied().collect();
        let weights = Tensor::<2>::from_data(TensorData::new(weights, [n, classes]), &autodiff);
        let gradient = guarded("input_gradient", &shape, || {
            let logits = logits_of(&module, self.shaping.as_ref(), x.clone())?;
            if logits.dims() != [n, classes] {
                return Err(Error::ShapeMismatch {
                    what: "logits_grad vs the module's logits".into(),
                    expected: format!("{:?}", logits.dims()),
                    found: format!("{:?}", [n, classes]),
                });
            }
            let grads = (logits * weights).sum().backward();
            x.grad(&grads).ok_or_else(|| {
                Error::backend("no gradient reached the inputs (is the module differentiable?)")
            })
        })??;
        let values = gradient
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::backend_with("reading the input gradient back", e))?;
        Ok(Array4::from_shape_vec(
            (shape[0], shape[1], shape[2], shape[3]),
            values,
        )?)
    }
}

impl<M: BurnClassifier> MapEditing for BurnModel<M> {
    fn forward_editing_map(
        &self,
        inputs: ArrayView4<f32>,
        edit: &dyn Fn(Array4<f32>) -> Result<Array4<f32>>,
    ) -> Result<Array2<f32>> {
        self.editing_map(inputs, edit)
    }
}

impl<M: BurnClassifier> StochasticPasses for BurnModel<M> {
    fn forward_stochastic(
        &self,
        inputs: ArrayView4<f32>,
        passes: usize,
        seed: u64,
    ) -> Result<Vec<Array2<f32>>> {
        self.stochastic(inputs, passes, seed)
    }
}

impl<M: BurnClassifier> BurnModel<M> {
    /// [`MapEditing::forward_editing_map`](crate::model::MapEditing::forward_editing_map) for burn modules.
    fn editing_map(
        &self,
        inputs: ArrayView4<f32>,
        edit: &dyn Fn(Array4<f32>) -> Result<Array4<f32>>,
    ) -> Result<Array2<f32>> {
        let unsupported = || Error::Unsupported {
            what: "editing the last convolutional feature map (RankFeat)".into(),
            hint: "implement BurnClassifier::last_feature_map and logits_from_map for this \
                   module (CifarResNet and ToyConvnet do)"
                .into(),
        };
        if self.shaping.is_some() {
            return Err(Error::Unsupported {
                what: "editing the feature map of an activation-shaped model".into(),
                hint: "use the model without shaping".into(),
            });
        }
        let shape = inputs.shape().to_vec();
        let x = array_to_tensor(inputs.to_owned(), &self.device);
        let map = self
            .guarded("last_feature_map", &shape, |m| m.last_feature_map(x))?
            .ok_or_else(unsupported)?;
        let dims = map.dims();
        let values = map
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::backend_with("reading the feature map back", e))?;
        let map = Array4::from_shape_vec((dims[0], dims[1], dims[2], dims[3]), values)?;
        let edited = edit(map)?;
        if edited.shape() != dims {
            return Err(Error::ShapeMismatch {
                what: "the edited feature map".into(),
                expected: format!("{dims:?}, the map's shape"),
                found: format!("{:?}", edited.shape()),
            });
        }
        let map = array_to_tensor(edited, &self.device);
        let logits = self
            .guarded("logits_from_map", &shape, |m| m.logits_from_map(map))?
            .ok_or_else(unsupported)?;
        tensor_to_array(logits)
    }

    /// [`StochasticPasses::forward_stochastic`](crate::model::StochasticPasses::forward_stochastic) for burn modules.
    fn stochastic(
        &self,
        inputs: ArrayView4<f32>,
        passes: usize,
        seed: u64,
    ) -> Result<Vec<Array2<f32>>> {
        if self.shaping.is_some() {
            return Err(Error::Unsupported {
                what: "dropout passes through an activation-shaped model".into(),
                hint: "use the model without shaping".into(),
            });
        }
        let shape = inputs.shape().to_vec();
        // Each pass its own stream, all fixed by `seed`.
        let seeds: Vec<u64> = (0..passes as u64)
            .map(|pass| seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let x = array_to_tensor(inputs.to_owned(), &self.device);
        self.guarded("stochastic_passes", &shape, |m| {
            m.stochastic_passes(x, &seeds)
        })?
        .ok_or_else(|| Error::Unsupported {
            what: "forward passes with dropout active (Monte Carlo dropout)".into(),
            hint: "the module has no dropout: implement BurnClassifier::stochastic_logits \
                       (ToyConvnet does; the CIFAR ResNets have no dropout layer)"
                .into(),
        })?
        .into_iter()
        .map(tensor_to_array)
        .collect()
    }
}

impl<M: BurnClassifier> FeatureModel for BurnModel<M> {
    fn layer_names(&self) -> Vec<String> {
        let mut names = self.module.feature_layers();
        names.push(LOGITS.to_owned());
        names
    }

    fn forward_features(&self, inputs: ArrayView4<f32>, layers: &[LayerId]) -> Result<ModelOutput> {
        self.forward_features_owned(inputs.to_owned(), layers)
    }

    fn forward_features_owned(
        &self,
        inputs: Array4<f32>,
        layers: &[LayerId],
    ) -> Result<ModelOutput> {
        let names = self.layer_names();
        let positions = resolve_layers(layers, &names)?;
        let shape = inputs.shape().to_vec();
        let x = array_to_tensor(inputs, &self.device);
        let (all, logits) = self.guarded("forward_features", &shape, |m| m.forward_features(x))?;
        if all.len() != names.len() - 1 {
            return Err(Error::LengthMismatch {
                what: "BurnClassifier::feature_layers vs the activations forward_features returned"
                    .into(),
                left: names.len() - 1,
                right: all.len(),
            });
        }
        let features = pick_layers(&positions, &all, &logits)
            .into_iter()
            .map(tensor_to_array)
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelOutput {
            features,
            logits: tensor_to_array(logits)?,
        })
    }
}

impl<M: BurnClassifier> LastLayer for BurnModel<M> {
    /// From [`BurnClassifier::head_linear`]; burn stores the weights
    /// `(D, num_classes)`, returned transposed. No bias reads as zeros.
    fn head_parameters(&self) -> Result<(Array2<f32>, Array1<f32>)> {
        let linear = self
            .module
            .head_linear()
            .ok_or_else(|| Error::Unsupported {
                what: "head_parameters (the last layer's weights)".into(),
                hint: "implement BurnClassifier::head_linear for this module".into(),
            })?;
        let weights = tensor_to_array(linear.weight.val())?.reversed_axes();
        let classes = weights.nrows();
        let bias = match &linear.bias {
            Some(bias) => {
                let values = bias
                    .val()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| Error::backend_with("reading the head's bias", e))?;
                Array1::from(values)
            }
            None => Array1::zeros(classes),
        };
        Ok((weights.as_standard_layout().into_owned(), bias))
    }
}

/// An inverted-dropout mask of `shape` on `device`: each entry 0 with
/// probability `prob`, else 1/(1 − prob), drawn from a generator seeded by
/// `seed` (not the device's, which other threads may draw from), so the
/// same seed gives the same mask. `prob` is clamped to [0, 1).
///
/// Entry `i` keeps its value when the SplitMix64 hash of `(seed, i)` falls
/// below `(1 − prob)·2⁶⁴`: a counter-based generator, so the mask is
/// filled in parallel and is the same whatever the thread count.
pub fn dropout_mask<const D: usize>(
    shape: [usize; D],
    prob: f64,
    seed: u64,
    device: &Device,
) -> Tensor<D> {
    use rayon::prelude::*;
    let prob = prob.clamp(0.0, 1.0 - f64::EPSILON);
    let keep = 1.0 - prob;
    let scale = (1.0 / keep) as f32;
    // `as` saturates: a keep of 1 − ε maps to just under 2⁶⁴.
    let threshold = (keep * 2f64.powi(64)) as u64;
    let len = shape.iter().product();
    let mut values = vec![0.0_f32; len];
    const CHUNK: usize = 1 << 14;
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, values)| {
            for (i, v) in values.iter_mut().enumerate() {
                let index = (chunk * CHUNK + i) as u64;
                if splitmix64(seed, index) < threshold {
                    *v = scale;
                }
            }
        });
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// SplitMix64's output for element `index` of the stream seeded by `seed`.
fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An `(N, C, H, W)` array as a burn tensor on `device`. A standard-layout
/// array hands its buffer over without a copy; any other layout is copied
/// once into standard order.
pub fn array_to_tensor(inputs: Array4<f32>, device: &Device) -> Tensor<4> {
    let shape: [usize; 4] = inputs.dim().into();
    let len = inputs.len();
    let flat = if inputs.is_standard_layout() {
        let (mut buffer, offset) = inputs.into_raw_vec_and_offset();
        match offset {
            Some(0) if buffer.len() == len => buffer,
            Some(start) => {
                // A sliced array: its elements are contiguous from `start`.
                buffer.truncate(start + len);
                buffer.drain(..start);
                buffer
            }
            None => Vec::new(),
        }
    } else {
        inputs.iter().copied().collect()
    };
    Tensor::from_data(TensorData::new(flat, shape), device)
}

/// A 2-D burn tensor as an `f32` array, converting the element type when the
/// backend computes in another one (e.g. `f16` on a GPU).
pub fn tensor_to_array(tensor: Tensor<2>) -> Result<Array2<f32>> {
    let [rows, cols] = tensor.dims();
    let values = tensor
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::backend_with(format!("reading a ({rows}, {cols}) tensor back"), e))?;
    Array2::from_shape_vec((rows, cols), values).map_err(|e| {
        Error::backend_with(format!("a ({rows}, {cols}) tensor came back malformed"), e)
    })
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::dropout_mask;

    fn mask(len: usize, prob: f64, seed: u64) -> Vec<f32> {
        dropout_mask([len], prob, seed, &Device::flex())
            .try_into_vec_as::<f32>()
            .unwrap()
    }

    #[test]
    fn dropout_masks_keep_the_expected_share_independently_and_repeat_by_seed() {
        let len = 200_000;
        for prob in [0.5, 0.2, 0.9] {
            let keep = 1.0 - prob;
            let values = mask(len, prob, 7);
            let scale = (1.0 / keep) as f32;
            assert!(values.iter().all(|&v| v == 0.0 || v == scale));
            let kept: Vec<bool> = values.iter().map(|&v| v != 0.0).collect();
            // Binomial share within 5 standard deviations.
            let share = kept.iter().filter(|&&k| k).count() as f64 / len as f64;
            let sd = (keep * prob / len as f64).sqrt();
            assert!((share - keep).abs() < 5.0 * sd, "{prob}: kept {share}");
            // Neighbours independent: both kept with probability keep².
            let pairs = kept.windows(2).filter(|w| w[0] && w[1]).count() as f64;
            let both = pairs / (len - 1) as f64;
            assert!((both - keep * keep).abs() < 5.0 * (keep * keep / len as f64).sqrt() + 1e-3);
        }
        assert_eq!(mask(1000, 0.5, 3), mask(1000, 0.5, 3));
        assert_ne!(mask(1000, 0.5, 3), mask(1000, 0.5, 4));
        // The edges of the clamp: nothing dropped, or (almost) everything.
        assert!(mask(1000, 0.0, 1).iter().all(|&v| v == 1.0));
        assert!(mask(1000, 1.0, 1).iter().all(|&v| v == 0.0));
    }
}
