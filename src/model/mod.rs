//! Models: whatever runs the network, seen through one small trait.
//!
//! Detectors never care what computes the logits. A [`Model`] takes a batch
//! of inputs `(N, C, H, W)` as an `ndarray` view and returns the logits
//! `(N, num_classes)`. Three ways to get one:
//!
//! - [`from_fn`]: wrap any inference engine (a closure over ndarray, an ONNX
//!   runtime session, a remote call) in three lines;
//! - [`BurnModel`] (feature `burn`): any burn 0.22 module that implements
//!   [`BurnClassifier`];
//! - implement [`Model`] on your own type.
//!
//! Every detector takes the one model object ([`Model`], shared between
//! threads as [`AnyModel`](crate::detectors::AnyModel)). What some need
//! beyond the logits is a capability the model hands out when it has it:
//! named internal layers ([`FeatureModel`]: chosen layers' activations as
//! `(N, D)` arrays, the layers named by [`LayerId`]; Mahalanobis, KNN, ViM,
//! ...), the last linear layer ([`LastLayer`]), input gradients
//! ([`InputGradient`]), editing the last feature map ([`MapEditing`]),
//! passes with dropout active ([`StochasticPasses`]). A detector checks for
//! what it needs when it is fitted or attached ([`Capability`] names them
//! in the error, with how to provide it).
//!
//! ```
//! use ndarray::{Array2, ArrayView4};
//! use oodkit::detectors::{Detector, Knn};
//! use oodkit::model::from_fn;
//!
//! // A closure model gives logits only: KNN needs internal features.
//! let logits_only = from_fn(|x: ArrayView4<f32>| -> oodkit::Result<Array2<f32>> {
//!     Ok(x.to_shape((x.shape()[0], 2))?.to_owned())
//! });
//! let err = Knn::new(1)?.fit(&logits_only, None).unwrap_err();
//! assert!(err.to_string().contains("internal features"), "{err}");
//! # Ok::<(), oodkit::Error>(())
//! ```
//!
//! ```
//! use ndarray::{Array2, ArrayView4, Axis};
//! use oodkit::model::{Model, from_fn};
//!
//! // Two "classes": the mean pixel and its negation.
//! let model = from_fn(|x: ArrayView4<f32>| -> oodkit::Result<Array2<f32>> {
//!     let mean = x.mean_axis(Axis(3)).unwrap().mean_axis(Axis(2)).unwrap().mean_axis(Axis(1)).unwrap();
//!     Ok(ndarray::stack![Axis(1), mean, -&mean])
//! });
//! let logits = model.forward(ndarray::Array4::from_elem((3, 1, 2, 2), 0.5).view())?;
//! assert_eq!(logits.shape(), &[3, 2]);
//! assert_eq!(logits[[0, 1]], -0.5);
//! # Ok::<(), oodkit::Error>(())
//! ```

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayView4};

use crate::error::{Error, Result};

#[cfg(feature = "burn")]
mod burn;
mod checked;
mod closure;
mod evaluate;
#[cfg(feature = "onnx")]
mod onnx;
#[cfg(feature = "onnx")]
mod onnx_head;
#[cfg(feature = "onnx")]
mod onnx_inspect;
#[cfg(feature = "onnxruntime")]
mod onnx_runtime;
mod recorded;
mod shaping;

#[cfg(feature = "burn")]
pub(crate) use self::burn::guarded;
#[cfg(feature = "burn")]
pub use self::burn::{BurnClassifier, BurnModel, array_to_tensor, dropout_mask, tensor_to_array};
pub(crate) use checked::{CheckedFeatures, check_finite};
pub use closure::{
    FnFeatureModel, FnGradientModel, FnModel, from_fn, from_fn_with_features, from_fn_with_gradient,
};
pub use evaluate::evaluate;
#[cfg(feature = "onnx")]
pub use onnx::OnnxModel;
#[cfg(feature = "onnx")]
pub use onnx_inspect::{GraphNode, GraphSummary};
#[cfg(feature = "onnxruntime")]
pub use onnx_runtime::{Device, LIBRARY_VARIABLE, OnnxRuntimeModel, RuntimeOptions, find_library};
pub use recorded::{MAX_RECORDED_INPUTS, RecordedSet, Recording};
pub use shaping::Shaping;
pub(crate) use shaping::check_react_quantile;

