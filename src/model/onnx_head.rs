//! The last layer of an ONNX graph read from its initializers, when the
//! logits are an affine map of the last feature layer — what ViM needs of
//! [`OnnxModel`](super::OnnxModel) as `head_parameters`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ndarray::{Array1, Array2};
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

/// Why there is no head, said to the user.
pub(super) type Reason = String;

/// The error for a graph whose last layer could not be read, and why.
pub(super) fn head_unreadable(reason: &str) -> crate::error::Error {
    crate::error::Error::Unsupported {
        what: "reading the last layer's weights from this ONNX graph".into(),
        hint: format!(
            "{reason}; or give the detector the weights ({})",
            super::Capability::LastLayer.how_to_provide()
        ),
    }
}

/// The graph's constants, and the folder its external data is read from.
struct Constants<'a> {
    tensors: HashMap<&'a str, &'a TensorProto>,
    dir: &'a Path,
}

/// The value the last layer reads (the features it maps to the logits,
/// the graph's output `logits`), and the node that computes the logits:
/// a `Gemm`, or an `Add` of a `MatMul` and a constant.
pub(super) fn last_layer_input(
    graph: &GraphProto,
    logits: &str,
) -> Result<(String, String), Reason> {
    let node = producer(graph, logits)
        .ok_or_else(|| format!("no node produces the logits output {logits:?}"))?;
    let read = match node.op_type.as_str() {
        "Gemm" => node.input.first(),
        "Add" => node
            .input
            .iter()
            .filter_map(|i| producer(graph, i))
            .find(|n| n.op_type == "MatMul")
            .and_then(|m| m.input.first()),
        _ => None,
    };
    read.map(|input| (input.clone(), node.name.clone()))
        .ok_or_else(|| {
            format!(
                "the logits come from a {} node, not an affine layer (Gemm, or MatMul then Add)",
                node.op_type
            )
        })
}

/// The node whose outputs include the value `name`.
pub(super) fn producer<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g NodeProto> {
    graph
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == name))
}

/// `(weights (classes, D), bias (classes,))` with logits = f · weightsᵀ +
/// bias, f the output of the node (or the value) named `feature`. The
/// logits (the graph's output `logits`) must come from a `Gemm` on f, or an
/// `Add` of a `MatMul` on f and a constant, with constant weights (in the
/// file, or in its external data beside it in `dir`).
pub(super) fn affine_head(
    graph: &GraphProto,
    dir: &Path,
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
    let constants = Constants {
        tensors: graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect(),
        dir,
    };
    let producer = |name: &str| producer(graph, name);
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
            let (product, offset) = if constants.tensors.contains_key(y.as_str()) {
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

/// The values of a constant f32 tensor, with its shape: in the graph, or
/// in its external data file (a relative path beside the graph, read only
/// where the tensor says, its length checked first).
fn values(constants: &Constants, name: &str) -> Result<(Vec<usize>, Vec<f32>), Reason> {
    let t = constants
        .tensors
        .get(name)
        .ok_or_else(|| format!("the last layer's {name:?} is computed, not a constant"))?;
    if t.data_type != DataType::Float as i32 {
        return Err(format!("the last layer's {name:?} is not float32"));
    }
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let count = shape
        .iter()
        .try_fold(1_usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("the last layer's {name:?} has an absurd shape {shape:?}"))?;
    let data: Vec<f32> = if t.data_location == Some(DataLocation::External as i32) {
        external(constants.dir, t, count)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else if t.float_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if data.len() != count {
        return Err(format!(
            "the last layer's {name:?} holds {} values for the shape {shape:?}",
            data.len()
        ));
    }
    Ok((shape, data))
}

/// The bytes of tensor `t` kept in an external data file: `count` f32.
fn external(dir: &Path, t: &TensorProto, count: usize) -> Result<Vec<u8>, Reason> {
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let location = entry("location")
        .ok_or_else(|| format!("the external tensor {:?} names no file", t.name))?;
    let relative = Path::new(location);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "the external tensor {:?} points outside the graph's folder ({location:?})",
            t.name
        ));
    }
    let number = |key: &str| -> Result<Option<u64>, Reason> {
        entry(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("the external tensor {:?} has {key} {v:?}", t.name))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = count.checked_mul(4).ok_or("an absurd tensor length")?;
    if let Some(stated) = number("length")?
        && stated != length as u64
    {
        return Err(format!(
            "the external tensor {:?} states {stated} bytes for {count} float32 values",
            t.name
        ));
    }
    let path = dir.join(relative);
    let mut file = File::open(&path).map_err(|e| {
        format!(
            "the last layer's weights are in {}, which cannot be read ({e}): keep it beside the \
             .onnx file",
            path.display()
        )
    })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if offset
        .checked_add(length as u64)
        .is_none_or(|end| end > size)
    {
        return Err(format!(
            "{} is too short for the tensor {:?} ({length} bytes at offset {offset}, the file \
             has {size})",
            path.display(),
            t.name
        ));
    }
    let mut bytes = vec![0; length];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(bytes)
}

fn matrix(constants: &Constants, name: &str) -> Result<Array2<f32>, Reason> {
    match values(constants, name)? {
        (shape, data) if shape.len() == 2 => Array2::from_shape_vec((shape[0], shape[1]), data)
            .map_err(|e| format!("the last layer's {name:?}: {e}")),
        (shape, _) => Err(format!(
            "the last layer's weights {name:?} have the shape {shape:?}, not a matrix"
        )),
    }
}

/// A bias of `classes` values (or one, broadcast).
fn bias(constants: &Constants, name: &str, classes: usize) -> Result<Array1<f32>, Reason> {
    let (shape, data) = values(constants, name)?;
    match data.len() {
        n if n == classes => Ok(Array1::from(data)),
        1 => Ok(Array1::from_elem(classes, data[0])),
        _ => Err(format!(
            "the last layer's bias {name:?} has the shape {shape:?}, not ({classes},)"
        )),
    }
}
