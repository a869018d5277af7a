//! A small network written as an ONNX graph (protobuf through tract's own
//! generated types) and computed directly with ndarray, for the tests of
//! `OnnxModel` and of the command line.
#![allow(dead_code)] // each test binary uses part of it

use std::path::Path;

use ndarray::{Array1, Array2, Array4, array};
use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::type_proto::{self, Value};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

pub fn w1() -> Array2<f32> {
    array![
        [0.5, -1.0, 0.25, 2.0],
        [1.0, 0.5, -0.5, 0.0],
        [-0.3, 0.2, 0.9, -1.2]
    ]
}
pub fn b1() -> Array1<f32> {
    array![0.1, -0.2, 0.3]
}
pub fn w2() -> Array2<f32> {
    array![[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]]
}
pub fn b2() -> Array1<f32> {
    array![0.05, -0.05]
}

/// The network directly: flatten (N, 1, 2, 2) to (N, 4), ReLU(x W1ᵀ + b1)
/// (the "penultimate" features), then logits = h W2ᵀ + b2.
pub fn direct(x: &Array4<f32>) -> (Array2<f32>, Array2<f32>) {
    let flat = x.clone().into_shape_with_order((x.shape()[0], 4)).unwrap();
    let hidden = (flat.dot(&w1().t()) + b1()).mapv(|v| v.max(0.0));
    let logits = hidden.dot(&w2().t()) + b2();
    (hidden, logits)
}

fn initializer(name: &str, a: &ndarray::ArrayD<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: a.shape().iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        float_data: a.iter().copied().collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attributes: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| (*s).into()).collect(),
        output: vec![output.into()],
        attribute: attributes,
        ..Default::default()
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// Writes the network as ONNX, with a dynamic batch axis or a fixed one;
/// the last layer a `Gemm` with transB = 1 (as PyTorch exports `Linear`).
pub fn write(path: &Path, batch: Option<i64>) {
    write_graph(path, batch, false)
}

/// The same network with the last layer as `MatMul` (weights stored
/// `(D, classes)`) then `Add` of the bias.
pub fn write_with_matmul_head(path: &Path) {
    write_graph(path, None, true)
}

fn write_graph(path: &Path, batch: Option<i64>, matmul_head: bool) {
    let gemm = |inputs: &[&str], output: &str| {
        node("Gemm", inputs, output, vec![int_attribute("transB", 1)])
    };
    let mut nodes = vec![
        node(
            "Flatten",
            &["input"],
            "flat",
            vec![int_attribute("axis", 1)],
        ),
        gemm(&["flat", "w1", "b1"], "hidden"),
        node("Relu", &["hidden"], "penultimate", vec![]),
    ];
    let mut initializers = vec![
        initializer("w1", &w1().into_dyn()),
        initializer("b1", &b1().into_dyn()),
        initializer("b2", &b2().into_dyn()),
    ];
    if matmul_head {
        nodes.push(node("MatMul", &["penultimate", "w2t"], "product", vec![]));
        nodes.push(node("Add", &["product", "b2"], "logits", vec![]));
        // Stored as raw little-endian bytes, as PyTorch writes weights.
        let w2t = w2().reversed_axes().as_standard_layout().into_owned();
        let mut w2t = initializer("w2t", &w2t.into_dyn());
        w2t.raw_data = w2t
            .float_data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        w2t.float_data.clear();
        initializers.push(w2t);
    } else {
        nodes.push(gemm(&["penultimate", "w2", "b2"], "logits"));
        initializers.push(initializer("w2", &w2().into_dyn()));
    }
    let graph = GraphProto {
        name: "mlp".into(),
        node: nodes,
        initializer: initializers,
        input: vec![value_info("input", &[batch, Some(1), Some(2), Some(2)])],
        output: vec![value_info("logits", &[batch, Some(2)])],
        ..Default::default()
    };
    save(path, graph);
}

/// A graph whose first output is no logits: `"identity"` returns its
/// `(N, 1, 2, 2)` input, `"mean"` one value per input, `(N,)`.
pub fn write_without_logits(path: &Path, kind: &str) {
    let (nodes, output) = match kind {
        "identity" => (
            vec![node("Identity", &["input"], "out", vec![])],
            value_info("out", &[None, Some(1), Some(2), Some(2)]),
        ),
        _ => {
            let mut mean = node(
                "ReduceMean",
                &["flat"],
                "out",
                vec![int_attribute("keepdims", 0)],
            );
            mean.attribute.push(AttributeProto {
                name: "axes".into(),
                r#type: AttributeType::Ints as i32,
                ints: vec![1],
                ..Default::default()
            });
            (
                vec![
                    node(
                        "Flatten",
                        &["input"],
                        "flat",
                        vec![int_attribute("axis", 1)],
                    ),
                    mean,
                ],
                value_info("out", &[None]),
            )
        }
    };
    let graph = GraphProto {
        name: "not_a_classifier".into(),
        node: nodes,
        input: vec![value_info("input", &[None, Some(1), Some(2), Some(2)])],
        output: vec![output],
        ..Default::default()
    };
    save(path, graph);
}

/// Writes `graph` as an ONNX model (IR 8, opset 13) to `path`.
fn save(path: &Path, graph: GraphProto) {
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}