/// A classifier: a batch of inputs in, its logits out. The one model
/// object every detector takes.
///
/// What a detector may need beyond the logits is a capability of its own,
/// a small trait the model hands out when it has it: named internal layers
/// ([`FeatureModel`], through [`as_features`](Self::as_features)), the last
/// linear layer ([`LastLayer`]), gradients with respect to the inputs
/// ([`InputGradient`]), editing the last feature map ([`MapEditing`]),
/// passes with dropout active ([`StochasticPasses`]). A detector asks for
/// them when it is fitted or attached, and a model without one is an
/// [`Error::Unsupported`] naming it there. A model that has a capability
/// implements its trait and returns `Some(self)` from the matching `as_*`
/// method; the defaults say "not available".
pub trait Model {
    /// The logits `(N, num_classes)` of a batch of inputs `(N, C, H, W)`.
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>>;

    /// Like [`forward`](Model::forward), taking the batch by value so an
    /// engine that needs owned memory (e.g. burn) can take it over without
    /// a copy. Detectors call this one. The default borrows and forwards.
    fn forward_owned(&self, inputs: Array4<f32>) -> Result<Array2<f32>> {
        self.forward(inputs.view())
    }

    /// Its named internal layers, if it exposes them (the feature
    /// detectors and activation shaping need them).
    fn as_features(&self) -> Option<&dyn FeatureModel> {
        None
    }

    /// Its last linear layer, if it can give it (ViM, DICE, ... and
    /// activation shaping need it).
    fn as_last_layer(&self) -> Option<&dyn LastLayer> {
        None
    }

    /// Its input gradients, if it computes them (ODIN's step, and any
    /// feature detector's [input step](crate::detectors::InputPerturbation)).
    fn as_input_gradient(&self) -> Option<&dyn InputGradient> {
        None
    }

    /// Editing its last feature map, if it can be split there (RankFeat).
    fn as_map_editing(&self) -> Option<&dyn MapEditing> {
        None
    }

    /// Passes with its dropout active, if it has dropout (Monte Carlo
    /// dropout).
    fn as_stochastic(&self) -> Option<&dyn StochasticPasses> {
        None
    }

    /// Whether a detector fitted or calibrated through it records its
    /// input shape and class count, to check a model it is attached to
    /// later. `true` for networks; `false` for a model whose inputs are not
    /// a network's (arrays computed elsewhere, served by row), so that the
    /// detector can later serve the network those arrays came from.
    fn records_input_shape(&self) -> bool {
        true
    }
}

/// A capability of a [`Model`] beyond its logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Named internal layers ([`FeatureModel`]).
    Features,
    /// The last linear layer's weights and bias ([`LastLayer`]).
    LastLayer,
    /// Gradients with respect to the inputs ([`InputGradient`]).
    InputGradient,
    /// Editing the last feature map before the rest of the network
    /// ([`MapEditing`]).
    MapEditing,
    /// Forward passes with dropout active ([`StochasticPasses`]).
    StochasticPasses,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Features => "the model's internal features (named layers)",
            Capability::LastLayer => "the model's last linear layer",
            Capability::InputGradient => "gradients with respect to the inputs",
            Capability::MapEditing => "editing the model's last feature map",
            Capability::StochasticPasses => "forward passes with dropout active",
        })
    }
}

impl Capability {
    /// Whether `model` offers it (its `as_*` method gives it). The last
    /// layer counts only when the model can read it.
    pub fn is_offered_by(self, model: &dyn Model) -> bool {
        match self {
            Capability::Features => model.as_features().is_some(),
            Capability::LastLayer => model
                .as_last_layer()
                .is_some_and(|l| l.head_parameters().is_ok()),
            Capability::InputGradient => model.as_input_gradient().is_some(),
            Capability::MapEditing => model.as_map_editing().is_some(),
            Capability::StochasticPasses => model.as_stochastic().is_some(),
        }
    }

