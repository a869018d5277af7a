//! Every registered detector fits, scores and calibrates by name on
//! arrays computed elsewhere (a forward hook's features, logits, labels):
//! the same scores as the typed detectors on the same arrays, files that
//! load and score alike, and that serve the network the features came
//! from; arrays that cannot be one input set are refused.

use ndarray::{Array1, Array2, ArrayView4, Axis, s};
use oodkit::Error;
use oodkit::detectors::registry::{self, Params};
use oodkit::detectors::{
    AnyDetector, Energy, FeatureDetector, Knn, Mahalanobis, Precomputed, PrincipalDims,
    ScoreFeatures, ScoreLogits, Vim,
};
use oodkit::model::from_fn_with_features;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const D: usize = 8;
const CLASSES: usize = 4;

/// `n` rows of class-structured features (class `i % CLASSES`), their
/// logits by the head of [`head`], and the labels.
fn data(n: usize, seed: u64, shift: f32) -> (Array2<f32>, Array2<f32>, Array1<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Array1<i64> = (0..n).map(|i| (i % CLASSES) as i64).collect();
    let x = Array2::from_shape_fn((n, D), |(i, j)| {
        let centre = 3.0 * ((labels[i] as f32 + 1.0) * (j as f32 + 1.0)).sin() + shift;
        (centre + rng.random::<f32>() - 0.5).max(0.0)
    });
    let (w, b) = head();
    let logits = x.dot(&w.t()) + &b;
    (x, logits, labels)
}

fn head() -> (Array2<f32>, Array1<f32>) {
    let w = Array2::from_shape_fn((CLASSES, D), |(c, j)| {
        ((c as f32 + 1.0) * (j as f32 + 1.0)).sin()
    });
    (w, Array1::from(vec![0.1, -0.2, 0.05, 0.0]))
}

fn built(name: &str, params: Params) -> registry::UnfittedDetector {
    registry::find(name).unwrap().build(&params).unwrap()
}

#[test]
fn feature_detectors_by_name_score_as_the_typed_ones_on_the_same_arrays() {
    let (fit, fit_logits, labels) = data(300, 1, 0.0);
    let (queries, query_logits, _) = data(50, 2, 0.7);
    let (w, b) = head();
    let fit_data = Precomputed::features(fit.view())
        .unwrap()
        .with_logits(fit_logits.view())
        .unwrap()
        .with_head(w.clone(), b.clone())
        .unwrap()
        .with_labels(labels.view())
        .unwrap();
    let query_data = Precomputed::features(queries.view())
        .unwrap()
        .with_logits(query_logits.view())
        .unwrap()
        .with_head(w.clone(), b.clone())
        .unwrap();
    let by_name = |name: &str, params: Params| {
        built(name, params)
            .fit_precomputed(&fit_data)
            .unwrap()
            .score_precomputed(&query_data)
            .unwrap()
            .scores
    };
    let knn = Knn::new(5)
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    assert_eq!(
        by_name("knn", Params::new().set("k", 5)),
        knn.score_features(queries.view()).unwrap()
    );
    let mahalanobis = Mahalanobis::new()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    assert_eq!(
        by_name("mahalanobis", Params::new()),
        mahalanobis.score_features(queries.view()).unwrap()
    );
    // ViM reads the head the arrays came with.
    let vim = Vim::new(PrincipalDims::Count(3))
        .unwrap()
        .with_head(w, b)
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    let expected = vim.score_features(queries.view()).unwrap();
    let found = by_name("vim", Params::new().set("dims", 3));
    for (a, e) in found.iter().zip(&expected) {
        assert!(
            (a - e).abs() <= 1e-5 * e.abs().max(1.0),
            "{a} by name, {e} typed"
        );
    }
}

