//! Detector files: every fitted detector saved and loaded scores bit for
//! bit as before (through precomputed features and through a model), with
//! its calibration; bad files (truncated, corrupt, another kind, a newer
//! version, missing / misshaped / NaN arrays) are errors naming the file;
//! a model that does not match the file is refused at attach.

mod common;

use std::path::{Path, PathBuf};

use common::detector_file::rewrite;
use ndarray::{Array1, Array2, Array4, ArrayView4};
use oodkit::calibration::Calibrated;
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::file::{FORMAT_VERSION, describe};
use oodkit::detectors::{
    Aggregation, AnyDetector, Detector, Dice, Energy, Entropy, Fdbd, FdbdNormalizer,
    FeatureDetector, FittedDetector, FittedFeatures, FittedGram, FittedKnn, FittedMahalanobis,
    FittedShaped, FittedShe, FittedVim, Gen, Gmm, GradNorm, Gram, InputPerturbation, Knn,
    Mahalanobis, Mls, Nci, NnGuide, Odin, Persist, PrincipalDims, Rectification, Residual, Rmds,
    ScoreFeatures, ScoreLogits, Shaped, She, Vim, Vra,
};
use oodkit::model::{LayerId, Model, Shaping, from_fn_with_features};
use oodkit::{Batch, Error};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const WIDTH: usize = 6;
const HIDDEN: usize = 4;
const CLASSES: usize = 3;

/// The head of the test network: logits = hidden · Wᵀ + b, class c read
/// off hidden unit c.
fn head() -> (Array2<f32>, Array1<f32>) {
    let w = Array2::from_shape_fn(
        (CLASSES, HIDDEN),
        |(c, j)| {
            if c == j { 2.0 } else { 0.1 * j as f32 }
        },
    );
    (w, Array1::from(vec![0.1, -0.2, 0.3]))
}

/// A network on inputs (N, 1, 1, WIDTH): layer "input" (the pixels),
/// layer "hidden" (a ReLU of the first HIDDEN pixels mixed a little),
/// logits by an affine head on "hidden".
fn network() -> impl Model + Send + Sync + Clone {
    let (w, b) = head();
    let (w2, b2) = (w.clone(), b.clone());
    from_fn_with_features(["input", "hidden"], move |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let input = x.to_shape((n, WIDTH))?.to_owned();
        let proj = Array2::from_shape_fn((WIDTH, HIDDEN), |(i, j)| {
            if i == j {
                1.0
            } else {
                0.05 * ((i + j) % 3) as f32
            }
        });
        let hidden = input.dot(&proj).mapv(|v| v.max(0.0));
        let logits = hidden.dot(&w2.t()) + &b2;
        Ok((vec![input, hidden], logits))
    })
    .with_head(w, b)
    .expect("a valid head")
}

/// `n` labelled inputs of three classes, centred apart.
fn data(n: usize, seed: u64) -> OodDataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Array1<i64> = (0..n).map(|i| (i % CLASSES) as i64).collect();
    let images = Array4::from_shape_fn((n, 1, 1, WIDTH), |(i, _, _, j)| {
        let on = if j as i64 == labels[i] { 1.5 } else { 0.0 };
        on + rng.random::<f32>() * 0.6
    });
    OodDataset::from_arrays(images, labels).expect("a valid dataset")
}

fn batches(ds: &OodDataset) -> oodkit::datasets::Prepared<'_> {
    ds.prepare(&PrepareConfig::new(16)).expect("batches")
}

/// A fresh path in a temporary directory kept for the test.
fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Saves, loads, and checks the loaded detector scores `data` bit for bit
/// as `fitted` does through `model`.
fn round_trip_through_model<F>(fitted: F, model: &(dyn Model + Send + Sync), name: &str)
where
    F: Persist + FittedDetector + Clone,
{
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, &format!("{name}.oodkit"));
    fitted.save(&path).unwrap();
    let loaded = F::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let test = data(40, 99);
    let before = fitted.score(model, &batches(&test)).unwrap();
    let after = loaded.score(model, &batches(&test)).unwrap();
    assert_eq!(
        before
            .scores
            .iter()
            .map(|s| s.to_bits())
            .collect::<Vec<_>>(),
        after.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
        "{name}: scores after load differ"
    );
    assert_eq!(before.logits, after.logits, "{name}");
    assert_eq!(describe(&path).unwrap().kind, fitted.kind(), "{name}");
}

