//! `OnnxModel` on small ONNX graphs the tests write themselves (protobuf
//! through tract's own generated types), checked against the same network
//! computed directly with ndarray.
#![cfg(feature = "onnx")]

use std::path::Path;

use ndarray::{Array1, Array2, Array4, Axis, array};
use oodkit::Error;
use oodkit::detectors::{Detector, FeatureDetector, Knn, Mls, ScoreFeatures};
use oodkit::model::{FeatureModel, Model, OnnxModel};
use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::type_proto::{self, Value};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

fn w1() -> Array2<f32> {
    array![
        [0.5, -1.0, 0.25, 2.0],
        [1.0, 0.5, -0.5, 0.0],
        [-0.3, 0.2, 0.9, -1.2]
    ]
}
fn b1() -> Array1<f32> {
    array![0.1, -0.2, 0.3]
}
fn w2() -> Array2<f32> {
    array![[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]]
}
fn b2() -> Array1<f32> {
    array![0.05, -0.05]
}

/// The network directly: flatten (N, 1, 2, 2) to (N, 4), ReLU(x W1ᵀ + b1)
/// (the "penultimate" features), then logits = h W2ᵀ + b2.
fn direct(x: &Array4<f32>) -> (Array2<f32>, Array2<f32>) {
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

/// Writes the network as ONNX, with a dynamic batch axis or a fixed one.
fn write(path: &Path, batch: Option<i64>) {
    let gemm = |inputs: &[&str], output: &str| {
        node("Gemm", inputs, output, vec![int_attribute("transB", 1)])
    };
    let graph = GraphProto {
        name: "mlp".into(),
        node: vec![
            node(
                "Flatten",
                &["input"],
                "flat",
                vec![int_attribute("axis", 1)],
            ),
            gemm(&["flat", "w1", "b1"], "hidden"),
            node("Relu", &["hidden"], "penultimate", vec![]),
            gemm(&["penultimate", "w2", "b2"], "logits"),
        ],
        initializer: vec![
            initializer("w1", &w1().into_dyn()),
            initializer("b1", &b1().into_dyn()),
            initializer("w2", &w2().into_dyn()),
            initializer("b2", &b2().into_dyn()),
        ],
        input: vec![value_info("input", &[batch, Some(1), Some(2), Some(2)])],
        output: vec![value_info("logits", &[batch, Some(2)])],
        ..Default::default()
    };
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

fn inputs(n: usize) -> Array4<f32> {
    Array4::from_shape_fn((n, 1, 2, 2), |(i, _, y, x)| {
        ((i * 7 + y * 3 + x) % 11) as f32 / 5.0 - 1.0
    })
}

fn assert_close(a: &Array2<f32>, b: &Array2<f32>) {
    assert_eq!(a.shape(), b.shape());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn an_onnx_graph_gives_the_logits_and_features_of_the_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.onnx");
    write(&path, None);
    let model = OnnxModel::load_with_features(&path, &["penultimate"]).unwrap();
    assert_eq!(model.fixed_batch(), None);
    assert_eq!(model.layer_names(), vec!["penultimate", "logits"]);
    for n in [1, 5, 13] {
        let x = inputs(n);
        let (hidden, logits) = direct(&x);
        assert_close(&model.forward(x.view()).unwrap(), &logits);
        let out = model.forward_features(x.view(), &[(-2).into()]).unwrap();
        assert_close(&out.features[0], &hidden);
        assert_close(&out.logits, &logits);
    }
    // Detectors run on it like on any model.
    let x = inputs(40);
    let data = oodkit::OodDataset::from_arrays(x.clone(), Array1::zeros(40)).unwrap();
    let mls = Mls::new().fit(&model, None).unwrap();
    let scores = mls.score(&data).unwrap().scores;
    let (hidden, logits) = direct(&x);
    for (s, row) in scores.iter().zip(logits.rows()) {
        assert!((s + row.fold(f32::NEG_INFINITY, |m, &v| m.max(v))).abs() < 1e-5);
    }
    let knn = Knn::new(3).unwrap().fit(&model, Some(&data)).unwrap();
    let direct_knn = Knn::new(3)
        .unwrap()
        .fit_features(hidden.view(), Array1::zeros(40).view())
        .unwrap();
    let a = knn.score(&data).unwrap().scores;
    let b = direct_knn.score_features(hidden.view()).unwrap();
    assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5));
    let _ = hidden.len_of(Axis(0));
}

#[test]
fn a_fixed_batch_size_is_explained_and_bad_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixed.onnx");
    write(&path, Some(4));
    let model = OnnxModel::load(&path).unwrap();
    assert_eq!(model.fixed_batch(), Some(4));
    let (_, logits) = direct(&inputs(4));
    assert_close(&model.forward(inputs(4).view()).unwrap(), &logits);
    let err = model.forward(inputs(3).view()).unwrap_err();
    assert!(err.to_string().contains("fixes its batch size"), "{err}");

    let err = OnnxModel::load_with_features(&path, &["no_such_node"]).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { .. }), "{err}");
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x01 definitely not a model").unwrap();
    assert!(OnnxModel::load(&junk).is_err());
    let err = OnnxModel::load(dir.path().join("missing.onnx")).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
}