#[test]
fn logit_detectors_score_precomputed_logits_and_say_when_they_are_missing() {
    let (features, logits, _) = data(60, 3, 0.0);
    let energy = built("energy", Params::new().set("temperature", 2.0))
        .fit_precomputed(&Precomputed::logits(logits.view()).unwrap())
        .unwrap();
    let scores = energy
        .score_precomputed(&Precomputed::logits(logits.view()).unwrap())
        .unwrap();
    let typed = Energy::new(2.0).unwrap();
    assert_eq!(scores.scores, typed.score_logits(logits.view()).unwrap());
    assert_eq!(scores.logits, logits);
    // Features alone: Energy has no logits to read.
    let err = energy
        .score_precomputed(&Precomputed::features(features.view()).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("logits"), "{err}");
    // With the head, the logits are computed from the features.
    let (w, b) = head();
    let from_head = energy
        .score_precomputed(
            &Precomputed::features(features.view())
                .unwrap()
                .with_head(w, b)
                .unwrap(),
        )
        .unwrap();
    for (a, e) in from_head.scores.iter().zip(&scores.scores) {
        assert!(
            (a - e).abs() <= 1e-5 * e.abs().max(1.0),
            "{a} from the head, {e}"
        );
    }
}

#[test]
fn a_detector_fitted_on_arrays_saves_calibrates_and_serves_the_network_they_came_from() {
    let (fit, _, labels) = data(400, 4, 0.0);
    let (held_out, _, _) = data(200, 5, 0.0);
    let (queries, _, _) = data(100, 6, 0.5);
    let knn = built("knn", Params::new().set("k", 10))
        .fit_precomputed(
            &Precomputed::features(fit.view())
                .unwrap()
                .with_labels(labels.view())
                .unwrap(),
        )
        .unwrap();
    // No input shape recorded: the arrays are no network's inputs.
    assert_eq!(knn.expects(), None);
    let calibrated = knn
        .calibrate_precomputed(&Precomputed::features(held_out.view()).unwrap(), 0.1)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("knn.oodkit");
    calibrated.save(&path).unwrap();
    let loaded = AnyDetector::load(&path).unwrap();
    let query_data = Precomputed::features(queries.view()).unwrap();
    let expected = calibrated.score_precomputed(&query_data).unwrap().scores;
    assert_eq!(
        loaded.score_precomputed(&query_data).unwrap().scores,
        expected
    );
    // Verdicts without logits carry no class; about α of held-out ID rows
    // are flagged.
    let verdicts = loaded
        .verdicts_precomputed(&Precomputed::features(held_out.view()).unwrap())
        .unwrap();
    assert!(verdicts.iter().all(|v| v.class == -1));
    let flagged = verdicts.iter().filter(|v| v.is_ood).count();
    assert!(
        (5..=35).contains(&flagged),
        "{flagged} of 200 flagged at α = 0.1"
    );

    // The network whose penultimate layer gave the features: inputs
    // (N, 1, 1, D) whose pixels are the features.
    let network = from_fn_with_features(["penultimate"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let features = x.to_shape((n, D))?.to_owned();
        let logits = features.sum_axis(Axis(1)).insert_axis(Axis(1));
        Ok((vec![features], logits))
    });
    let images = queries
        .clone()
        .into_shape_with_order((queries.nrows(), 1, 1, D))
        .unwrap();
    loaded.check_model(&network).unwrap();
    let out = loaded
        .score_batch(&network, oodkit::batch::Batch::new(images))
        .unwrap();
    assert_eq!(out.scores, expected);
}

