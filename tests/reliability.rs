//! Regression tests for the classes of defect an independent run of bad
//! inputs found: calls that never returned, unchecked batches, NaN logits
//! in the feature detectors, degenerate shapes, data that changes size,
//! parameter extremes, weak messages. Each is fixed where it arose; these
//! hold the fixes.

use ndarray::{Array1, Array2, Array4, ArrayView4, array};
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{
    Detector, Energy, FeatureDetector, Gram, Knn, Mahalanobis, Odin, PrincipalDims, ScoreFeatures,
    ScoreLogits, She, Vim,
};
use oodkit::model::{Shaping, from_fn, from_fn_with_features};
use oodkit::{Batch, Error};

#[cfg(feature = "plots")]
/// Runs `f` on another thread and fails the test when it takes longer
/// than `limit` (the thread is left behind: the test fails either way).
fn within<T: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(f());
    });
    receive
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the call did not return within {limit:?}"))
}

#[cfg(feature = "plots")]
#[test]
fn feature_plots_of_degenerate_or_huge_points_return() {
    use oodkit::plots::{FeaturePlot, Projection, plot_2d_features};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.png");
    // Identical points: t-SNE has zero distances to divide by.
    let same = Array2::from_elem((40, 3), 1.0_f32);
    let labels = Array1::zeros(40);
    let p = path.clone();
    let result = within(std::time::Duration::from_secs(120), move || {
        let options = FeaturePlot::new().method(Projection::Tsne { perplexity: 5.0 });
        plot_2d_features(same.view(), labels.view(), same.view(), &options, &p)
    });
    // Either a figure or an error that says why, never a hang.
    if let Err(e) = result {
        assert!(matches!(e, Error::Numerical { .. }), "{e}");
    }
    // Features spanning ±f32::MAX: the projection overflows f32.
    let huge = Array2::from_shape_fn((20, 3), |(i, j)| {
        if (i + j) % 2 == 0 {
            f32::MAX
        } else {
            -f32::MAX
        }
    });
    let labels = Array1::zeros(20);
    let p = path.clone();
    let result = within(std::time::Duration::from_secs(60), move || {
        plot_2d_features(
            huge.view(),
            labels.view(),
            huge.view(),
            &FeaturePlot::new(),
            &p,
        )
    });
    if let Err(e) = result {
        assert!(e.to_string().contains("projection"), "{e}");
    }
    // Points one ulp apart around 1e30: the axis must not have zero width.
    let close = Array2::from_shape_fn((20, 2), |(i, j)| 1e30_f32 + (i * j) as f32);
    let labels = Array1::zeros(20);
    within(std::time::Duration::from_secs(60), move || {
        let options = FeaturePlot::new().method(Projection::Pca);
        let _ = plot_2d_features(close.view(), labels.view(), close.view(), &options, &path);
    });
}

#[cfg(feature = "plots")]
#[test]
fn absurd_histogram_bins_are_an_error_with_the_bound() {
    use oodkit::plots::{MAX_BINS, ScorePlot, plot_ood_scores};
    let dir = tempfile::tempdir().unwrap();
    let err = plot_ood_scores(
        array![0.0_f32, 1.0].view(),
        array![2.0_f32, 3.0].view(),
        &ScorePlot::new().bins(usize::MAX),
        dir.path().join("s.png"),
    )
    .unwrap_err();
    assert!(err.to_string().contains(&MAX_BINS.to_string()), "{err}");
}

#[cfg(feature = "plots")]
#[test]
fn projecting_one_feature_says_so_not_k() {
    let err = oodkit::plots::Projection::Pca
        .project(Array2::zeros((5, 1)).view())
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("2 features") && !message.contains(" k"),
        "{message}"
    );
}

/// A model whose logits are NaN for the second input.
fn nan_logits_model() -> impl oodkit::model::Model + Send + Sync {
    from_fn_with_features(["f"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, 4))?.to_owned();
        let mut logits = f.clone();
        if n > 1 {
            logits[[1, 0]] = f32::NAN;
        }
        Ok((vec![f], logits))
    })
}

