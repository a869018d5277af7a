//! Properties of the public API over arbitrary shapes, values (NaN, ±inf,
//! subnormals, ±f32::MAX) and parameters: every call returns `Ok` with a
//! result of the right size and no NaN — finite when the inputs are
//! moderate — or an `Err`; never a panic. A fixed seed and case count keep
//! CI's cost bounded and its runs repeatable.

use ndarray::{Array1, Array2};
use oodkit::calibration::Calibration;
use oodkit::detectors::{
    Aggregation, Aggregator, Energy, Entropy, FeatureDetector, Gen, Gram, Knn, Mahalanobis, Mls,
    Odin, PrincipalDims, Rmds, ScoreFeatures, ScoreLogits, She, Vim,
};
use oodkit::metrics::bench_metrics;
use oodkit::model::Shaping;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(20261202),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Any f32, with the awkward ones often.
fn value() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![
        4 => -10.0_f32..10.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MAX),
        1 => Just(-f32::MAX),
        1 => Just(f32::MIN_POSITIVE / 4.0),
        1 => Just(0.0),
        1 => any::<f32>(),
    ]
}

/// Finite values, huge ones included.
fn finite_value() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![
        6 => -10.0_f32..10.0,
        1 => Just(0.0),
        1 => Just(1.0),
        1 => Just(f32::MIN_POSITIVE / 4.0),
        1 => Just(f32::MAX),
        1 => Just(-f32::MAX),
    ]
}

