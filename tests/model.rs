//! The model traits: closures, pointers to models, feature layers.

use std::rc::Rc;
use std::sync::Arc;

use ndarray::{Array2, Array4, ArrayView4, Axis};
use oodkit::Error;
use oodkit::detectors::{Detector, Mls};
use oodkit::model::{FeatureModel, LayerId, Model, from_fn, from_fn_with_features};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn layer_ids_resolve_from_the_front_the_back_and_by_name() {
    let layers = names(&["conv", "dense", "logits"]);
    let at = |id: LayerId| id.resolve(&layers);
    assert_eq!(at(0.into()).unwrap(), 0);
    assert_eq!(at(2.into()).unwrap(), 2);
    assert_eq!(at((-1).into()).unwrap(), 2);
    assert_eq!(at((-3).into()).unwrap(), 0);
    assert_eq!(at("dense".into()).unwrap(), 1);
    for bad in [LayerId::from(3), LayerId::from(-4), LayerId::from("Dense")] {
        let err = at(bad.clone()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { name: "layer", .. }),
            "{bad}: {err}"
        );
        assert!(
            err.to_string().contains("\"conv\", \"dense\", \"logits\""),
            "{err}"
        );
    }
}

/// Activations: "sum" (N, 1) and "pixels" (N, H*W); logits (sum, -sum).
fn two_layer_model() -> impl Model + FeatureModel {
    from_fn_with_features(["sum", "pixels"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let pixels = x.to_shape((n, x.len() / n))?.to_owned();
        let sum = pixels.sum_axis(Axis(1)).insert_axis(Axis(1));
        let logits = ndarray::concatenate![Axis(1), sum, -&sum];
        Ok((vec![sum, pixels], logits))
    })
}

#[test]
fn closure_feature_models_return_the_requested_layers_in_order() {
    let model = two_layer_model();
    assert_eq!(model.layer_names(), names(&["sum", "pixels", "logits"]));
    let x = Array4::from_shape_fn((3, 1, 2, 2), |(i, _, y, x)| (i + y * 2 + x) as f32);
    let out = model
        .forward_features(x.view(), &["pixels".into(), (-1).into(), 0.into()])
        .unwrap();
    assert_eq!(out.features.len(), 3);
    assert_eq!(out.features[0].row(1).to_vec(), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(out.features[1], out.logits);
    assert_eq!(out.features[2].column(0).to_vec(), vec![6.0, 10.0, 14.0]);
    assert_eq!(model.forward(x.view()).unwrap(), out.logits);
    // Owned and borrowed calls agree.
    assert_eq!(
        model
            .forward_features_owned(x.clone(), &[(-2).into()])
            .unwrap()
            .features[0],
        out.features[0]
    );
}

#[test]
fn closure_feature_models_check_what_the_closure_returns() {
    let x = Array4::<f32>::zeros((4, 1, 1, 1));
    let missing = from_fn_with_features(["a", "b"], |x: ArrayView4<f32>| {
        Ok((
            vec![Array2::zeros((x.shape()[0], 2))],
            Array2::zeros((x.shape()[0], 2)),
        ))
    });
    let err = missing.forward_features(x.view(), &[0.into()]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                left: 2,
                right: 1,
                ..
            }
        ),
        "{err}"
    );

    let short_rows = from_fn_with_features(["a"], |x: ArrayView4<f32>| {
        Ok((
            vec![Array2::zeros((1, 2))],
            Array2::zeros((x.shape()[0], 2)),
        ))
    });
    let err = short_rows
        .forward_features(x.view(), &[0.into()])
        .unwrap_err();
    assert!(err.to_string().contains("layer \"a\""), "{err}");
}

#[test]
fn pointers_to_models_are_models_and_detectors_take_them() {
    let model = from_fn(|x: ArrayView4<f32>| Ok(Array2::from_elem((x.shape()[0], 2), 3.0)));
    let x = Array4::<f32>::zeros((2, 1, 1, 1));
    let direct = model.forward(x.view()).unwrap();
    let boxed: Box<dyn Model + Send + Sync> = Box::new(from_fn(|x: ArrayView4<f32>| {
        Ok(Array2::from_elem((x.shape()[0], 2), 3.0))
    }));
    assert_eq!(boxed.forward(x.view()).unwrap(), direct);
    let shared = Arc::new(two_layer_model());
    assert_eq!(shared.layer_names().len(), 3);
    let rc = Rc::new(model);
    assert_eq!(rc.forward_owned(x.clone()).unwrap(), direct);

    // A scorer keeps a boxed model, an Arc, or a reference.
    for mls in [Mls::new(), Mls::msp()] {
        let mls = mls.fit(Arc::clone(&shared), None).unwrap();
        assert_eq!(mls.score(&oodkit::Batch::new(x.clone())).unwrap().len(), 2);
    }
    let mls = Mls::new().fit(boxed, None).unwrap();
    assert_eq!(
        mls.score_batch(oodkit::Batch::new(x))
            .unwrap()
            .scores
            .to_vec(),
        vec![-3.0, -3.0]
    );
}
