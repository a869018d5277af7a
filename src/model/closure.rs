//! Models from closures: [`from_fn`], [`from_fn_with_features`] and
//! [`from_fn_with_gradient`].

use std::fmt;

use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayView4};

use super::{
    FeatureModel, InputGradient, LastLayer, LayerId, Model, ModelOutput, check_head, pick_layers,
    resolve_layers,
};
use crate::error::{Error, Result};

/// A [`Model`] made of a closure; see [`from_fn`].
#[derive(Clone)]
pub struct FnModel<F> {
    forward: F,
}

impl<F> fmt::Debug for FnModel<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnModel")
    }
}

/// A [`Model`] whose forward pass is `forward`: wrap any inference engine.
///
/// ```
/// use ndarray::{Array2, Array4, ArrayView2, ArrayView4};
/// use oodkit::model::{Model, from_fn};
///
/// // A linear classifier over flattened 1x2x2 images: 4 pixels -> 3 classes.
/// let weights = Array2::from_shape_fn((4, 3), |(i, j)| (i + j) as f32);
/// let model = from_fn(move |x: ArrayView4<f32>| -> oodkit::Result<Array2<f32>> {
///     let flat = x.to_shape((x.shape()[0], 4))?;
///     Ok(flat.dot(&weights))
/// });
/// let logits = model.forward(ndarray::Array4::ones((2, 1, 2, 2)).view())?;
/// assert_eq!(logits.row(0).to_vec(), vec![6.0, 10.0, 14.0]);
/// # Ok::<(), oodkit::Error>(())
/// ```
pub fn from_fn<F>(forward: F) -> FnModel<F>
where
    F: Fn(ArrayView4<f32>) -> Result<Array2<f32>>,
{
    FnModel { forward }
}

impl<F> Model for FnModel<F>
where
    F: Fn(ArrayView4<f32>) -> Result<Array2<f32>>,
{
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>> {
        (self.forward)(inputs)
    }
}

/// A [`Model`] made of two closures, the forward pass and its input
/// gradient; see [`from_fn_with_gradient`].
#[derive(Clone)]
pub struct FnGradientModel<F, G> {
    forward: F,
    gradient: G,
}

impl<F, G> fmt::Debug for FnGradientModel<F, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnGradientModel")
    }
}

/// A [`Model`] whose forward pass is `forward` and whose
/// [`input_gradient`](InputGradient::input_gradient) is `gradient(inputs,
/// logits_grad)`: the gradient with respect to the inputs of
/// Σ logits ⊙ logits_grad. For engines that can differentiate, so that
/// input-perturbation detectors (ODIN) work on them.
///
/// ```
/// use ndarray::{Array2, Array4, ArrayView2, ArrayView4, array};
/// use oodkit::model::{InputGradient, from_fn_with_gradient};
///
/// // logits = x W over flattened 1x1x2 images, so the input gradient is g Wᵀ.
/// let w = array![[1.0_f32, -1.0], [2.0, 0.5]];
/// let (wf, wg) = (w.clone(), w.clone());
/// let model = from_fn_with_gradient(
///     move |x: ArrayView4<f32>| Ok(x.to_shape((x.shape()[0], 2))?.dot(&wf)),
///     move |x: ArrayView4<f32>, g: ArrayView2<f32>| {
///         Ok(g.dot(&wg.t()).into_shape_with_order((x.shape()[0], 1, 1, 2))?)
///     },
/// );
/// let grad = model.input_gradient(Array4::zeros((1, 1, 1, 2)).view(), array![[1.0_f32, 0.0]].view())?;
/// assert_eq!(grad.into_raw_vec_and_offset().0, vec![1.0, 2.0]);
/// # Ok::<(), oodkit::Error>(())
/// ```
pub fn from_fn_with_gradient<F, G>(forward: F, gradient: G) -> FnGradientModel<F, G>
where
    F: Fn(ArrayView4<f32>) -> Result<Array2<f32>>,
    G: Fn(ArrayView4<f32>, ArrayView2<f32>) -> Result<Array4<f32>>,
{
    FnGradientModel { forward, gradient }
}

impl<F, G> Model for FnGradientModel<F, G>
where
    F: Fn(ArrayView4<f32>) -> Result<Array2<f32>>,
    G: Fn(ArrayView4<f32>, ArrayView2<f32>) -> Result<Array4<f32>>,
{
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>> {
        (self.forward)(inputs)
    }

    fn as_input_gradient(&self) -> Option<&dyn InputGradient> {
        Some(self)
    }
}

impl<F, G> InputGradient for FnGradientModel<F, G>
where
    F: Fn(ArrayView4<f32>) -> Result<Array2<f32>>,
    G: Fn(ArrayView4<f32>, ArrayView2<f32>) -> Result<Array4<f32>>,
{
    fn input_gradient(
        &self,
        inputs: ArrayView4<f32>,
        logits_grad: ArrayView2<f32>,
    ) -> Result<Array4<f32>> {
        let shape = inputs.shape().to_vec();
        let gradient = (self.gradient)(inputs, logits_grad)?;
        if gradient.shape() != shape.as_slice() {
            return Err(Error::ShapeMismatch {
                what: "input gradient from the closure".into(),
                expected: format!("{shape:?}, the inputs' shape"),
                found: format!("{:?}", gradient.shape()),
            });
        }
        Ok(gradient)
    }
}

/// A [`FeatureModel`] made of a closure; see [`from_fn_with_features`].
#[derive(Clone)]
pub struct FnFeatureModel<F> {
    layer_names: Vec<String>,
    forward: F,
    head: Option<(Array2<f32>, Array1<f32>)>,
}