fn bits(scores: &Array1<f32>) -> Vec<u32> {
    scores.iter().map(|s| s.to_bits()).collect()
}

/// Fits `detector` through the network on labelled data and round-trips
/// it; then its one-layer state on precomputed features.
fn feature_round_trip<D>(detector: D, name: &str)
where
    D: FeatureDetector,
    D::Fitted: Persist + Clone + PartialEq,
    FittedFeatures<D::Fitted>: Persist,
{
    let model = network();
    let fit = data(90, 1);
    let fitted = detector
        .clone()
        .fit(&model, Some(&batches(&fit)))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_fitted();
    round_trip_through_model(fitted, &model, name);

    // Precomputed features: the state alone.
    let features = Array2::from_shape_fn((80, WIDTH), |(i, j)| {
        ((i * 7 + j * 5) % 13) as f32 / 3.0 + (i % CLASSES) as f32
    });
    let labels: Array1<i64> = (0..80).map(|i| (i % CLASSES) as i64).collect();
    let state = detector
        .with_layers([0])
        .unwrap()
        .fit_features(features.view(), labels.view())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "state.oodkit");
    state.save(&path).unwrap();
    let loaded = D::Fitted::load(&path).unwrap_or_else(|e| panic!("{name} state: {e}"));
    assert!(loaded == state, "{name}: the loaded state differs");
    let queries = features.mapv(|v| v * 1.1 - 0.3);
    assert_eq!(
        bits(&state.score_features(queries.view()).unwrap()),
        bits(&loaded.score_features(queries.view()).unwrap()),
        "{name}"
    );
    // A bare state is no fit through a model (it names no layer).
    let err = FittedFeatures::<D::Fitted>::load(&path).unwrap_err();
    assert!(matches!(err, Error::WrongFile { .. }), "{name}: {err}");
}

#[test]
fn mahalanobis_round_trips() {
    feature_round_trip(Mahalanobis::new(), "Mahalanobis");
}

#[test]
fn rmds_round_trips() {
    feature_round_trip(Rmds::new(), "RMDS");
}

#[test]
fn knn_round_trips() {
    feature_round_trip(Knn::new(5).unwrap(), "KNN");
}

#[test]
fn vim_round_trips() {
    let vim = Vim::new(PrincipalDims::Count(2))
        .unwrap()
        .with_layers([-2])
        .unwrap();
    let model = network();
    let fitted = vim
        .fit(&model, Some(&batches(&data(90, 1))))
        .unwrap()
        .into_fitted();
    round_trip_through_model(fitted, &model, "ViM");
    // On precomputed features, with the head given.
    let (w, b) = head();
    let features = Array2::from_shape_fn((60, HIDDEN), |(i, j)| ((i * 3 + j * 7) % 11) as f32);
    let state = Vim::new(PrincipalDims::Count(2))
        .unwrap()
        .with_head(w, b)
        .unwrap()
        .fit_features(features.view(), Array1::zeros(60).view())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "vim.oodkit");
    state.save(&path).unwrap();
    let loaded = FittedVim::load(&path).unwrap();
    assert_eq!(loaded, state);
    assert_eq!(loaded.alpha().to_bits(), state.alpha().to_bits());
}

#[test]
fn she_round_trips() {
    feature_round_trip(She::new(), "SHE");
}

#[test]
fn gram_round_trips() {
    feature_round_trip(Gram::new(1..=4, 0.05).unwrap(), "Gram");
}

