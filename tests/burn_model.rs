//! The burn adapter: BurnModel returns what the burn module computes, on
//! batches and on datasets that do not divide into whole batches.
#![cfg(feature = "burn")]

use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{Array1, Array2, Array4, Axis, s};
use oodkit::Error;
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{Detector, Mls};
use oodkit::model::{BurnModel, FeatureModel, InputGradient, LayerId, Model};
use oodkit::nets::{ToyConvnet, ToyConvnetConfig};

/// `n` MNIST-shaped images with varied, deterministic pixels in [0, 1].
fn images(n: usize) -> Array4<f32> {
    Array4::from_shape_fn((n, 1, 28, 28), |(i, _, y, x)| {
        ((i * 131 + y * 29 + x * 7) % 97) as f32 / 96.0
    })
}

fn toy_convnet(device: &Device) -> ToyConvnet {
    device.seed(11);
    ToyConvnetConfig::new(1, 28, 10).init(device).unwrap()
}

/// The logits computed by calling the module itself on burn tensors.
fn direct_logits(module: &ToyConvnet, inputs: &Array4<f32>, device: &Device) -> Array2<f32> {
    let shape: [usize; 4] = inputs.dim().into();
    let data = TensorData::new(inputs.iter().copied().collect::<Vec<f32>>(), shape);
    let logits = module.forward(Tensor::from_data(data, device));
    let [rows, cols] = logits.dims();
    let values = logits.into_data().try_to_vec::<f32>().unwrap();
    Array2::from_shape_vec((rows, cols), values).unwrap()
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    (a - b).iter().fold(0.0_f32, |m, d| m.max(d.abs()))
}

#[test]
fn burn_model_returns_the_modules_logits() {
    let device = Device::flex();
    let module = toy_convnet(&device);
    let inputs = images(16);
    let expected = direct_logits(&module, &inputs, &device);
    assert_eq!(expected.shape(), &[16, 10]);

    let model = BurnModel::new(module, &device);
    let by_view = model.forward(inputs.view()).unwrap();
    let by_value = model.forward_owned(inputs.clone()).unwrap();
    assert!(
        max_abs_diff(&by_view, &expected) <= 1e-6,
        "{}",
        max_abs_diff(&by_view, &expected)
    );
    assert_eq!(by_view, by_value);

    // A sliced (offset) batch and a non-standard layout give the same rows.
    let tail = inputs.clone().slice_move(s![4.., .., .., ..]);
    assert!(
        max_abs_diff(
            &model.forward_owned(tail).unwrap(),
            &expected.slice(s![4.., ..]).to_owned()
        ) <= 1e-6
    );
    // The images stored transposed, then viewed back in their own order.
    let mut back = inputs
        .view()
        .permuted_axes([0, 1, 3, 2])
        .as_standard_layout()
        .into_owned();
    back.swap_axes(2, 3);
    assert_eq!(back, inputs);
    assert!(!back.is_standard_layout());
    assert!(max_abs_diff(&model.forward_owned(back).unwrap(), &expected) <= 1e-6);
}

