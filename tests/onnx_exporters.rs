//! Graphs as today's PyTorch exports them (tests/fixtures/onnx_exporters,
//! made by its make.py): the dynamo exporter with its weights in a `.data`
//! file beside the graph and without, and the TorchScript exporter with an
//! output named at export. Each runs to PyTorch's logits, finds its
//! feature layer by itself, reads its last layer (external data included),
//! takes node and output names as layers, and says what is missing when
//! its `.data` file is.
#![cfg(feature = "onnx")]

#[path = "common/exporter_fixtures.rs"]
mod exporter_fixtures;

use exporter_fixtures::{assert_close, expected, fixtures};
use ndarray::Array1;
use oodkit::Error;
use oodkit::detectors::{Detector, Vim};
use oodkit::model::{FeatureModel, GraphSummary, LastLayer, Model, OnnxModel};

#[test]
fn todays_exports_run_find_their_feature_layer_and_read_their_last_layer() {
    let e = expected();
    for (graph, default_layer) in [
        ("dynamo.onnx", "mean"),
        ("dynamo_inline.onnx", "mean"),
        ("legacy.onnx", "penultimate"),
    ] {
        let path = fixtures().join(graph);
        // The default feature layer: what the last linear layer reads.
        let layer = OnnxModel::last_layer_input(&path).unwrap();
        assert_eq!(layer, default_layer, "{graph}");
        let model = OnnxModel::load_with_features(&path, &[&layer]).unwrap();
        assert_close(&model.forward(e.inputs.view()).unwrap(), &e.logits, graph);
        let out = model
            .forward_features(e.inputs.view(), &[(-2).into()])
            .unwrap();
        assert_close(&out.features[0], &e.penultimate, graph);
        // The last layer's weights, from the .data file for the dynamo export.
        let (w, b) = model.head_parameters().unwrap();
        assert_close(&w, &e.weights, graph);
        assert_close(
            &b.insert_axis(ndarray::Axis(0)),
            &e.bias.clone().insert_axis(ndarray::Axis(0)),
            graph,
        );
        // So ViM fits on it (it needs that last layer).
        let fit = oodkit::OodDataset::from_arrays(e.inputs.clone(), Array1::zeros(5)).unwrap();
        Vim::new(oodkit::detectors::PrincipalDims::Count(3))
            .unwrap()
            .fit(&model, Some(&fit))
            .unwrap();
        // The summary `oodkit inspect` prints names the same layer.
        let summary = GraphSummary::of(&path).unwrap();
        assert_eq!(
            summary.last_layer.as_ref().unwrap().1,
            default_layer,
            "{graph}"
        );
        assert!(
            summary.nodes.iter().any(|n| n.output == default_layer),
            "{summary}"
        );
        assert!(
            summary.to_string().contains("the default --layer"),
            "{summary}"
        );
    }
}

#[test]
fn a_layer_is_a_node_name_or_an_output_name() {
    let e = expected();
    let dynamo = fixtures().join("dynamo.onnx");
    for layer in ["node_mean", "mean"] {
        let model = OnnxModel::load_with_features(&dynamo, &[layer]).unwrap();
        let out = model
            .forward_features(e.inputs.view(), &[layer.into()])
            .unwrap();
        assert_close(&out.features[0], &e.penultimate, layer);
    }
    let legacy = fixtures().join("legacy.onnx");
    for layer in ["/ReduceMean", "penultimate"] {
        let model = OnnxModel::load_with_features(&legacy, &[layer]).unwrap();
        assert!(model.head_parameters().is_ok(), "{layer}");
    }
    let err = OnnxModel::load_with_features(&dynamo, &["no_such_node"]).unwrap_err();
    assert!(err.to_string().contains("inspect"), "{err}");
}

#[test]
fn a_graph_moved_without_its_data_file_says_which_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let moved = dir.path().join("net.onnx");
    std::fs::copy(fixtures().join("dynamo.onnx"), &moved).unwrap();
    let err = OnnxModel::load(&moved).unwrap_err();
    assert!(
        matches!(&err, Error::MissingFile { path, .. } if path.ends_with("dynamo.onnx.data")),
        "{err}"
    );
    assert!(err.to_string().contains("beside"), "{err}");
    // With the data file beside it, it loads.
    std::fs::copy(
        fixtures().join("dynamo.onnx.data"),
        dir.path().join("dynamo.onnx.data"),
    )
    .unwrap();
    OnnxModel::load(&moved).unwrap();
    // A data file cut short is an error, not a short read.
    std::fs::write(dir.path().join("dynamo.onnx.data"), [0_u8; 16]).unwrap();
    assert!(OnnxModel::load(&moved).is_err());
}