/// Fits a detector that reads the last layer through the network (on the
/// layer feeding the head) and round-trips it; then its state fitted on
/// precomputed features with the head given.
fn head_round_trip<D>(detector: D, with_head: D, name: &str)
where
    D: FeatureDetector,
    D::Fitted: Persist + Clone + PartialEq,
    FittedFeatures<D::Fitted>: Persist,
{
    let model = network();
    let fitted = detector
        .fit(&model, Some(&batches(&data(90, 1))))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_fitted();
    round_trip_through_model(fitted, &model, name);
    let features = Array2::from_shape_fn((80, HIDDEN), |(i, j)| {
        ((i * 7 + j * 5) % 13) as f32 / 3.0 + if j == i % CLASSES { 2.0 } else { 0.0 }
    });
    let labels: Array1<i64> = (0..80).map(|i| (i % CLASSES) as i64).collect();
    let state = with_head
        .fit_features(features.view(), labels.view())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "state.oodkit");
    state.save(&path).unwrap();
    let loaded = D::Fitted::load(&path).unwrap_or_else(|e| panic!("{name} state: {e}"));
    assert!(loaded == state, "{name}: the loaded state differs");
    let queries = features.mapv(|v| v * 1.1 - 0.3);
    assert_eq!(
        bits(&state.score_features(queries.view()).unwrap()),
        bits(&loaded.score_features(queries.view()).unwrap()),
        "{name}"
    );
}

#[test]
fn openood_detectors_round_trip() {
    let (w, b) = head();
    macro_rules! both {
        ($detector:expr, $name:expr) => {
            head_round_trip(
                $detector,
                $detector.with_head(w.clone(), b.clone()).unwrap(),
                $name,
            )
        };
    }
    both!(Dice::new(0.7).unwrap(), "DICE");
    both!(Vra::default(), "VRA");
    both!(
        Vra::new(0.2, 0.8)
            .unwrap()
            .with_rectification(Rectification::Piecewise { gamma: 0.3 })
            .unwrap(),
        "VRA-P"
    );
    both!(Fdbd::default(), "fDBD");
    both!(
        Fdbd::new(FdbdNormalizer::FeatureNorm),
        "fDBD (feature norm)"
    );
    both!(Nci::new(0.01).unwrap(), "NCI");
    both!(NnGuide::new(3, 0.5).unwrap(), "NNGuide");
    both!(GradNorm::new(), "GradNorm");
    both!(Residual::new(PrincipalDims::Count(2)).unwrap(), "Residual");
    feature_round_trip(Gmm::new(1e-3).unwrap(), "GMM");
}

#[test]
fn multi_layer_fits_with_every_aggregation_and_a_step_round_trip() {
    let model = network();
    let fit = data(90, 1);
    for aggregation in [
        Aggregation::StdNormalized,
        Aggregation::MeanNormalized,
        Aggregation::Fisher,
    ] {
        let knn = Knn::new(3)
            .unwrap()
            .with_layers(["input", "hidden"])
            .unwrap()
            .with_aggregation(aggregation);
        let fitted = knn.fit(&model, Some(&batches(&fit))).unwrap().into_fitted();
        assert!(fitted.aggregator().is_some());
        round_trip_through_model(fitted, &model, &format!("KNN {aggregation:?}"));
    }
    // The input step is kept (scoring with it needs gradients, so compare
    // the parameters).
    let step = InputPerturbation::new(1000.0, 0.0014).unwrap();
    let she = She::new().with_input_perturbation(step);
    // The step needs input gradients: the fixture network gives them.
    let with_gradient = common::fixture_net::FixtureNet::default();
    let fitted = she
        .fit(&with_gradient, Some(&batches(&fit)))
        .unwrap()
        .into_fitted();
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "she.oodkit");
    fitted.save(&path).unwrap();
    let loaded = FittedFeatures::<FittedShe>::load(&path).unwrap();
    assert_eq!(loaded.perturbation(), Some(step));
    assert_eq!(loaded.layers(), fitted.layers());
    assert_eq!(loaded.expects(), fitted.expects());
}