    /// How a model gets this capability.
    pub fn how_to_provide(self) -> &'static str {
        match self {
            Capability::Features => {
                "use a network that exposes its layers: the crate's networks (BurnModel), an \
                 ONNX graph (OnnxModel), or a closure model with its layers \
                 (model::from_fn_with_features)"
            }
            Capability::LastLayer => {
                "use a network whose logits are a linear layer of its penultimate features \
                 (BurnClassifier::head_linear, an ONNX Gemm or MatMul + Add, \
                 FnFeatureModel::with_head), or give the detector the weights (with_head)"
            }
            Capability::InputGradient => {
                "use the crate's networks (BurnModel) or a closure model with its gradient \
                 (model::from_fn_with_gradient), or set the input step to 0"
            }
            Capability::MapEditing => {
                "it needs the network itself: a BurnModel of a module implementing \
                 BurnClassifier::last_feature_map and logits_from_map (and has_feature_map)"
            }
            Capability::StochasticPasses => {
                "it needs the network itself, with dropout: a BurnModel of a module \
                 implementing BurnClassifier::stochastic_logits (and has_dropout)"
            }
        }
    }

    /// The error for a model without this capability, which `who` needs.
    pub(crate) fn missing(self, who: &str) -> Error {
        Error::Unsupported {
            what: format!("{who} needs {self}, which this model does not give"),
            hint: self.how_to_provide().into(),
        }
    }
}

/// The model's named layers, or an error saying `who` needs them.
pub(crate) fn features_of<'a>(model: &'a dyn Model, who: &str) -> Result<&'a dyn FeatureModel> {
    model
        .as_features()
        .ok_or_else(|| Capability::Features.missing(who))
}

/// The model's last layer `(weights, bias)`, or an error saying `who`
/// needs it.
pub(crate) fn last_layer_of(model: &dyn Model, who: &str) -> Result<(Array2<f32>, Array1<f32>)> {
    model
        .as_last_layer()
        .ok_or_else(|| Capability::LastLayer.missing(who))?
        .head_parameters()
}

/// The model's input gradients, or an error saying `who` needs them.
pub(crate) fn input_gradient_of<'a>(
    model: &'a dyn Model,
    who: &str,
) -> Result<&'a dyn InputGradient> {
    model
        .as_input_gradient()
        .ok_or_else(|| Capability::InputGradient.missing(who))
}

/// The model's split at its last feature map, or an error saying `who`
/// needs it.
pub(crate) fn map_editing_of<'a>(model: &'a dyn Model, who: &str) -> Result<&'a dyn MapEditing> {
    model
        .as_map_editing()
        .ok_or_else(|| Capability::MapEditing.missing(who))
}

/// The model's passes with dropout active, or an error saying `who` needs
/// them.
pub(crate) fn stochastic_of<'a>(
    model: &'a dyn Model,
    who: &str,
) -> Result<&'a dyn StochasticPasses> {
    model
        .as_stochastic()
        .ok_or_else(|| Capability::StochasticPasses.missing(who))
}

/// Gradients of a [`Model`]'s logits with respect to its inputs.
pub trait InputGradient {
    /// The gradient, with respect to the inputs `(N, C, H, W)`, of
    /// Σ logits ⊙ `logits_grad` (`logits_grad` is `(N, num_classes)`): a
    /// vector-Jacobian product, what input-perturbation detectors (ODIN)
    /// need. [`BurnModel`] computes it with burn's autodiff;
    /// [`from_fn_with_gradient`] takes it from a closure.
    fn input_gradient(
        &self,
        inputs: ArrayView4<f32>,
        logits_grad: ArrayView2<f32>,
    ) -> Result<Array4<f32>>;
}