impl<F> fmt::Debug for FnFeatureModel<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnFeatureModel")
            .field("layer_names", &self.layer_names)
            .finish_non_exhaustive()
    }
}

/// A [`FeatureModel`] whose forward pass is `forward`, returning the
/// activations of the layers `feature_layers` (in that order, each
/// `(N, D)`) and the logits. The model's layers are `feature_layers` followed
/// by `"logits"`.
///
/// ```
/// use ndarray::{Array2, ArrayView4, Axis};
/// use oodkit::model::{FeatureModel, from_fn_with_features};
///
/// let model = from_fn_with_features(["pixels"], |x: ArrayView4<f32>| {
///     let n = x.shape()[0];
///     let pixels = x.to_shape((n, x.len() / n))?.to_owned();
///     let logits = pixels.sum_axis(Axis(1)).insert_axis(Axis(1));
///     Ok((vec![pixels], logits))
/// });
/// assert_eq!(model.layer_names(), vec!["pixels", "logits"]);
/// let out = model.forward_features(ndarray::Array4::ones((2, 1, 2, 2)).view(), &[(-2).into()])?;
/// assert_eq!(out.features[0].shape(), &[2, 4]);
/// assert_eq!(out.logits.column(0).to_vec(), vec![4.0, 4.0]);
/// # Ok::<(), oodkit::Error>(())
/// ```
pub fn from_fn_with_features<F, S>(
    feature_layers: impl IntoIterator<Item = S>,
    forward: F,
) -> FnFeatureModel<F>
where
    S: Into<String>,
    F: Fn(ArrayView4<f32>) -> Result<(Vec<Array2<f32>>, Array2<f32>)>,
{
    let mut layer_names: Vec<String> = feature_layers.into_iter().map(Into::into).collect();
    layer_names.push(LOGITS.to_owned());
    FnFeatureModel {
        layer_names,
        forward,
        head: None,
    }
}

/// The name of the last layer of a feature model built here.
pub(crate) const LOGITS: &str = "logits";

impl<F> FnFeatureModel<F>
where
    F: Fn(ArrayView4<f32>) -> Result<(Vec<Array2<f32>>, Array2<f32>)>,
{
    /// Declares the last layer: logits = f · weightsᵀ + bias on the last
    /// feature layer's activations `f`, with weights `(num_classes, D)` and
    /// bias `(num_classes,)`; [`LastLayer::head_parameters`](crate::model::LastLayer::head_parameters) returns
    /// them (ViM needs them). Errors when the shapes disagree or there is
    /// no feature layer. The closure's logits are not checked against it.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        if self.layer_names.len() < 2 {
            return Err(Error::invalid(
                "head",
                "weights",
                "the model declares no feature layer for the head to read",
            ));
        }
        check_head(&weights, &bias, "head weights and bias")?;
        self.head = Some((weights, bias));
        Ok(self)
    }

    /// Runs the closure and checks it returned one activation per feature
    /// layer, each with one row per input.
    fn run(&self, inputs: ArrayView4<f32>) -> Result<(Vec<Array2<f32>>, Array2<f32>)> {
        let n = inputs.shape()[0];
        let (features, logits) = (self.forward)(inputs)?;
        let expected = self.layer_names.len() - 1;
        if features.len() != expected {
            return Err(Error::LengthMismatch {
                what: "feature layers declared vs activations the closure returned".into(),
                left: expected,
                right: features.len(),
            });
        }
        for (name, act) in self.layer_names.iter().zip(&features) {
            if act.nrows() != n {
                return Err(Error::ShapeMismatch {
                    what: format!("activations of layer \"{name}\""),
                    expected: format!("({n}, D): one row per input"),
                    found: format!("{:?}", act.shape()),
                });
            }
        }
        Ok((features, logits))
    }
}

impl<F> Model for FnFeatureModel<F>
where
    F: Fn(ArrayView4<f32>) -> Result<(Vec<Array2<f32>>, Array2<f32>)>,
{
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>> {
        Ok(self.run(inputs)?.1)
    }

    fn as_features(&self) -> Option<&dyn FeatureModel> {
        Some(self)
    }

    /// Only when the head was declared ([`with_head`](Self::with_head)).
    fn as_last_layer(&self) -> Option<&dyn LastLayer> {
        self.head.as_ref().map(|_| self as &dyn LastLayer)
    }
}

impl<F> LastLayer for FnFeatureModel<F>
where
    F: Fn(ArrayView4<f32>) -> Result<(Vec<Array2<f32>>, Array2<f32>)>,
{
    fn head_parameters(&self) -> Result<(Array2<f32>, Array1<f32>)> {
        self.head.clone().ok_or_else(|| Error::Unsupported {
            what: "head_parameters (the last layer's weights)".into(),
            hint: "declare them with FnFeatureModel::with_head".into(),
        })
    }
}

impl<F> FeatureModel for FnFeatureModel<F>
where
    F: Fn(ArrayView4<f32>) -> Result<(Vec<Array2<f32>>, Array2<f32>)>,
{
    fn layer_names(&self) -> Vec<String> {
        self.layer_names.clone()
    }

    fn forward_features(&self, inputs: ArrayView4<f32>, layers: &[LayerId]) -> Result<ModelOutput> {
        let positions = resolve_layers(layers, &self.layer_names)?;
        let (all, logits) = self.run(inputs)?;
        let features = pick_layers(&positions, &all, &logits);
        Ok(ModelOutput { features, logits })
    }
}