#[test]
fn logit_detectors_round_trip_with_their_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let logits = Array2::from_shape_fn((20, 5), |(i, j)| ((i * 3 + j * 11) % 7) as f32 - 2.5);
    fn check<D: Persist + ScoreLogits + PartialEq + std::fmt::Debug>(
        d: D,
        path: &Path,
        logits: &Array2<f32>,
    ) {
        d.save(path).unwrap();
        let loaded = D::load(path).unwrap();
        assert_eq!(loaded, d);
        assert_eq!(
            bits(&loaded.score_logits(logits.view()).unwrap()),
            bits(&d.score_logits(logits.view()).unwrap())
        );
    }
    let path = temp_path(&dir, "d.oodkit");
    check(Mls::new(), &path, &logits);
    check(Mls::msp(), &path, &logits);
    assert_eq!(describe(&path).unwrap().kind, "MSP");
    check(Energy::new(0.37).unwrap(), &path, &logits);
    check(Entropy::new(), &path, &logits);
    check(Gen::new(0.1, 3).unwrap(), &path, &logits);
    check(Odin::new(1000.0, 0.0014).unwrap(), &path, &logits);
    // A shaped detector keeps its shaping, and scores alike through a model.
    let model = network();
    let react = Shaped::react(Energy::default(), 0.9)
        .unwrap()
        .fit(&model, Some(&batches(&data(30, 2))))
        .unwrap()
        .into_fitted();
    for shaped in [
        react,
        FittedShaped::new(Energy::default(), Shaping::ash(0.5).unwrap()).unwrap(),
    ] {
        round_trip_through_model(shaped, &model, "shaped energy");
    }
    let scaled = FittedShaped::new(Mls::new(), Shaping::scale(0.25).unwrap()).unwrap();
    round_trip_through_model(scaled, &model, "shaped MLS");
    let shaped_path = temp_path(&dir, "shaped.oodkit");
    react.save(&shaped_path).unwrap();
    assert_eq!(FittedShaped::<Energy>::load(&shaped_path).unwrap(), react);
    // ReAct fits nothing without fit data.
    let err = Shaped::react(Energy::default(), 0.9)
        .unwrap()
        .fit(&model, None)
        .unwrap_err();
    assert!(err.to_string().contains("ReAct"), "{err}");
    assert!(Shaped::react(Energy::default(), 0.0).is_err());
    assert!(describe(&shaped_path).unwrap().shaped);
    // The plain loader refuses the shaped file (its scores differ), and
    // the shaped loader a plain one.
    assert!(matches!(
        Energy::load(&shaped_path),
        Err(Error::WrongFile { .. })
    ));
    Energy::default().save(&path).unwrap();
    assert!(matches!(
        FittedShaped::<Energy>::load(&path),
        Err(Error::WrongFile { .. })
    ));
}

#[test]
fn calibration_saves_and_loads_with_the_detector() {
    let model = network();
    let dir = tempfile::tempdir().unwrap();
    let calibration_data = data(60, 3);
    let knn = Knn::new(3)
        .unwrap()
        .fit(&model, Some(&batches(&data(90, 1))))
        .unwrap()
        .calibrate(&batches(&calibration_data), 0.1)
        .unwrap();
    let path = temp_path(&dir, "knn.oodkit");
    knn.fitted().save(&path).unwrap();
    let info = describe(&path).unwrap();
    assert!(info.calibrated && info.kind == "KNN");
    let loaded = Calibrated::<FittedFeatures<FittedKnn>>::load(&path)
        .unwrap()
        .attach(&model)
        .unwrap();
    assert_eq!(loaded.fitted().alpha(), 0.1);
    assert_eq!(loaded.fitted().calibration(), knn.fitted().calibration());
    let test = data(30, 4);
    assert_eq!(
        loaded.verdicts(&batches(&test)).unwrap(),
        knn.verdicts(&batches(&test)).unwrap()
    );
    // The detector alone loads from a calibrated file too.
    FittedFeatures::<FittedKnn>::load(&path).unwrap();
    // A logit detector, calibrated through the model.
    let mls = Mls::new()
        .fit(&model, None)
        .unwrap()
        .calibrate(&batches(&calibration_data), 0.2)
        .unwrap();
    mls.fitted().save(&path).unwrap();
    let loaded = Calibrated::<Mls>::load(&path).unwrap();
    assert_eq!(loaded.expects(), mls.fitted().expects());
    assert_eq!(loaded.threshold(), mls.fitted().threshold());
    // An uncalibrated file is no calibrated detector.
    Mls::new().save(&path).unwrap();
    assert!(matches!(
        Calibrated::<Mls>::load(&path),
        Err(Error::WrongFile { .. })
    ));
}