/// A [`Model`] split at its last convolutional feature map.
pub trait MapEditing {
    /// The logits when the network's last convolutional feature map
    /// `(N, C, H, W)` is replaced by `edit(map)` (same shape) before the
    /// rest of the network runs: what RankFeat needs. [`BurnModel`] runs it
    /// for modules implementing [`BurnClassifier::last_feature_map`].
    fn forward_editing_map(
        &self,
        inputs: ArrayView4<f32>,
        edit: &dyn Fn(Array4<f32>) -> Result<Array4<f32>>,
    ) -> Result<Array2<f32>>;
}

/// A [`Model`] with dropout that can run with it active.
pub trait StochasticPasses {
    /// The logits of `passes` forward passes with the network's dropout
    /// active, the random masks seeded by `seed`: what Monte Carlo dropout
    /// needs. [`BurnModel`] runs it for modules implementing
    /// [`BurnClassifier::stochastic_logits`].
    fn forward_stochastic(
        &self,
        inputs: ArrayView4<f32>,
        passes: usize,
        seed: u64,
    ) -> Result<Vec<Array2<f32>>>;
}

/// The last layer of a [`Model`], when it is affine.
pub trait LastLayer {
    /// `(weights, bias)` with weights `(num_classes, D)` and bias
    /// `(num_classes,)`, such that logits = f · weightsᵀ + bias for the
    /// penultimate activations `f` (layer `-2`), PyTorch's layout.
    fn head_parameters(&self) -> Result<(Array2<f32>, Array1<f32>)>;
}

/// A layer of a [`FeatureModel`]: by position in
/// [`layer_names`](FeatureModel::layer_names) (negative counts from the end,
/// `-1` being the logits and `-2` the penultimate layer, as in the Python
/// toolkit) or by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum LayerId {
    /// Position; negative counts from the end.
    Index(isize),
    /// Name, as listed by [`layer_names`](FeatureModel::layer_names).
    Name(String),
}

impl From<isize> for LayerId {
    fn from(index: isize) -> Self {
        LayerId::Index(index)
    }
}

impl From<i32> for LayerId {
    fn from(index: i32) -> Self {
        LayerId::Index(index as isize)
    }
}

impl From<&str> for LayerId {
    fn from(name: &str) -> Self {
        LayerId::Name(name.to_owned())
    }
}

impl From<String> for LayerId {
    fn from(name: String) -> Self {
        LayerId::Name(name)
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerId::Index(i) => write!(f, "layer {i}"),
            LayerId::Name(name) => write!(f, "layer \"{name}\""),
        }
    }
}

impl LayerId {
    /// The position of this layer among `names`, checked.
    pub fn resolve(&self, names: &[String]) -> Result<usize> {
        let count = names.len();
        let listing = || format!("the model's layers are {names:?}");
        match self {
            LayerId::Index(i) => {
                let pos = if *i < 0 {
                    count.checked_sub(i.unsigned_abs())
                } else {
                    Some(*i as usize).filter(|&p| p < count)
                };
                pos.ok_or_else(|| Error::InvalidParameter {
                    name: "layer",
                    value: i.to_string(),
                    reason: format!(
                        "the model has {count} layers: use 0..{count} or -{count}..-1 ({})",
                        listing()
                    ),
                })
            }
            LayerId::Name(name) => {
                names
                    .iter()
                    .position(|n| n == name)
                    .ok_or_else(|| Error::InvalidParameter {
                        name: "layer",
                        value: name.clone(),
                        reason: format!("no layer of that name; {}", listing()),
                    })
            }
        }
    }
}

/// What a [`FeatureModel`] returns: the requested layers' activations, in
/// the order they were requested, each `(N, D)`, and the logits.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOutput {
    /// One `(N, D_k)` array per requested layer.
    pub features: Vec<Array2<f32>>,
    /// The logits `(N, num_classes)`.
    pub logits: Array2<f32>,
}

/// A [`Model`]'s named internal layers: the capability the feature
/// detectors need (a model hands it out from
/// [`Model::as_features`]).
///
/// The layers it exposes are listed by [`layer_names`](Self::layer_names),
/// in forward order, the logits last: `-1` is the logits and `-2` the
/// penultimate layer. Activations of rank above 2 are reduced to `(N, D)` by
/// the model (flattened, or globally average-pooled for convolutional maps;
/// the implementation documents which).
pub trait FeatureModel {
    /// The layers whose activations can be asked for, logits last.
    fn layer_names(&self) -> Vec<String>;