#[test]
fn nan_logits_are_errors_for_the_feature_detectors_too() {
    let inputs = Array4::from_shape_fn((8, 1, 2, 2), |(i, _, h, w)| (i + h + w) as f32);
    let ds = OodDataset::from_arrays(inputs, Array1::from_iter((0..8).map(|i| i % 2))).unwrap();
    let config = PrepareConfig::new(8);
    let data = ds.prepare(&config).unwrap();
    let vim = Vim::new(PrincipalDims::Count(1)).unwrap();
    for err in [
        vim.fit(nan_logits_model(), Some(&data)).unwrap_err(),
        Gram::default()
            .fit(nan_logits_model(), Some(&data))
            .unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotANumber { index: 1, .. }), "{err:?}");
    }
}

#[test]
fn zero_width_and_zero_row_inputs_are_answered_not_panicked_on() {
    // Shaping zero-width activations leaves them as they are.
    let empty = Array2::<f32>::zeros((3, 0));
    for shaping in [
        Shaping::ash(0.9).unwrap(),
        Shaping::scale(0.5).unwrap(),
        Shaping::React { threshold: 1.0 },
    ] {
        assert_eq!(shaping.shape_features(empty.view()).shape(), &[3, 0]);
    }
    // Zero rows to score: an empty answer, as the logit detectors give.
    let features = Array2::from_shape_fn((10, 2), |(i, j)| (i * 3 + j) as f32);
    let labels = Array1::from_iter((0..10).map(|i| i % 2));
    let none = Array2::<f32>::zeros((0, 2));
    let knn = Knn::new(3)
        .unwrap()
        .fit_features(features.view(), labels.view())
        .unwrap();
    assert_eq!(knn.score_features(none.view()).unwrap().len(), 0);
    let maha = Mahalanobis::new()
        .fit_features(features.view(), labels.view())
        .unwrap();
    assert_eq!(maha.score_features(none.view()).unwrap().len(), 0);
    assert_eq!(
        Energy::default()
            .score_logits(Array2::zeros((0, 3)).view())
            .unwrap()
            .len(),
        0
    );
    // Zero-width features to fit: an error.
    let zero = Array2::<f32>::zeros((10, 0));
    assert!(She::new().fit_features(zero.view(), labels.view()).is_err());
    assert!(
        Mahalanobis::new()
            .fit_features(zero.view(), labels.view())
            .is_err()
    );
}

#[test]
fn scoring_data_of_no_input_is_an_error() {
    let model = from_fn(|x: ArrayView4<f32>| Ok(x.to_shape((x.shape()[0], 2))?.to_owned()));
    let mls = oodkit::Mls::new().fit(&model, None).unwrap();
    let err = mls
        .score(&Batch::new(Array4::zeros((0, 1, 1, 2))))
        .unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
}

#[test]
fn a_preprocess_that_drops_inputs_is_an_error() {
    let inputs = Array4::<f32>::zeros((4, 1, 1, 2));
    let ds = OodDataset::from_arrays(inputs, Array1::zeros(4)).unwrap();
    // An unlabelled batch (the labels dropped too) of fewer inputs.
    let config = PrepareConfig::new(4).preprocess(|b: Batch| {
        Ok(Batch::new(
            b.inputs.slice(ndarray::s![..2, .., .., ..]).to_owned(),
        ))
    });
    let prepared = ds.prepare(&config).unwrap();
    let model = from_fn(|x: ArrayView4<f32>| Ok(x.to_shape((x.shape()[0], 2))?.to_owned()));
    let mls = oodkit::Mls::new().fit(&model, None).unwrap();
    let err = mls.score(&prepared).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                left: 4,
                right: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn tiny_temperatures_keep_energy_and_odin_finite() {
    let logits = array![[1.0_f32, 0.5, -3.0], [100.0, 100.0, 0.0]];
    for t in [f32::MIN_POSITIVE / 8.0, 1e-30, 1e-3] {
        let energy = Energy::new(t).unwrap().score_logits(logits.view()).unwrap();
        // −T·ln Σ exp(l/T) → −max as T → 0 (two maxima add T·ln 2).
        assert!((energy[0] + 1.0).abs() < 1e-3, "T = {t}: {energy}");
        assert!((energy[1] + 100.0).abs() < 1e-2, "T = {t}: {energy}");
        let odin = Odin::new(t, 0.0)
            .unwrap()
            .score_logits(logits.view())
            .unwrap();
        assert!(odin.iter().all(|s| s.is_finite()), "T = {t}: {odin}");
        assert_eq!(odin[0], -1.0);
        assert_eq!(odin[1], -0.5);
    }
}

#[test]
fn vim_on_one_sample_says_it_needs_more() {
    let one = array![[1.0_f32, 2.0, 3.0]];
    let err = Vim::new(PrincipalDims::Count(1))
        .unwrap()
        .with_head(Array2::eye(3), Array1::zeros(3))
        .unwrap()
        .fit_features(one.view(), array![0_i64].view())
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("at least 2") && !message.contains("principal_dims"),
        "{message}"
    );
}