#[test]
fn a_model_that_does_not_match_the_file_is_refused_at_attach() {
    let model = network();
    let fitted = Mahalanobis::new()
        .with_layers(["hidden"])
        .unwrap()
        .fit(&model, Some(&batches(&data(60, 1))))
        .unwrap()
        .into_fitted();
    // No layer of that name.
    let other = from_fn_with_features(["features"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, WIDTH))?.to_owned();
        Ok((
            vec![f.clone()],
            f.slice(ndarray::s![.., ..CLASSES]).to_owned(),
        ))
    });
    let err = fitted.clone().attach(&other).unwrap_err();
    assert!(err.to_string().contains("hidden"), "{err}");
    // The layer is there but of another width.
    let wide = from_fn_with_features(["hidden"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, WIDTH))?.to_owned();
        Ok((
            vec![f.clone()],
            f.slice(ndarray::s![.., ..CLASSES]).to_owned(),
        ))
    });
    let err = fitted.clone().attach(&wide).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // Of the right width but with another number of classes.
    let classes = from_fn_with_features(["hidden"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, WIDTH))?.to_owned();
        Ok((
            vec![f.slice(ndarray::s![.., ..HIDDEN]).to_owned()],
            f.clone(),
        ))
    });
    let err = fitted.clone().attach(&classes).unwrap_err();
    assert!(err.to_string().contains(&format!("{CLASSES}")), "{err}");
    fitted.attach(&model).unwrap();
    // A calibrated logit detector knows the classes too.
    let mls = Mls::new()
        .fit(&model, None)
        .unwrap()
        .calibrate(&batches(&data(30, 2)), 0.2)
        .unwrap()
        .into_fitted();
    assert!(mls.attach(&classes).is_err());
}

/// A saved KNN file's bytes, its header JSON and its arrays.
fn knn_file(dir: &tempfile::TempDir) -> (PathBuf, Vec<u8>) {
    let features = Array2::from_shape_fn((30, 3), |(i, j)| ((i + j * 4) % 9) as f32);
    let state = Knn::new(2)
        .unwrap()
        .fit_features(features.view(), Array1::zeros(30).view())
        .unwrap();
    let path = temp_path(dir, "knn.oodkit");
    state.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn corrupt_message(path: &Path) -> String {
    match FittedKnn::load(path) {
        Err(e @ Error::CorruptFile { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            message
        }
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
}

#[test]
fn truncated_or_damaged_files_are_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = knn_file(&dir);
    let cut = temp_path(&dir, "cut.oodkit");
    for len in 0..bytes.len() {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        assert!(
            matches!(FittedKnn::load(&cut), Err(Error::CorruptFile { .. })),
            "cut at {len}"
        );
    }
    // A bit flipped in every byte in turn: the checksums of the arrays and
    // of the header make each an error.
    let mut rng = StdRng::seed_from_u64(7);
    let queries = Array2::from_shape_fn((4, 3), |(i, j)| (i * j) as f32);
    let expected = FittedKnn::load(&path)
        .unwrap()
        .score_features(queries.view())
        .unwrap();
    let mut loaded = 0;
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1 << rng.random_range(0..8);
        std::fs::write(&cut, &damaged).unwrap();
        match FittedKnn::load(&cut) {
            Ok(index) => {
                loaded += 1;
                assert_eq!(
                    index.score_features(queries.view()).unwrap(),
                    expected,
                    "flip at {at}"
                );
            }
            Err(e) => assert!(matches!(e, Error::CorruptFile { .. }), "flip at {at}: {e}"),
        }
    }
    assert_eq!(loaded, 0, "{loaded} of {} flips loaded", bytes.len());
    // Bytes cut out, inserted or overwritten anywhere, several at once.
    for _ in 0..300 {
        let mut damaged = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..damaged.len());
            match rng.random_range(0..3) {
                0 => {
                    damaged.remove(at);
                }
                1 => damaged.insert(at, rng.random()),
                _ => damaged[at] = rng.random(),
            }
        }
        std::fs::write(&cut, &damaged).unwrap();
        if let Ok(index) = FittedKnn::load(&cut) {
            assert_eq!(index.score_features(queries.view()).unwrap(), expected);
        }
    }
    // A header claiming 60 MB: refused before it is parsed.
    let mut big = 60_000_000_u64.to_le_bytes().to_vec();
    big.resize(60_000_008, b' ');
    std::fs::write(&cut, &big).unwrap();
    assert!(corrupt_message(&cut).contains("header claims 60000000 bytes"));
    // Missing, a directory, and not safetensors at all.
    assert!(matches!(
        FittedKnn::load(dir.path().join("none.oodkit")),
        Err(Error::MissingFile { .. })
    ));
    assert!(FittedKnn::load(dir.path()).is_err());
    std::fs::write(&cut, b"{\"not\": \"a detector\"}").unwrap();
    corrupt_message(&cut);
    assert!(path.is_file());
}

