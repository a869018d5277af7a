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
use oodkit::model::{FeatureModel, LastLayer, Model, OnnxModel};

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

#[test]
fn the_last_layer_is_read_from_the_graph_for_vim() {
    use oodkit::detectors::{PrincipalDims, Vim};
    let dir = tempfile::tempdir().unwrap();
    let (gemm, matmul) = (dir.path().join("gemm.onnx"), dir.path().join("matmul.onnx"));
    write(&gemm, None);
    onnx_mlp::write_with_matmul_head(&matmul);
    for path in [&gemm, &matmul] {
        let model = OnnxModel::load_with_features(path, &["penultimate"]).unwrap();
        let (weights, bias) = model.head_parameters().unwrap();
        assert_eq!(weights, onnx_mlp::w2(), "{}", path.display());
        assert_eq!(bias, onnx_mlp::b2(), "{}", path.display());
        // Both graphs compute the same logits.
        let x = inputs(6);
        assert_close(&model.forward(x.view()).unwrap(), &direct(&x).1);
    }
    // ViM through the graph = ViM on the direct features with the head given.
    let model = OnnxModel::load_with_features(&gemm, &["penultimate"]).unwrap();
    let x = inputs(60);
    let data = oodkit::OodDataset::from_arrays(x.clone(), Array1::zeros(60)).unwrap();
    let vim = Vim::new(PrincipalDims::Count(1))
        .unwrap()
        .fit(&model, Some(&data))
        .unwrap();
    let (hidden, _) = direct(&x);
    let direct_vim = Vim::new(PrincipalDims::Count(1))
        .unwrap()
        .with_head(onnx_mlp::w2(), onnx_mlp::b2())
        .unwrap()
        .fit_features(hidden.view(), Array1::zeros(60).view())
        .unwrap();
    let a = vim.score(&data).unwrap().scores;
    let b = direct_vim.score_features(hidden.view()).unwrap();
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-4 * q.abs().max(1.0), "{p} vs {q}");
    }

    // No feature layer named, or not the one the last layer reads: errors
    // that say which node to name.
    let err = OnnxModel::load(&gemm)
        .unwrap()
        .head_parameters()
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("no feature layer"), "{err}");
    let model = OnnxModel::load_with_features(&gemm, &["hidden"]).unwrap();
    let err = model.head_parameters().unwrap_err().to_string();
    assert!(
        err.contains("\"penultimate\"") && err.contains("\"hidden\""),
        "{err}"
    );
}

/// A graph's first output is read as logits only when it is `(N, K)`; an
/// input of another size is an error that says which flags set it.
#[test]
fn outputs_that_are_not_logits_and_inputs_of_another_size_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, shape) in [("identity", "[5, 1, 2, 2]"), ("mean", "[5]")] {
        let path = dir.path().join(format!("{kind}.onnx"));
        onnx_mlp::write_without_logits(&path, kind);
        let model = OnnxModel::load(&path).unwrap();
        let err = model.forward(inputs(5).view()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{kind}: {err}");
        assert!(
            message.contains("first output") && message.contains(shape),
            "{message}"
        );
        let data = oodkit::OodDataset::from_arrays(inputs(5), Array1::zeros(5)).unwrap();
        let mls = Mls::new().fit(&model, None).unwrap();
        assert!(mls.score(&data).is_err(), "{kind} scored");
    }
    let path = dir.path().join("mlp.onnx");
    write(&path, None);
    let model = OnnxModel::load(&path).unwrap();
    let rgb = Array4::<f32>::zeros((2, 3, 2, 2));
    let err = model.forward(rgb.view()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(
        message.contains("(any, 1, 2, 2)") && message.contains("--channels"),
        "{message}"
    );
    let large = Array4::<f32>::zeros((2, 1, 4, 4));
    assert!(
        model
            .forward(large.view())
            .unwrap_err()
            .to_string()
            .contains("--size")
    );
}
