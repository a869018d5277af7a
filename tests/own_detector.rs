//! A detector defined outside the crate (the `own_detector` example's)
//! joins the registry: fitted by name, saved, loaded back by its kind, and
//! its files checked on load like the crate's own.

mod common;

#[path = "../examples/own_detector/detector.rs"]
#[allow(dead_code)]
mod detector;

use ndarray::{Array1, Array4, ArrayView4};
use oodkit::OodDataset;
use oodkit::detectors::registry::{self, Params};
use oodkit::detectors::{AnyDetector, FeatureDetector, Persist, ScoreFeatures};
use oodkit::model::from_fn_with_features;

use detector::{FittedMeanDistance, MeanDistance, REGISTRATION};

/// Images whose 3 pixels are the features: row i is (i, 2i, -i) mod 7.
fn data(n: usize, shift: f32) -> OodDataset {
    let images = Array4::from_shape_fn((n, 1, 1, 3), |(i, _, _, j)| {
        ((i * (j + 1)) % 7) as f32 + shift
    });
    OodDataset::from_arrays(images, Array1::zeros(n)).unwrap()
}

#[test]
fn a_registered_detector_of_ones_own_fits_saves_and_loads_by_kind() {
    let model = from_fn_with_features(["pixels"], |x: ArrayView4<f32>| {
        let pixels = x.to_shape((x.shape()[0], 3))?.to_owned();
        Ok((vec![pixels.clone()], pixels))
    });
    registry::register(&REGISTRATION).unwrap();
    let err = registry::register(&REGISTRATION).unwrap_err();
    assert!(err.to_string().contains("taken"), "{err}");
    assert!(registry::all().iter().any(|r| r.kind() == detector::KIND));

    // Unknown parameters and bad values are refused as for the crate's.
    let registration = registry::find("mean-distance").unwrap();
    assert!(registration.build(&Params::new().set("k", 3.0)).is_err());
    assert!(
        registration
            .build(&Params::new().set("floor", -1.0))
            .is_err()
    );

    let fitted = registration
        .build(&Params::new())
        .unwrap()
        .fit(&model, Some(&data(70, 0.0)))
        .unwrap();
    let far = fitted.score(&model, &data(10, 50.0)).unwrap().scores;
    let near = fitted.score(&model, &data(10, 0.0)).unwrap().scores;
    assert!(far.iter().zip(&near).all(|(f, n)| f > n));

    // The hand-worked score of one feature vector: the fit features are
    // (i mod 7, 2i mod 7, 3i mod 7) for i < 70, ten full cycles, so each
    // feature's mean is 3 and its variance 4 (+ the floor).
    let state = MeanDistance::new(1e-6)
        .unwrap()
        .fit_features(
            data(70, 0.0).inputs().to_shape((70, 3)).unwrap().view(),
            Array1::zeros(70).view(),
        )
        .unwrap();
    let score = state
        .score_features(ndarray::array![[5.0_f32, 3.0, 1.0]].view())
        .unwrap()[0];
    let expected = ((4.0 + 0.0 + 4.0) / (4.0 + 1e-6_f64)).sqrt() as f32;
    assert!((score - expected).abs() < 1e-5, "{score} vs {expected}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.oodkit");
    fitted.save(&path).unwrap();
    let loaded = AnyDetector::load(&path).unwrap();
    assert_eq!(loaded.kind(), detector::KIND);
    assert_eq!(loaded.score(&model, &data(10, 50.0)).unwrap().scores, far);

    // A file whose state breaks the type's validate() does not load.
    let typed = oodkit::detectors::FittedFeatures::<FittedMeanDistance>::load(&path).unwrap();
    assert_eq!(typed.states()[0].width(), 3);
    let bytes = std::fs::read(&path).unwrap();
    common::detector_file::rewrite(&path, &bytes, |header, _| {
        header["detector"]["states"][0]["floor"] = (-1.0).into();
    });
    let err = AnyDetector::load(&path).unwrap_err();
    assert!(
        matches!(err, oodkit::Error::CorruptFile { .. }) && err.to_string().contains("floor"),
        "{err}"
    );
    // And one whose arrays disagree in length.
    common::detector_file::rewrite(&path, &bytes, |_, arrays| {
        let a = arrays
            .iter_mut()
            .find(|a| a.0 == "layer.0.inv_std")
            .unwrap();
        a.2 = vec![2];
        a.3.truncate(16);
    });
    let err = AnyDetector::load(&path).unwrap_err();
    assert!(err.to_string().contains("2 scales for 3 means"), "{err}");
}