#[test]
fn bad_headers_and_arrays_are_errors_that_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = knn_file(&dir);
    FittedKnn::load(&path).unwrap();

    rewrite(&path, &bytes, |h, _| {
        h["format_version"] = (FORMAT_VERSION + 1).into()
    });
    let err = FittedKnn::load(&path).unwrap_err();
    assert!(
        matches!(err, Error::WrongFile { .. }) && err.to_string().contains("newer oodkit"),
        "{err}"
    );

    rewrite(&path, &bytes, |h, _| h["format"] = "something else".into());
    assert!(corrupt_message(&path).contains("format"));

    rewrite(&path, &bytes, |_, arrays| {
        arrays.retain(|a| a.0 != "layer.0.sq_norms")
    });
    assert!(corrupt_message(&path).contains("layer.0.sq_norms"));

    rewrite(&path, &bytes, |_, arrays| {
        let a = arrays
            .iter_mut()
            .find(|a| a.0 == "layer.0.features")
            .unwrap();
        a.2 = vec![45, 2];
    });
    assert!(corrupt_message(&path).contains("shape"));

    rewrite(&path, &bytes, |_, arrays| {
        let a = arrays
            .iter_mut()
            .find(|a| a.0 == "layer.0.features")
            .unwrap();
        a.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(corrupt_message(&path).contains("not finite"));

    rewrite(&path, &bytes, |h, _| {
        h["detector"]["states"][0]["k"] = 1000.into()
    });
    assert!(corrupt_message(&path).contains("k = 1000"));

    rewrite(&path, &bytes, |h, _| h["detector"]["widths"][0] = 5.into());
    assert!(corrupt_message(&path).contains("shape"));

    // Another kind, through the typed loaders.
    std::fs::write(&path, &bytes).unwrap();
    for err in [
        Mls::load(&path).unwrap_err(),
        FittedMahalanobis::load(&path).unwrap_err(),
        FittedFeatures::<FittedGram>::load(&path).unwrap_err(),
        Calibrated::<Mls>::load(&path).unwrap_err(),
    ] {
        assert!(matches!(err, Error::WrongFile { .. }), "{err}");
        assert!(err.to_string().contains("KNN"), "{err}");
    }
    // Absurd stored parameters go through the constructors' checks.
    Energy::default().save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    rewrite(&path, &bytes, |h, _| {
        h["detector"]["temperature"] = (-1.0).into()
    });
    assert!(matches!(
        Energy::load(&path),
        Err(Error::CorruptFile { .. })
    ));
}

#[test]
fn saving_replaces_a_file_whole_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "d.oodkit");
    std::fs::write(&path, vec![0_u8; 10_000]).unwrap();
    Energy::new(2.0).unwrap().save(&path).unwrap();
    assert_eq!(Energy::load(&path).unwrap().temperature(), 2.0);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // Into a folder that does not exist: an error naming it.
    let err = Mls::new()
        .save(dir.path().join("no/such/dir/d.oodkit"))
        .unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");
}

