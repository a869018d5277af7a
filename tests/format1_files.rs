//! The committed format-1 detector files (`tests/fixtures/format1/`,
//! written before the registry redesign) load by their kind and score the
//! fixture data exactly as the code that wrote them did.

mod common;

use std::path::{Path, PathBuf};

use common::fixture_net::{FixtureNet, scored_data};
use oodkit::datasets::PrepareConfig;
use oodkit::detectors::file::describe;
use oodkit::detectors::{
    AnyDetector, FittedKnn, McDropout, McStatistic, Persist, RankFeat, ScoreFeatures,
};
use oodkit::model::{FeatureModel, LayerId};
use serde_json::Value;

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1")
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(folder().join("expected.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    json["files"].as_object().unwrap().clone()
}

fn recorded(entry: &Value) -> Option<Vec<u32>> {
    entry["scores"].as_array().map(|scores| {
        scores
            .iter()
            .map(|v| (v.as_f64().unwrap() as f32).to_bits())
            .collect()
    })
}

#[test]
fn every_format1_file_loads_and_scores_as_written() {
    let files = expected();
    assert_eq!(files.len(), 71, "the fixture set is complete");
    let net = FixtureNet::default();
    let scored = scored_data();
    let batches = scored.prepare(&PrepareConfig::new(16)).unwrap();
    for (name, entry) in &files {
        let path = folder().join(name);
        let info = describe(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.format_version, 1, "{name}");
        assert_eq!(info.calibrated, name.contains(".calibrated."), "{name}");
        let Some(expected) = recorded(entry) else {
            continue;
        };
        if name == "knn.features.oodkit" {
            continue;
        }
        let detector = AnyDetector::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(detector.kind(), info.kind, "{name}");
        assert_eq!(detector.is_calibrated(), info.calibrated, "{name}");
        detector.check_model(&net).unwrap();
        let scores = detector.score(&net, &batches).unwrap().scores;
        same_scores(name, scores.view(), &expected);
    }
}

#[test]
fn a_format1_state_fitted_on_features_scores_as_written() {
    let files = expected();
    let entry = &files["knn.features.oodkit"];
    let index = FittedKnn::load(folder().join("knn.features.oodkit")).unwrap();
    let scored = scored_data();
    let hidden = net_hidden(&scored);
    let scores = index.score_features(hidden.view()).unwrap();
    same_scores(
        "knn.features.oodkit",
        scores.view(),
        &recorded(entry).unwrap(),
    );
    // It names no layer of a model: loading it as a model's detector says so.
    assert!(AnyDetector::load(folder().join("knn.features.oodkit")).is_err());
}

/// The scores as recorded, to the bit, but for the detectors whose
/// scoring arithmetic changed since (only their last bits may move):
/// KNN's k-th distance is summed directly in f64 for the chosen neighbours
/// (it was the f32 expansion ‖q‖² + ‖x‖² − 2 q·x), to 1e-6; Mahalanobis
/// and ViM score in f32 (Mahalanobis through a factor of the precision;
/// both scored in f64), to 1e-5.
fn same_scores(name: &str, scores: ndarray::ArrayView1<f32>, expected: &[u32]) {
    assert_eq!(scores.len(), expected.len(), "{name}");
    let tolerance = match name.split('.').next() {
        Some("knn") => 1e-6,
        Some("mahalanobis" | "vim") => 1e-5,
        _ => 0.0,
    };
    for (i, (&got, &bits)) in scores.iter().zip(expected).enumerate() {
        let want = f32::from_bits(bits);
        assert!(
            got.to_bits() == bits || (got - want).abs() <= tolerance * want.abs().max(1.0),
            "{name}: score {i} is {got}, recorded {want}"
        );
    }
}

fn net_hidden(data: &oodkit::OodDataset) -> ndarray::Array2<f32> {
    FixtureNet::default()
        .forward_features(data.inputs().view(), &[LayerId::Index(-2)])
        .unwrap()
        .features
        .remove(0)
}

#[test]
fn format1_network_detectors_keep_their_parameters() {
    let rankfeat = RankFeat::load(folder().join("rankfeat.oodkit")).unwrap();
    assert_eq!(rankfeat, RankFeat::new(2.0).unwrap());
    let mc = McDropout::load(folder().join("mcdropout.oodkit")).unwrap();
    assert_eq!(
        mc,
        McDropout::new(7, McStatistic::Msp).unwrap().with_seed(42)
    );
    for name in ["rankfeat.oodkit", "mcdropout.oodkit"] {
        let any = AnyDetector::load(folder().join(name)).unwrap();
        assert!(!any.is_calibrated());
    }
}