#[test]
fn scoring_a_dataset_in_uneven_batches_matches_the_module() {
    let device = Device::flex();
    let module = toy_convnet(&device);
    let inputs = images(37);
    let expected = direct_logits(&module, &inputs, &device);
    let ds = OodDataset::from_arrays(inputs, Array1::from_iter(0..37)).unwrap();

    let model = BurnModel::new(module, &device);
    let mls = Mls::new().fit(&model, None).unwrap();
    // 37 = 16 + 16 + 5
    let out = mls
        .score(&ds.prepare(&PrepareConfig::new(16)).unwrap())
        .unwrap();
    let diff = max_abs_diff(&out.logits, &expected);
    assert!(diff <= 1e-6, "max |difference| {diff}");
    let max_logit = expected.map_axis(Axis(1), |row| row.fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
    for (score, top) in out.scores.iter().zip(&max_logit) {
        assert!((score + top).abs() <= 1e-6);
    }
    assert_eq!(out.labels.unwrap(), Array1::from_iter(0..37));
}

#[test]
fn dropout_is_off_when_scoring_a_module_built_for_training() {
    // An autodiff device and dropout 0.9: in training mode two passes would
    // differ; the adapter runs the module in inference mode.
    let device = Device::flex().autodiff();
    let module = ToyConvnetConfig::new(1, 28, 10)
        .with_dropout(0.9)
        .init(&device)
        .unwrap();
    let model = BurnModel::new(module, &device);
    let inputs = images(8);
    let first = model.forward(inputs.view()).unwrap();
    assert_eq!(first, model.forward(inputs.view()).unwrap());
}

#[test]
fn feature_layers_come_back_by_index_and_name() {
    let device = Device::flex();
    let model = BurnModel::new(toy_convnet(&device), &device);
    assert_eq!(
        model.layer_names(),
        vec!["pool1", "pool2", "flatten", "logits"]
    );
    let inputs = images(5);
    let out = model
        .forward_features(
            inputs.view(),
            &[LayerId::from(-2), "pool1".into(), (-1).into()],
        )
        .unwrap();
    assert_eq!(out.features[0].shape(), &[5, 1600]);
    assert_eq!(out.features[1].shape(), &[5, 32]);
    assert_eq!(out.features[2], out.logits);
    assert!(max_abs_diff(&out.logits, &model.forward(inputs.view()).unwrap()) <= 1e-6);
    // The penultimate layer is post-ReLU, pooled: never negative.
    assert!(out.features[0].iter().all(|&v| v >= 0.0));

    for bad in [LayerId::from(4), LayerId::from(-5), LayerId::from("conv9")] {
        let err = model
            .forward_features(inputs.view(), std::slice::from_ref(&bad))
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { name: "layer", .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains("pool1"), "{err}");
    }
}

#[test]
fn inputs_the_network_cannot_take_are_errors_not_panics() {
    let device = Device::flex();
    let model = BurnModel::new(toy_convnet(&device), &device);
    // Three channels into a one-channel network.
    let err = model
        .forward(Array4::zeros((2, 3, 28, 28)).view())
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(err.to_string().contains("[2, 3, 28, 28]"), "{err}");
}

#[test]
fn the_toy_convnet_config_is_checked() {
    let device = Device::flex();
    for config in [
        ToyConvnetConfig::new(0, 28, 10),
        ToyConvnetConfig::new(1, 28, 0),
        ToyConvnetConfig::new(1, 8, 10),
        ToyConvnetConfig::new(1, 28, 10).with_dropout(1.0),
    ] {
        let err = config.init(&device).unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { .. }),
            "{config:?}: {err}"
        );
    }
    // CIFAR-shaped inputs: 3x32x32 -> 64 * 6 * 6 features.
    let model = BurnModel::new(
        ToyConvnetConfig::new(3, 32, 10).init(&device).unwrap(),
        &device,
    );
    let out = model
        .forward_features(Array4::zeros((2, 3, 32, 32)).view(), &[(-2).into()])
        .unwrap();
    assert_eq!(out.features[0].shape(), &[2, 64 * 6 * 6]);
}

/// Σ logits ⊙ g for one image, by the model's forward pass.
fn weighted_logits(model: &BurnModel<ToyConvnet>, x: &Array4<f32>, g: &Array2<f32>) -> f64 {
    let logits = model.forward(x.view()).unwrap();
    (&logits * g).iter().map(|&v| f64::from(v)).sum()
}

#[test]
fn the_input_gradient_matches_finite_differences() {
    let device = Device::flex();
    let model = BurnModel::new(toy_convnet(&device), &device);
    let x = images(2);
    let g = Array2::from_shape_fn((2, 10), |(i, k)| ((i * 3 + k) % 5) as f32 - 2.0);
    let gradient = model.input_gradient(x.view(), g.view()).unwrap();
    assert_eq!(gradient.shape(), x.shape());
    // Central differences on pixels in the middle of the image, with a step
    // small enough not to cross the ReLU and max-pool kinks.
    let h = 1e-3_f32;
    let mut compared = 0;
    for (i, y, xx) in [
        (0, 14, 14),
        (0, 10, 17),
        (1, 13, 12),
        (1, 16, 9),
        (0, 20, 20),
    ] {
        let mut up = x.clone();
        up[[i, 0, y, xx]] += h;
        let mut down = x.clone();
        down[[i, 0, y, xx]] -= h;
        let numeric = (weighted_logits(&model, &up, &g) - weighted_logits(&model, &down, &g))
            / (2.0 * f64::from(h));
        let analytic = f64::from(gradient[[i, 0, y, xx]]);
        assert!(
            (numeric - analytic).abs() <= 0.1 * analytic.abs() + 0.005,
            "pixel {:?}: finite difference {numeric}, autodiff {analytic}",
            (i, y, xx)
        );
        compared += 1;
    }
    assert_eq!(compared, 5);
    assert!(gradient.iter().any(|&v| v != 0.0));
    // A logits_grad of the wrong width is an error.
    let err = model
        .input_gradient(x.view(), Array2::zeros((2, 3)).view())
        .unwrap_err();
    assert!(err.to_string().contains("logits_grad"), "{err}");
}