#[test]
fn a_fit_through_a_model_records_the_input_shape_and_classes() {
    let model = network();
    let fitted = She::new()
        .fit(&model, Some(&batches(&data(30, 1))))
        .unwrap()
        .into_fitted();
    let shape = fitted.expects().unwrap();
    assert_eq!(shape.input, [1, 1, WIDTH]);
    assert_eq!(shape.classes, CLASSES);
    assert_eq!(fitted.layers(), &[LayerId::Index(-2)]);
    // Scoring a batch of inputs shaped otherwise goes to the model, which
    // refuses it here.
    let wrong = Batch::new(Array4::zeros((2, 1, 2, WIDTH)));
    assert!(fitted.score_batch(&model, wrong).is_err());
}

#[test]
fn files_that_hold_no_detector_are_errors_naming_them() {
    // Every registered kind loads through AnyDetector: tests/conformance.rs.
    let dir = tempfile::tempdir().unwrap();
    let junk = temp_path(&dir, "junk.oodkit");
    std::fs::write(&junk, b"not a detector").unwrap();
    let err = AnyDetector::load(&junk).unwrap_err();
    assert!(err.to_string().contains("junk.oodkit"), "{err}");
    let err = AnyDetector::load(temp_path(&dir, "absent.oodkit")).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
}

#[test]
fn stored_values_the_constructors_refuse_do_not_load() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1");
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "edited.oodkit");
    let corrupt = |what: &str| {
        let err = AnyDetector::load(&path).unwrap_err();
        assert!(matches!(err, Error::CorruptFile { .. }), "{what}: {err}");
        err.to_string()
    };

    // A ReAct threshold below 0 (constructors refuse it too).
    let bytes = std::fs::read(fixtures.join("energy.react.oodkit")).unwrap();
    rewrite(&path, &bytes, |h, _| {
        h["shaping"]["threshold"] = (-0.5).into()
    });
    assert!(corrupt("ReAct").contains("ReAct threshold"));
    let react = Shaping::React { threshold: -0.5 };
    assert!(Shaped::new(Energy::default(), react).is_err());
    assert!(
        Shaped::new(
            Energy::default(),
            Shaping::React {
                threshold: f32::NAN
            }
        )
        .is_err()
    );

    // ViM's last layer with no class.
    let bytes = std::fs::read(fixtures.join("vim.oodkit")).unwrap();
    rewrite(&path, &bytes, |_, arrays| {
        for (name, _, shape, data) in arrays.iter_mut() {
            if name.ends_with("head_weights") || name.ends_with("head_bias") {
                shape[0] = 0;
                data.clear();
            }
        }
    });
    assert!(corrupt("ViM").contains("last layer"));

    // An aggregator scale of 0 or below.
    let bytes = std::fs::read(fixtures.join("mahalanobis.layers.std.oodkit")).unwrap();
    rewrite(&path, &bytes, |_, arrays| {
        let scale = arrays
            .iter_mut()
            .find(|a| a.0 == "aggregator.scale")
            .unwrap();
        scale.3[..8].copy_from_slice(&(-2.0_f64).to_le_bytes());
    });
    assert!(corrupt("aggregator").contains("not positive"));
}

#[test]
fn mean_normalised_aggregation_refuses_layers_whose_scores_are_not_positive() {
    // Energy-like scores are negative: dividing by their mean would flip
    // the layer's order.
    let model = network();
    let fit = data(90, 1);
    let dice = Dice::default()
        .with_layers(["hidden", "hidden"])
        .unwrap()
        .with_aggregation(Aggregation::MeanNormalized);
    let err = dice.fit(&model, Some(&batches(&fit))).unwrap_err();
    assert!(err.to_string().contains("std_normalized"), "{err}");
    let knn = Knn::new(3)
        .unwrap()
        .with_layers(["input", "hidden"])
        .unwrap()
        .with_aggregation(Aggregation::MeanNormalized);
    knn.fit(&model, Some(&batches(&fit))).unwrap();
}
