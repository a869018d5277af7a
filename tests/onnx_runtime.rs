//! The graphs of tests/fixtures/onnx_exporters run by ONNX Runtime: the
//! same logits, feature layers and last layer as PyTorch gave (and as
//! tract gives), node and output names as layers, external data read from
//! the graph's folder, and a detector fitted through tract scoring the same
//! through ONNX Runtime.
//!
//! They need ONNX Runtime's library (`pip install onnxruntime`, or
//! `ORT_DYLIB_PATH`): ignored by default, CI runs them with the library
//! installed.
#![cfg(feature = "onnxruntime")]

#[path = "common/exporter_fixtures.rs"]
mod exporter_fixtures;
#[path = "common/onnx_mlp.rs"]
mod onnx_mlp;

use exporter_fixtures::{Expected, assert_close, expected, fixtures};
use ndarray::{Array1, Array4, Axis};
use oodkit::detectors::registry::{self, Params};
use oodkit::detectors::{AnyDetector, Detector, PrincipalDims, Vim};
use oodkit::model::{
    Device, FeatureModel, LastLayer, Model, OnnxModel, OnnxRuntimeModel, RuntimeOptions,
};
use oodkit::{Batch, Error, OodDataset};

fn options() -> RuntimeOptions {
    RuntimeOptions {
        device: Device::Cpu,
        threads: Some(2),
        library: None,
    }
}

#[test]
#[ignore = "needs ONNX Runtime's library (pip install onnxruntime)"]
fn todays_exports_run_to_pytorchs_figures() {
    let Expected {
        inputs,
        logits,
        penultimate,
        weights,
        bias,
    } = expected();
    for (graph, layer) in [
        ("dynamo.onnx", "mean"),
        ("dynamo_inline.onnx", "node_mean"),
        ("legacy.onnx", "penultimate"),
        ("legacy.onnx", "/ReduceMean"),
    ] {
        let path = fixtures().join(graph);
        let model = OnnxRuntimeModel::load_with_features(&path, &[layer], &options()).unwrap();
        let what = format!("{graph} {layer}");
        assert_close(&model.forward(inputs.view()).unwrap(), &logits, &what);
        assert_eq!(model.layer_names(), [layer, "logits"], "{what}");
        let out = model
            .forward_features(inputs.view(), &[layer.into()])
            .unwrap();
        assert_close(&out.features[0], &penultimate, &what);
        assert_close(&out.logits, &logits, &what);
        // The last layer, from the .data file for the dynamo export.
        let (w, b) = model.head_parameters().unwrap();
        assert_close(&w, &weights, &what);
        assert_close(
            &b.insert_axis(Axis(0)),
            &bias.clone().insert_axis(Axis(0)),
            &what,
        );
        // One input at a time and the whole batch agree (a dynamic batch).
        let one = model
            .forward(inputs.slice(ndarray::s![2..3, .., .., ..]))
            .unwrap();
        assert_close(&one, &logits.slice(ndarray::s![2..3, ..]).to_owned(), &what);
        // So ViM fits on it.
        let fit =
            OodDataset::from_arrays(inputs.clone(), Array1::zeros(inputs.shape()[0])).unwrap();
        Vim::new(PrincipalDims::Count(3))
            .unwrap()
            .fit(&model, Some(&fit))
            .unwrap();
    }
}

#[test]
#[ignore = "needs ONNX Runtime's library (pip install onnxruntime)"]
fn wrong_inputs_and_names_are_errors_that_say_what_to_do() {
    let inputs = expected().inputs;
    let path = fixtures().join("dynamo.onnx");
    let err =
        OnnxRuntimeModel::load_with_features(&path, &["no_such_node"], &options()).unwrap_err();
    assert!(err.to_string().contains("inspect"), "{err}");
    let model = OnnxRuntimeModel::load(&path).unwrap();
    assert_eq!(model.fixed_batch(), None);
    // An image of another size than the graph's.
    let wrong = Array4::<f32>::zeros((2, 1, 7, 7));
    let err = model.forward(wrong.view()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("{}", inputs.shape()[2])),
        "{err}"
    );
    assert!(err.to_string().contains("--size"), "{err}");
    // A graph whose first output is no logits is never scored.
    let dir = tempfile::tempdir().unwrap();
    for (kind, shape) in [("identity", "[3, 1, 2, 2]"), ("mean", "[3]")] {
        let path = dir.path().join(format!("{kind}.onnx"));
        onnx_mlp::write_without_logits(&path, kind);
        let model = OnnxRuntimeModel::load_with_features(&path, &[], &options()).unwrap();
        let err = model
            .forward(Array4::<f32>::zeros((3, 1, 2, 2)).view())
            .unwrap_err();
        assert!(
            err.to_string().contains("first output") && err.to_string().contains(shape),
            "{err}"
        );
    }
    // Without a feature layer, the last layer says which layer to name.
    let err = model.head_parameters().unwrap_err();
    assert!(err.to_string().contains("--layer"), "{err}");
    // Zero threads is refused, not a hang or a default in disguise.
    let zero = RuntimeOptions {
        threads: Some(0),
        ..options()
    };
    assert!(OnnxRuntimeModel::load_with_features(&path, &[], &zero).is_err());
    // A graph moved without its .data file names the missing file.
    let moved = dir.path().join("net.onnx");
    std::fs::copy(&path, &moved).unwrap();
    let err = OnnxRuntimeModel::load(&moved).unwrap_err();
    assert!(
        matches!(&err, Error::MissingFile { path, .. } if path.ends_with("dynamo.onnx.data")),
        "{err}"
    );
    // Not a graph at all.
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07not a graph").unwrap();
    assert!(OnnxRuntimeModel::load(&junk).is_err());
    // Another library once one is loaded: refused, naming the one in use.
    let other = RuntimeOptions {
        library: Some(junk.clone()),
        ..options()
    };
    let err = OnnxRuntimeModel::load_with_features(&path, &[], &other).unwrap_err();
    assert!(
        err.to_string()
            .contains(&OnnxRuntimeModel::library().unwrap().display().to_string()),
        "{err}"
    );
}

#[test]
#[ignore = "needs ONNX Runtime's library (pip install onnxruntime)"]
fn a_detector_fitted_through_tract_scores_the_same_through_onnx_runtime() {
    let inputs = expected().inputs;
    let path = fixtures().join("dynamo.onnx");
    let tract = OnnxModel::load_with_features(&path, &["mean"]).unwrap();
    let runtime = OnnxRuntimeModel::load_with_features(&path, &["mean"], &options()).unwrap();
    let fit = OodDataset::from_arrays(inputs.clone(), Array1::zeros(inputs.shape()[0])).unwrap();
    let knn = registry::find("knn")
        .unwrap()
        .build(&Params::new().set("k", 2_usize))
        .unwrap()
        .fit(&tract, Some(&fit))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("knn.oodkit");
    knn.save(&file).unwrap();
    let loaded = AnyDetector::load(&file).unwrap();
    loaded.check_model(&runtime).unwrap();
    let shifted = inputs.mapv(|x| x * 1.5 + 0.25);
    let through_tract = knn
        .score_batch(&tract, Batch::new(shifted.clone()))
        .unwrap();
    let through_runtime = loaded.score_batch(&runtime, Batch::new(shifted)).unwrap();
    assert_close(&through_tract.logits, &through_runtime.logits, "logits");
    for (a, b) in through_tract.scores.iter().zip(&through_runtime.scores) {
        assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "{a} vs {b}");
    }
}
