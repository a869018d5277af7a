//! tests/fixtures/onnx_exporters (made by its make.py): the graphs and
//! what PyTorch computed for them.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Array4};
use serde_json::Value;

/// The fixtures' folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx_exporters")
}

/// PyTorch's inputs, logits, penultimate features and last layer.
pub struct Expected {
    pub inputs: Array4<f32>,
    pub logits: Array2<f32>,
    pub penultimate: Array2<f32>,
    pub weights: Array2<f32>,
    pub bias: Array1<f32>,
}

fn matrix(v: &Value) -> Array2<f32> {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let cols = rows[0].len();
    Array2::from_shape_vec((rows.len(), cols), rows.concat()).unwrap()
}

/// expected.json, read.
pub fn expected() -> Expected {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let shape: Vec<usize> = serde_json::from_value(v["input_shape"].clone()).unwrap();
    let input: Vec<f32> = serde_json::from_value(v["input"].clone()).unwrap();
    let bias: Vec<f32> = serde_json::from_value(v["bias"].clone()).unwrap();
    Expected {
        inputs: Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), input).unwrap(),
        logits: matrix(&v["logits"]),
        penultimate: matrix(&v["penultimate"]),
        weights: matrix(&v["weights"]),
        bias: bias.into(),
    }
}

/// Same shape, every value within 1e-5.
pub fn assert_close(a: &Array2<f32>, b: &Array2<f32>, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{what}: {x} vs {y}");
    }
}