    /// The activations of `layers` and the logits of a batch.
    fn forward_features(&self, inputs: ArrayView4<f32>, layers: &[LayerId]) -> Result<ModelOutput>;

    /// Whether its logits are real. `false` for features computed
    /// elsewhere without logits: its logits are then `(N, 0)` and the
    /// detectors see the features alone, as on
    /// [`fit_features`](crate::detectors::FeatureDetector::fit_features).
    fn gives_logits(&self) -> bool {
        true
    }

    /// Like [`forward_features`](Self::forward_features), taking the batch by
    /// value (see [`Model::forward_owned`]).
    fn forward_features_owned(
        &self,
        inputs: Array4<f32>,
        layers: &[LayerId],
    ) -> Result<ModelOutput> {
        self.forward_features(inputs.view(), layers)
    }
}

/// Forwards every method to the model behind a pointer, so `&M`, `Box<M>`,
/// `Rc<M>` and `Arc<M>` are models when `M` is.
macro_rules! forward_model_impls {
    ($($ptr:ty),*) => {$(
        impl<M: Model + ?Sized> Model for $ptr {
            fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>> {
                (**self).forward(inputs)
            }
            fn forward_owned(&self, inputs: Array4<f32>) -> Result<Array2<f32>> {
                (**self).forward_owned(inputs)
            }
            fn as_features(&self) -> Option<&dyn FeatureModel> {
                (**self).as_features()
            }
            fn as_last_layer(&self) -> Option<&dyn LastLayer> {
                (**self).as_last_layer()
            }
            fn as_input_gradient(&self) -> Option<&dyn InputGradient> {
                (**self).as_input_gradient()
            }
            fn as_map_editing(&self) -> Option<&dyn MapEditing> {
                (**self).as_map_editing()
            }
            fn records_input_shape(&self) -> bool {
                (**self).records_input_shape()
            }
            fn as_stochastic(&self) -> Option<&dyn StochasticPasses> {
                (**self).as_stochastic()
            }
        }
    )*};
}

forward_model_impls!(&M, Box<M>, Rc<M>, Arc<M>);

/// The positions of `layers` among a feature model's `names`, all checked
/// before the network runs.
pub(crate) fn resolve_layers(layers: &[LayerId], names: &[String]) -> Result<Vec<usize>> {
    layers.iter().map(|l| l.resolve(names)).collect()
}

/// The activations at `positions` (from [`resolve_layers`]): positions index
/// the feature layers, and the one past them (the last name) the logits.
pub(crate) fn pick_layers<T: Clone>(positions: &[usize], features: &[T], logits: &T) -> Vec<T> {
    positions
        .iter()
        .map(|&p| features.get(p).unwrap_or(logits).clone())
        .collect()
}

/// Checks a last layer's `weights` `(num_classes, D)` and `bias`
/// `(num_classes,)`: matching class counts, nothing empty. `what` names them.
pub(crate) fn check_head(weights: &Array2<f32>, bias: &Array1<f32>, what: &str) -> Result<()> {
    if weights.nrows() != bias.len() || weights.is_empty() {
        return Err(Error::ShapeMismatch {
            what: what.into(),
            expected: "weights (num_classes, D) and bias (num_classes,), both non-empty".into(),
            found: format!("weights {:?}, bias {:?}", weights.shape(), bias.shape()),
        });
    }
    Ok(())
}

/// Checks that logits returned for a batch of `batch_len` inputs have one
/// row per input and at least one class.
pub(crate) fn check_logits(logits: &Array2<f32>, batch_len: usize) -> Result<()> {
    let (rows, cols) = logits.dim();
    if rows != batch_len || cols == 0 {
        return Err(Error::ShapeMismatch {
            what: "model output (logits)".into(),
            expected: format!("({batch_len}, num_classes >= 1): one row per input"),
            found: format!("({rows}, {cols})"),
        });
    }
    Ok(())
}