/// Matrices of moderate values (most), of finite values, and of any.
fn matrices(
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> impl Strategy<Value = Array2<f32>> {
    prop_oneof![
        4 => matrix(rows.clone(), cols.clone(), -10.0_f32..10.0),
        2 => matrix(rows.clone(), cols.clone(), finite_value()),
        1 => matrix(rows, cols, value()),
    ]
}

/// A matrix of `rows` × `cols` (each in the range) of `values`.
fn matrix(
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    values: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<Value = Array2<f32>> {
    (rows, cols).prop_flat_map(move |(r, c)| {
        proptest::collection::vec(values.clone(), r * c)
            .prop_map(move |v| Array2::from_shape_vec((r, c), v).expect("r * c values"))
    })
}

fn moderate(m: &Array2<f32>) -> bool {
    m.iter().all(|v| v.is_finite() && v.abs() <= 1e4)
}

/// The contract: an error, or one score per row, no NaN, finite for
/// moderate inputs.
fn holds(
    result: oodkit::Result<Array1<f32>>,
    rows: usize,
    inputs_moderate: bool,
) -> Result<(), TestCaseError> {
    if let Ok(scores) = result {
        prop_assert_eq!(scores.len(), rows);
        prop_assert!(scores.iter().all(|s| !s.is_nan()), "NaN in {:?}", scores);
        if inputs_moderate {
            prop_assert!(
                scores.iter().all(|s| s.is_finite()),
                "not finite: {:?}",
                scores
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn logit_detectors_score_or_refuse(
        logits in matrices(0..6, 0..6),
        t in prop_oneof![Just(f32::MIN_POSITIVE / 8.0), 1e-3_f32..1e3, Just(1e6), Just(f32::MAX)],
        gamma in 0.01_f32..1.0,
        top_k in 1_usize..6,
    ) {
        let finite = logits.iter().all(|v| v.is_finite());
        let mut detectors: Vec<Box<dyn ScoreLogits>> = vec![
            Box::new(Mls::new()),
            Box::new(Mls::msp()),
            Box::new(Entropy::new()),
            Box::new(Odin::new(t, 0.0).unwrap()),
        ];
        match Energy::new(t) {
            Ok(energy) => detectors.push(Box::new(energy)),
            Err(_) => prop_assert!(t > Energy::MAX_TEMPERATURE),
        }
        if let Ok(generalized) = Gen::new(gamma, top_k) {
            detectors.push(Box::new(generalized));
        }
        for d in &detectors {
            let result = d.score_logits(logits.view());
            if logits.iter().any(|v| v.is_nan()) && logits.ncols() > 0 {
                prop_assert!(result.is_err(), "{} accepted NaN logits", d.name());
            }
            // Finite logits of any size (±f32::MAX too) give finite scores.
            holds(result, logits.nrows(), finite)?;
        }
    }

    #[test]
    fn feature_detectors_fit_and_score_or_refuse(
        fit in matrices(0..14, 0..5),
        queries in matrices(0..5, 0..5),
        classes in 1_i64..4,
        k in 1_usize..5,
    ) {
        let labels: Array1<i64> = (0..fit.nrows() as i64).map(|i| i % classes).collect();
        let moderate_inputs = moderate(&fit) && moderate(&queries);
        macro_rules! check {
            ($detector:expr) => {
                if let Ok(state) = $detector.fit_features(fit.view(), labels.view()) {
                    prop_assert!(fit.iter().all(|v| v.is_finite()), "fitted on non-finite features");
                    let result = state.score_features(queries.view());
                    if queries.ncols() != fit.ncols() {
                        prop_assert!(result.is_err());
                    }
                    holds(result, queries.nrows(), moderate_inputs)?;
                }
            };
        }
        check!(Mahalanobis::new());
        check!(Rmds::new());
        check!(Knn::new(k).unwrap());
        check!(She::new());
        check!(Gram::new(1..=3, 0.1).unwrap());
        check!(Vim::new(PrincipalDims::Count(1)).unwrap()
            .with_head(Array2::eye(fit.ncols().max(1)), Array1::zeros(fit.ncols().max(1)))
            .unwrap());
    }

    #[test]
    fn shaping_keeps_the_shape(
        features in matrices(0..5, 0..6),
        percentile in 0.0_f32..1.0,
        threshold in value(),
    ) {
        for shaping in [
            Shaping::ash(percentile).unwrap(),
            Shaping::scale(percentile).unwrap(),
            Shaping::React { threshold },
        ] {
            let shaped = shaping.shape_features(features.view());
            prop_assert_eq!(shaped.shape(), features.shape());
        }
    }

    #[test]
    fn metrics_are_in_range_or_refused(
        scores_in in proptest::collection::vec(value(), 0..20),
        scores_out in proptest::collection::vec(value(), 0..20),
    ) {
        let report = bench_metrics(
            Array1::from(scores_in.clone()).view(),
            Array1::from(scores_out.clone()).view(),
            &["auroc", "fpr95tpr", "aupr_in", "aupr_out"],
        );
        if let Ok(report) = report {
            prop_assert!(!scores_in.is_empty() && !scores_out.is_empty());
            for name in ["auroc", "fpr95tpr", "aupr_in", "aupr_out"] {
                let v = report.get(name).unwrap();
                prop_assert!((0.0..=1.0).contains(&v), "{} = {}", name, v);
            }
        }
    }

    #[test]
    fn calibration_p_values_are_in_range(
        scores in proptest::collection::vec(value(), 0..30),
        probe in value(),
        alpha in prop_oneof![0.0_f64..1.0, Just(f64::NAN), Just(1.5)],
    ) {
        match Calibration::fit(Array1::from(scores.clone()).view()) {
            Ok(c) => {
                prop_assert!(scores.iter().all(|s| s.is_finite()) && !scores.is_empty());
                if let Ok(p) = c.p_value(probe) {
                    let n = scores.len() as f64;
                    prop_assert!(p >= 1.0 / (n + 1.0) && p <= 1.0);
                }
                if let Ok(t) = c.threshold(alpha) {
                    prop_assert!(alpha > 0.0 && alpha < 1.0 && !t.is_nan());
                    if let Ok(p) = c.p_value(probe) {
                        prop_assert_eq!(p <= alpha, probe >= t);
                    }
                }
            }
            Err(_) => prop_assert!(scores.is_empty() || scores.iter().any(|s| !s.is_finite())),
        }
    }

    #[test]
    fn aggregators_combine_or_refuse(
        layers in matrices(0..12, 1..4),
        kind in prop_oneof![
            Just(Aggregation::StdNormalized),
            Just(Aggregation::MeanNormalized),
            Just(Aggregation::Fisher),
        ],
    ) {
        let columns: Vec<Array1<f32>> = layers.columns().into_iter().map(|c| c.to_owned()).collect();
        let views: Vec<_> = columns.iter().map(|c| c.view()).collect();
        if let Ok(agg) = Aggregator::fit(kind, &views) {
            let result = agg.aggregate(&views);
            holds(result, layers.nrows(), moderate(&layers))?;
        }
    }
}

#[cfg(feature = "plots")]
mod plots {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    proptest! {
        #![proptest_config(config(16))]

        /// Drawing returns (under a time limit), with a figure or an error.
        #[test]
        fn score_plots_return(
            scores_in in proptest::collection::vec(value(), 1..12),
            scores_out in proptest::collection::vec(value(), 1..12),
            bins in prop_oneof![1_usize..200, Just(0), Just(usize::MAX)],
        ) {
            let (send, receive) = mpsc::channel();
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                let options = oodkit::plots::ScorePlot::new().bins(bins);
                let result = oodkit::plots::plot_ood_scores(
                    Array1::from(scores_in).view(),
                    Array1::from(scores_out).view(),
                    &options,
                    dir.path().join("s.png"),
                );
                let _ = send.send(result.is_ok());
            });
            prop_assert!(receive.recv_timeout(Duration::from_secs(60)).is_ok(), "the plot did not return");
        }

        /// 2-D feature maps (PCA) of any features return too.
        #[test]
        fn feature_plots_return(
            (features_in, features_out) in (1_usize..4)
                .prop_flat_map(|d| (matrices(1..10, d..d + 1), matrices(1..10, d..d + 1))),
        ) {
            let (send, receive) = mpsc::channel();
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                let labels = Array1::<i64>::zeros(features_in.nrows());
                let options = oodkit::plots::FeaturePlot::new()
                    .method(oodkit::plots::Projection::Pca);
                let result = oodkit::plots::plot_2d_features(
                    features_in.view(),
                    labels.view(),
                    features_out.view(),
                    &options,
                    dir.path().join("f.png"),
                );
                let _ = send.send(result.is_ok());
            });
            prop_assert!(receive.recv_timeout(Duration::from_secs(60)).is_ok(), "the plot did not return");
        }
    }
}