#[test]
fn arrays_that_cannot_be_one_input_set_are_refused() {
    let (x, logits, labels) = data(20, 7, 0.0);
    let err = Precomputed::features(x.slice(s![..0, ..])).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
    let err = Precomputed::features(x.view())
        .unwrap()
        .with_logits(logits.slice(s![..19, ..]))
        .unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err}");
    let err = Precomputed::features(x.view())
        .unwrap()
        .with_labels(labels.slice(s![..5]))
        .unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err}");
    let mut bad = x.clone();
    bad[[3, 2]] = f32::NAN;
    assert!(Precomputed::features(bad.view()).is_err());
    let err = Precomputed::layers([("logits".to_owned(), x.view())]).unwrap_err();
    assert!(err.to_string().contains("logits"), "{err}");
    let err =
        Precomputed::layers([("a".to_owned(), x.view()), ("a".to_owned(), x.view())]).unwrap_err();
    assert!(err.to_string().contains("once"), "{err}");
    let (w, b) = head();
    let err = Precomputed::features(x.slice(s![.., ..3]))
        .unwrap()
        .with_head(w.clone(), b.clone())
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(
        Precomputed::logits(logits.view())
            .unwrap()
            .with_head(w, b)
            .is_err()
    );
    // A batch of inputs that are no row numbers, given straight to the
    // arrays' model, is refused (negative, fractional, past the rows).
    let knn = built("knn", Params::new().set("k", 2))
        .fit_precomputed(&Precomputed::features(x.view()).unwrap())
        .unwrap();
    let arrays = Precomputed::features(x.view()).unwrap();
    for (high, low) in [
        (-1.0_f32, 5.0_f32),
        (0.0, 2.5),
        (0.0, 20.0),
        (0.0, -0.0 - 1.0),
    ] {
        let inputs = ndarray::Array4::from_shape_vec((1, 2, 1, 1), vec![high, low]).unwrap();
        let err = knn
            .score_batch(&arrays, oodkit::batch::Batch::new(inputs))
            .unwrap_err();
        assert!(
            err.to_string().contains("precomputed rows"),
            "({high}, {low}): {err}"
        );
    }
    // Mahalanobis fitted without labels says what is missing.
    let err = built("mahalanobis", Params::new())
        .fit_precomputed(&Precomputed::features(x.view()).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("label"), "{err}");
    // A feature detector on logits alone names the features.
    let err = built("knn", Params::new().set("k", 2))
        .fit_precomputed(&Precomputed::logits(logits.view()).unwrap())
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("feature"), "{err}");
}

#[test]
fn several_layers_are_picked_by_name() {
    let (x, _, labels) = data(200, 8, 0.0);
    let (q, _, _) = data(30, 9, 0.4);
    let wide = x.mapv(|v| v * 2.0 + 1.0);
    let wide_q = q.mapv(|v| v * 2.0 + 1.0);
    let fit = Precomputed::layers([
        ("early".to_owned(), wide.view()),
        ("late".to_owned(), x.view()),
    ])
    .unwrap()
    .with_labels(labels.view())
    .unwrap();
    let query = Precomputed::layers([
        ("early".to_owned(), wide_q.view()),
        ("late".to_owned(), q.view()),
    ])
    .unwrap();
    let early = built(
        "knn",
        Params::new().set("k", 3).with_layers(vec!["early".into()]),
    )
    .fit_precomputed(&fit)
    .unwrap();
    let typed = Knn::new(3)
        .unwrap()
        .fit_features(wide.view(), labels.view())
        .unwrap();
    assert_eq!(
        early.score_precomputed(&query).unwrap().scores,
        typed.score_features(wide_q.view()).unwrap()
    );
}

