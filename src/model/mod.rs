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
//! Detectors that need internal activations (Mahalanobis, KNN, ViM, ...) ask
//! for a [`FeatureModel`], which also returns chosen layers' activations as
//! `(N, D)` arrays, the layers named by [`LayerId`].
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
pub use shaping::Shaping;

/// A classifier: a batch of inputs in, its logits out.
pub trait Model {
    /// The logits `(N, num_classes)` of a batch of inputs `(N, C, H, W)`.
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>>;

    /// Like [`forward`](Model::forward), taking the batch by value so an
    /// engine that needs owned memory (e.g. burn) can take it over without
    /// a copy. Detectors call this one. The default borrows and forwards.
    fn forward_owned(&self, inputs: Array4<f32>) -> Result<Array2<f32>> {
        self.forward(inputs.view())
    }

    /// The gradient, with respect to the inputs `(N, C, H, W)`, of
    /// Σ logits ⊙ `logits_grad` (`logits_grad` is `(N, num_classes)`): a
    /// vector-Jacobian product, what input-perturbation detectors (ODIN)
    /// need. [`BurnModel`] computes it with burn's autodiff;
    /// [`from_fn_with_gradient`] takes it from a closure. The default is an
    /// [`Error::Unsupported`] saying so.
    fn input_gradient(
        &self,
        inputs: ArrayView4<f32>,
        logits_grad: ArrayView2<f32>,
    ) -> Result<Array4<f32>> {
        let _ = (inputs, logits_grad);
        Err(Error::Unsupported {
            what: "input_gradient".into(),
            hint: "use a burn module through BurnModel, or give the gradient of a closure \
                   model with model::from_fn_with_gradient"
                .into(),
        })
    }

    /// The logits when the network's last convolutional feature map
    /// `(N, C, H, W)` is replaced by `edit(map)` (same shape) before the
    /// rest of the network runs: what RankFeat needs. [`BurnModel`] runs it
    /// for modules implementing
    /// [`BurnClassifier::last_feature_map`];
    /// the default is an [`Error::Unsupported`] (a closure or an ONNX graph
    /// cannot be split at a feature map).
    fn forward_editing_map(
        &self,
        inputs: ArrayView4<f32>,
        edit: &dyn Fn(Array4<f32>) -> Result<Array4<f32>>,
    ) -> Result<Array2<f32>> {
        let _ = (inputs, edit);
        Err(Error::Unsupported {
            what: "editing the last convolutional feature map (RankFeat)".into(),
            hint: "it needs the network itself: a BurnModel of a module implementing \
                   BurnClassifier::last_feature_map and logits_from_map"
                .into(),
        })
    }

    /// The logits of `passes` forward passes with the network's dropout
    /// active, the random masks seeded by `seed`: what Monte Carlo dropout
    /// needs. [`BurnModel`] runs it for modules implementing
    /// [`BurnClassifier::stochastic_logits`];
    /// the default is an [`Error::Unsupported`] (a closure or an ONNX graph
    /// runs in inference mode).
    fn forward_stochastic(
        &self,
        inputs: ArrayView4<f32>,
        passes: usize,
        seed: u64,
    ) -> Result<Vec<Array2<f32>>> {
        let _ = (inputs, passes, seed);
        Err(Error::Unsupported {
            what: "forward passes with dropout active (Monte Carlo dropout)".into(),
            hint: "it needs the network itself: a BurnModel of a module with dropout \
                   implementing BurnClassifier::stochastic_logits"
                .into(),
        })
    }
}

/// A layer of a [`FeatureModel`]: by position in
/// [`layer_names`](FeatureModel::layer_names) (negative counts from the end,
/// `-1` being the logits and `-2` the penultimate layer, as in the Python
/// toolkit) or by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// A [`Model`] that can also return internal activations.
///
/// The layers it exposes are listed by [`layer_names`](Self::layer_names),
/// in forward order, the logits last: `-1` is the logits and `-2` the
/// penultimate layer. Activations of rank above 2 are reduced to `(N, D)` by
/// the model (flattened, or globally average-pooled for convolutional maps;
/// the implementation documents which).
pub trait FeatureModel: Model {
    /// The layers whose activations can be asked for, logits last.
    fn layer_names(&self) -> Vec<String>;

    /// The activations of `layers` and the logits of a batch.
    fn forward_features(&self, inputs: ArrayView4<f32>, layers: &[LayerId]) -> Result<ModelOutput>;

    /// Like [`forward_features`](Self::forward_features), taking the batch by
    /// value (see [`Model::forward_owned`]).
    fn forward_features_owned(
        &self,
        inputs: Array4<f32>,
        layers: &[LayerId],
    ) -> Result<ModelOutput> {
        self.forward_features(inputs.view(), layers)
    }

    /// The last layer, when it is affine: `(weights, bias)` with weights
    /// `(num_classes, D)` and bias `(num_classes,)`, such that
    /// logits = f · weightsᵀ + bias for the penultimate activations `f`
    /// (layer `-2`), PyTorch's layout. ViM needs it. The default is an
    /// [`Error::Unsupported`] saying so.
    fn head_parameters(&self) -> Result<(Array2<f32>, Array1<f32>)> {
        Err(Error::Unsupported {
            what: "head_parameters (the last layer's weights)".into(),
            hint: "implement BurnClassifier::head_linear for a burn module, give a closure \
                   model its head with FnFeatureModel::with_head, or pass the weights to the \
                   detector (Vim::with_head)"
                .into(),
        })
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
            fn input_gradient(
                &self,
                inputs: ArrayView4<f32>,
                logits_grad: ArrayView2<f32>,
            ) -> Result<Array4<f32>> {
                (**self).input_gradient(inputs, logits_grad)
            }
            fn forward_editing_map(
                &self,
                inputs: ArrayView4<f32>,
                edit: &dyn Fn(Array4<f32>) -> Result<Array4<f32>>,
            ) -> Result<Array2<f32>> {
                (**self).forward_editing_map(inputs, edit)
            }
            fn forward_stochastic(
                &self,
                inputs: ArrayView4<f32>,
                passes: usize,
                seed: u64,
            ) -> Result<Vec<Array2<f32>>> {
                (**self).forward_stochastic(inputs, passes, seed)
            }
        }

        impl<M: FeatureModel + ?Sized> FeatureModel for $ptr {
            fn layer_names(&self) -> Vec<String> {
                (**self).layer_names()
            }
            fn forward_features(
                &self,
                inputs: ArrayView4<f32>,
                layers: &[LayerId],
            ) -> Result<ModelOutput> {
                (**self).forward_features(inputs, layers)
            }
            fn forward_features_owned(
                &self,
                inputs: Array4<f32>,
                layers: &[LayerId],
            ) -> Result<ModelOutput> {
                (**self).forward_features_owned(inputs, layers)
            }
            fn head_parameters(&self) -> Result<(Array2<f32>, Array1<f32>)> {
                (**self).head_parameters()
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
