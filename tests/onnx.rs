//! `OnnxModel` on small ONNX graphs the tests write themselves (protobuf
//! through tract's own generated types), checked against the same network
//! computed directly with ndarray.
#![cfg(feature = "onnx")]

#[path = "common/onnx_mlp.rs"]
mod onnx_mlp;

use ndarray::{Array1, Array2, Array4, Axis};
use onnx_mlp::{direct, write};
use oodkit::Error;
use oodkit::detectors::{Detector, FeatureDetector, Knn, Mls, ScoreFeatures};
use oodkit::model::{FeatureModel, Model, OnnxModel};

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