#[test]
fn partial_fits_by_name_merge_through_files_into_the_whole_fit() {
    let (fit, _, labels) = data(300, 10, 0.0);
    let (queries, _, _) = data(40, 11, 0.6);
    let (w, b) = head();
    let dir = tempfile::tempdir().unwrap();
    for (name, params) in [
        ("knn", Params::new().set("k", 5)),
        ("mahalanobis", Params::new()),
        ("vim", Params::new().set("dims", 3)),
    ] {
        let detector = built(name, params);
        let shard = |rows: std::ops::Range<usize>| {
            Precomputed::features(fit.slice(s![rows.clone(), ..]))
                .unwrap()
                .with_head(w.clone(), b.clone())
                .unwrap()
                .with_labels(labels.slice(s![rows]))
                .unwrap()
        };
        let cuts = [0, 70, 180, 300];
        let path = |pass: &str, k: usize| dir.path().join(format!("{name}-{pass}-{k}.oodkit"));
        for k in 0..3 {
            let part = detector
                .partial_fit_precomputed(&shard(cuts[k]..cuts[k + 1]))
                .unwrap();
            part.save(path("first", k)).unwrap();
        }
        let merge = |pass: &str| {
            let mut merged = detector.load_partial(path(pass, 0)).unwrap();
            for k in 1..3 {
                merged
                    .merge(detector.load_partial(path(pass, k)).unwrap())
                    .unwrap();
            }
            merged
        };
        let mut merged = merge("first");
        if merged.end_first_pass().unwrap() {
            merged.save(dir.path().join("merged.oodkit")).unwrap();
            for k in 0..3 {
                let mut copy = detector
                    .load_partial(dir.path().join("merged.oodkit"))
                    .unwrap();
                copy.update_precomputed(&shard(cuts[k]..cuts[k + 1]))
                    .unwrap();
                copy.save(path("second", k)).unwrap();
            }
            merged = merge("second");
        }
        let sharded = merged.finish().unwrap();
        let whole = detector.fit_precomputed(&shard(0..300)).unwrap();
        let q = Precomputed::features(queries.view())
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap();
        let (a, e) = (
            sharded.score_precomputed(&q).unwrap().scores,
            whole.score_precomputed(&q).unwrap().scores,
        );
        for (a, e) in a.iter().zip(&e) {
            assert!(
                (a - e).abs() <= 1e-5 * e.abs().max(1.0),
                "{name}: {a} sharded, {e} whole"
            );
        }
        // The finished detector saves and loads as any other.
        sharded.save(dir.path().join("done.oodkit")).unwrap();
        assert_eq!(
            AnyDetector::load(dir.path().join("done.oodkit"))
                .unwrap()
                .kind(),
            whole.kind()
        );
    }
    // Logit detectors have no partial fits; a detector that reads labels
    // says so when a shard has none.
    let err = built("msp", Params::new())
        .partial_fit_precomputed(&Precomputed::logits(fit.view()).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("partial fits"), "{err}");
    let err = built("mahalanobis", Params::new())
        .partial_fit_precomputed(&Precomputed::features(fit.view()).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("labels"), "{err}");
    // Partial fits of two kinds do not merge.
    let mut knn = built("knn", Params::new().set("k", 2))
        .partial_fit_precomputed(&Precomputed::features(fit.view()).unwrap())
        .unwrap();
    let she = built("she", Params::new())
        .partial_fit_precomputed(
            &Precomputed::features(fit.view())
                .unwrap()
                .with_labels(labels.view())
                .unwrap(),
        )
        .unwrap();
    let err = knn.merge(she).unwrap_err();
    assert!(err.to_string().contains("cannot merge"), "{err}");
}

#[test]
fn features_alone_fit_in_place_as_fit_features_does() {
    // Features without logits or head: the fit reads the array in place
    // (no row model), and is the typed detector's fit_features.
    let (fit, _, labels) = data(500, 12, 0.0);
    let (queries, _, _) = data(60, 13, 0.5);
    let fit_data = Precomputed::features(fit.view())
        .unwrap()
        .with_labels(labels.view())
        .unwrap();
    let by_name = |name: &str, params: Params| {
        built(name, params)
            .fit_precomputed(&fit_data)
            .unwrap()
            .score_precomputed(&Precomputed::features(queries.view()).unwrap())
            .unwrap()
            .scores
    };
    assert_eq!(
        by_name("knn", Params::new().set("k", 7)),
        Knn::new(7)
            .unwrap()
            .fit_features(fit.view(), labels.view())
            .unwrap()
            .score_features(queries.view())
            .unwrap()
    );
    assert_eq!(
        by_name("mahalanobis", Params::new()),
        Mahalanobis::new()
            .fit_features(fit.view(), labels.view())
            .unwrap()
            .score_features(queries.view())
            .unwrap()
    );
    let she = oodkit::detectors::She::new()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    assert_eq!(
        by_name("she", Params::new()),
        she.score_features(queries.view()).unwrap()
    );
}
