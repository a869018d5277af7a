//! The last layer of an ONNX graph read from its initializers, when the
//! logits are an affine map of the last feature layer — what ViM needs of
//! [`OnnxModel`](super::OnnxModel) as `head_parameters`.

use std::collections::HashMap;

use ndarray::{Array1, Array2};
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

/// Why there is no head, said to the user.
pub(super) type Reason = String;

/// `(weights (classes, D), bias (classes,))` with logits = f · weightsᵀ +
/// bias, f the output of the node named `feature`. The logits (the graph's
/// output `logits`) must come from a `Gemm` on f, or an `Add` of a
/// `MatMul` on f and a constant, with constant weights.
pub(super) fn affine_head(
    graph: &GraphProto,
    logits: &str,
    feature: Option<&str>,
) -> Result<(Array2<f32>, Array1<f32>), Reason> {
    let Some(feature) = feature else {
        return Err(
            "no feature layer is named: load the graph with the node whose output the \
                    last layer reads (OnnxModel::load_with_features, or --layer)"
                .into(),
        );
    };
    let constants: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let producer = |name: &str| {
        graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == name))
    };
    let feature_outputs: Vec<&str> = graph
        .node
        .iter()
        .find(|n| n.name == feature)
        .map(|n| n.output.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let reads_feature = |input: &str| input == feature || feature_outputs.contains(&input);
    let not_feature = |input: &str| {
        format!(
            "the last layer reads {input:?}, not the feature layer {feature:?}: name the node \
             that produces {input:?} as the feature layer"
        )
    };
    let node =
        producer(logits).ok_or_else(|| format!("no node produces the logits output {logits:?}"))?;
    match node.op_type.as_str() {
        "Gemm" => {
            let [a, b, rest @ ..] = node.input.as_slice() else {
                return Err("its Gemm has fewer than two inputs".into());
            };
            if int_attribute(node, "transA", 0) != 0 {
                return Err("its Gemm transposes the features (transA = 1)".into());
            }
            if !reads_feature(a) {
                return Err(not_feature(a));
            }
            let alpha = float_attribute(node, "alpha", 1.0);
            let beta = float_attribute(node, "beta", 1.0);
            let b = matrix(&constants, b)?;
            let weights = if int_attribute(node, "transB", 0) != 0 {
                b
            } else {
                b.reversed_axes().as_standard_layout().into_owned()
            };
            let bias = match rest.first().filter(|c| !c.is_empty()) {
                Some(c) => bias(&constants, c, weights.nrows())?,
                None => Array1::zeros(weights.nrows()),
            };
            Ok((weights * alpha, bias * beta))
        }
        "Add" => {
            let [x, y] = node.input.as_slice() else {
                return Err("its Add does not have two inputs".into());
            };
            let (product, offset) = if constants.contains_key(y.as_str()) {
                (x, y)
            } else {
                (y, x)
            };
            let matmul = producer(product)
                .filter(|n| n.op_type == "MatMul")
                .ok_or_else(|| {
                    "the logits are an Add, but not of a MatMul and a constant".to_owned()
                })?;
            let [a, b] = matmul.input.as_slice() else {
                return Err("its MatMul does not have two inputs".into());
            };
            if !reads_feature(a) {
                return Err(not_feature(a));
            }
            // MatMul(f, B) with B (D, classes): weights = Bᵀ.
            let weights = matrix(&constants, b)?
                .reversed_axes()
                .as_standard_layout()
                .into_owned();
            let bias = bias(&constants, offset, weights.nrows())?;
            Ok((weights, bias))
        }
        op => Err(format!(
            "the logits come from a {op} node, not an affine layer (Gemm, or MatMul then Add)"
        )),
    }
}

fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a tract_onnx::pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn int_attribute(node: &NodeProto, name: &str, default: i64) -> i64 {
    attribute(node, name).map_or(default, |a| a.i)
}

fn float_attribute(node: &NodeProto, name: &str, default: f32) -> f32 {
    attribute(node, name).map_or(default, |a| a.f)
}

/// The values of a constant f32 tensor, with its shape.
fn values(
    constants: &HashMap<&str, &TensorProto>,
    name: &str,
) -> Result<(Vec<usize>, Vec<f32>), Reason> {
    let t = constants
        .get(name)
        .ok_or_else(|| format!("the last layer's {name:?} is computed, not a constant"))?;
    if t.data_type != DataType::Float as i32 {
        return Err(format!("the last layer's {name:?} is not float32"));
    }
    if t.data_location == Some(DataLocation::External as i32) {
        return Err(format!(
            "the last layer's {name:?} is stored outside the .onnx file"
        ));
    }
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let data: Vec<f32> = if t.float_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if data.len() != shape.iter().product::<usize>() {
        return Err(format!(
            "the last layer's {name:?} holds {} values for the shape {shape:?}",
            data.len()
        ));
    }
    Ok((shape, data))
}

fn matrix(constants: &HashMap<&str, &TensorProto>, name: &str) -> Result<Array2<f32>, Reason> {
    match values(constants, name)? {
        (shape, data) if shape.len() == 2 => Array2::from_shape_vec((shape[0], shape[1]), data)
            .map_err(|e| format!("the last layer's {name:?}: {e}")),
        (shape, _) => Err(format!(
            "the last layer's weights {name:?} have the shape {shape:?}, not a matrix"
        )),
    }
}

/// A bias of `classes` values (or one, broadcast).
fn bias(
    constants: &HashMap<&str, &TensorProto>,
    name: &str,
    classes: usize,
) -> Result<Array1<f32>, Reason> {
    let (shape, data) = values(constants, name)?;
    match data.len() {
        n if n == classes => Ok(Array1::from(data)),
        1 => Ok(Array1::from_elem(classes, data[0])),
        _ => Err(format!(
            "the last layer's bias {name:?} has the shape {shape:?}, not ({classes},)"
        )),
    }
}