#[cfg(feature = "burn")]
#[test]
fn a_checkpoint_path_that_is_a_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let device = burn::tensor::Device::flex();
    let net = oodkit::nets::ToyMlpConfig::new(4, 8, 2)
        .init(&device)
        .unwrap();
    let err = oodkit::training::load_checkpoint(net, dir.path()).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
}

#[test]
fn degenerate_cases_score_as_documented() {
    use oodkit::detectors::{Entropy, Gen, Mls, Rmds};
    // One class.
    let one = array![[3.0_f32], [-2.0]];
    assert_eq!(
        Mls::new().score_logits(one.view()).unwrap(),
        array![-3.0, 2.0]
    );
    assert_eq!(
        Mls::msp().score_logits(one.view()).unwrap(),
        array![-1.0, -1.0]
    );
    assert_eq!(
        Entropy::new().score_logits(one.view()).unwrap(),
        array![0.0, 0.0]
    );
    assert_eq!(
        Odin::new(1000.0, 0.0)
            .unwrap()
            .score_logits(one.view())
            .unwrap(),
        array![-1.0, -1.0]
    );
    let generalized = Gen::new(0.1, 1).unwrap().score_logits(one.view()).unwrap();
    assert_eq!(generalized[0], generalized[1]);
    let energy = Energy::default().score_logits(one.view()).unwrap();
    assert!((energy[0] + 3.0).abs() < 1e-6 && (energy[1] - 2.0).abs() < 1e-6);
    // Equal logits: MSP −1/K, entropy ln K.
    let equal = array![[0.5_f32, 0.5, 0.5, 0.5]];
    assert!((Mls::msp().score_logits(equal.view()).unwrap()[0] + 0.25).abs() < 1e-6);
    let h = Entropy::new().score_logits(equal.view()).unwrap()[0];
    assert!((h - 4.0_f32.ln()).abs() < 1e-5, "{h}");

    // RMDS on one class scores every input 0.
    let features = Array2::from_shape_fn((30, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
    let queries = array![[0.0_f32, 0.0, 0.0], [100.0, -50.0, 3.0]];
    let rmds = Rmds::new()
        .fit_features(features.view(), Array1::zeros(30).view())
        .unwrap();
    for s in rmds.score_features(queries.view()).unwrap() {
        assert!(s.abs() < 1e-3, "{s}");
    }
    // Mahalanobis on identical features scores every input 0.
    let same = Array2::from_elem((10, 3), 2.0_f32);
    let maha = Mahalanobis::new()
        .fit_features(same.view(), Array1::zeros(10).view())
        .unwrap();
    assert_eq!(
        maha.score_features(queries.view()).unwrap(),
        array![0.0, 0.0]
    );
    // ViM on identical features: an error, or an α of rounding size's
    // inverse (documented as useless).
    let vim = Vim::new(PrincipalDims::Count(1))
        .unwrap()
        .with_head(Array2::eye(3), Array1::zeros(3))
        .unwrap()
        .fit_features(same.view(), Array1::zeros(10).view());
    if let Ok(vim) = vim {
        assert!(vim.alpha() > 1e6, "{}", vim.alpha());
    }
}
