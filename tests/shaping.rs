//! Activation shaping (ReAct, ASH-S, SCALE): hand-worked values, ReAct's
//! fitted threshold, the burn path against the ndarray one, composition with
//! the logit detectors, and the Gaussian-blob problem.
#![cfg(feature = "burn")]

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{Array1, Array2, Array4, ArrayView4, array};
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{Detector, Energy, FittedDetector, Mls, Odin, ScoreLogits};
use oodkit::metrics::auroc;
use oodkit::model::{
    BurnClassifier, BurnModel, FeatureModel, LayerId, Model, Shaping, from_fn_with_features,
};
use oodkit::{Error, Result};

fn close(found: &[f32], expected: &[f32]) {
    assert_eq!(found.len(), expected.len());
    for (f, e) in found.iter().zip(expected) {
        assert!(
            (f - e).abs() <= 1e-5 * e.abs().max(1.0),
            "{found:?} vs {expected:?}"
        );
    }
}

#[test]
fn shaping_by_hand() {
    let features = array![
        [4.0_f32, 1.0, 3.0, 2.0],
        [0.0, 0.0, 0.0, 0.0],
        [5.0, 5.0, 5.0, 1.0]
    ];
    let react = Shaping::React { threshold: 2.5 }.shape_features(features.view());
    close(react.row(0).as_slice().unwrap(), &[2.5, 1.0, 2.5, 2.0]);

    // Percentile 0.5 of 4 values: the 3rd smallest is the threshold.
    let ash = Shaping::ash(0.5).unwrap().shape_features(features.view());
    let s = (10.0_f32 / 7.0).exp();
    close(
        ash.row(0).as_slice().unwrap(),
        &[4.0 * s, 0.0, 3.0 * s, 0.0],
    );
    // All zero (a dead ReLU layer): stays zero, no NaN.
    close(ash.row(1).as_slice().unwrap(), &[0.0; 4]);
    // Ties at the threshold are all kept: 5 + 5 + 5 of 16.
    let t = (16.0_f32 / 15.0).exp();
    close(
        ash.row(2).as_slice().unwrap(),
        &[5.0 * t, 5.0 * t, 5.0 * t, 0.0],
    );

    let scale = Shaping::scale(0.5).unwrap().shape_features(features.view());
    close(
        scale.row(0).as_slice().unwrap(),
        &[4.0 * s, s, 3.0 * s, 2.0 * s],
    );

    // Through a linear head: shaped · W + b.
    let w = array![[1.0_f32], [0.0], [0.0], [-1.0]];
    let logits = Shaping::React { threshold: 2.5 }
        .logits(features.view(), w.view(), array![0.5_f32].view())
        .unwrap();
    close(&[logits[[0, 0]]], &[2.5 - 2.0 + 0.5]);
    let err = Shaping::ash(0.5)
        .unwrap()
        .logits(features.view(), w.t(), array![0.0_f32].view())
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");

    for p in [-0.1, 1.0, f32::NAN] {
        assert!(
            Shaping::ash(p).is_err() && Shaping::scale(p).is_err(),
            "{p}"
        );
    }
}

/// A feature model whose penultimate activations are the image's pixels.
fn pixels_as_features() -> impl Model + FeatureModel {
    from_fn_with_features(["pixels"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let flat = x.to_shape((n, x.len() / n))?.to_owned();
        Ok((vec![flat.clone()], flat))
    })
}

#[test]
fn react_fits_its_threshold_at_the_quantile_of_the_fit_activations() {
    // 25 images of 1x2x2 pixels: the values 0..100.
    let inputs = Array4::from_shape_fn((25, 1, 2, 2), |(i, _, y, x)| (i * 4 + y * 2 + x) as f32);
    let data = OodDataset::from_arrays(inputs, Array1::zeros(25)).unwrap();
    let batches = data.prepare(&PrepareConfig::new(7)).unwrap();
    let model = pixels_as_features();
    // The 90% quantile of 0..100 (nearest rank): the 90th value, 89.
    let react = Shaping::react(&model, Some(&batches), 0.9).unwrap();
    assert_eq!(react, Shaping::React { threshold: 89.0 });
    assert_eq!(
        Shaping::react(&model, Some(&batches), 1.0).unwrap(),
        Shaping::React { threshold: 99.0 }
    );
    let err = Shaping::react(&model, None, 0.9).unwrap_err();
    assert!(err.to_string().contains("fit data"), "{err}");
    assert!(Shaping::react(&model, Some(&batches), 0.0).is_err());
}

/// Flatten, Linear(inputs → hidden), ReLU, Linear(hidden → classes): the
/// ReLU output is the penultimate layer.
#[derive(Module, Debug)]
struct TwoLayer {
    hidden: Linear,
    out: Linear,
    relu: Relu,
}

impl TwoLayer {
    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.relu.forward(self.hidden.forward(x.flatten(1, 3)))
    }

    /// The head's weights (hidden, classes) and bias as ndarray.
    fn head_weights(&self) -> (Array2<f32>, Array1<f32>) {
        let w = self.out.weight.val();
        let [d, k] = w.dims();
        let w = Array2::from_shape_vec((d, k), w.try_into_vec_as::<f32>().unwrap()).unwrap();
        let b = self
            .out
            .bias
            .as_ref()
            .unwrap()
            .val()
            .try_into_vec_as::<f32>()
            .unwrap();
        (w, Array1::from(b))
    }
}

impl BurnClassifier for TwoLayer {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.out.forward(self.features(x))
    }

    fn feature_layers(&self) -> Vec<String> {
        vec!["hidden".into()]
    }

    fn forward_features(&self, x: Tensor<4>) -> (Vec<Tensor<2>>, Tensor<2>) {
        let f = self.features(x);
        (vec![f.clone()], self.out.forward(f))
    }

    fn head(&self, penultimate: Tensor<2>) -> Option<Tensor<2>> {
        Some(self.out.forward(penultimate))
    }
}

fn random_two_layer(device: &Device) -> TwoLayer {
    device.seed(5);
    TwoLayer {
        hidden: LinearConfig::new(16, 32).init(device),
        out: LinearConfig::new(32, 4).init(device),
        relu: Relu,
    }
}

#[test]
fn the_burn_path_shapes_like_the_ndarray_path() -> Result<()> {
    let device = Device::flex();
    let net = random_two_layer(&device);
    let (w, b) = net.head_weights();
    let x = Array4::from_shape_fn((6, 1, 4, 4), |(i, _, y, z)| {
        ((i * 7 + y * 3 + z) % 11) as f32 / 5.0 - 1.0
    });
    let plain = BurnModel::new(net, &device);
    let features = plain
        .forward_features(x.view(), &[LayerId::Index(-2)])?
        .features
        .remove(0);
    for shaping in [
        Shaping::React { threshold: 0.3 },
        Shaping::ash(0.75)?,
        Shaping::scale(0.5)?,
    ] {
        let shaped = plain.clone().with_shaping(shaping)?;
        let got = shaped.forward(x.view())?;
        let expected = shaping.logits(features.view(), w.view(), b.view())?;
        let gap = (&got - &expected)
            .iter()
            .fold(0.0_f32, |m, d| m.max(d.abs()));
        let size = expected.iter().fold(0.0_f32, |m, d| m.max(d.abs()));
        assert!(gap <= 1e-4 * size.max(1.0), "{shaping:?}: {gap} of {size}");
        // Composes with the logit detectors, ODIN's input gradient included.
        let energy = Energy::default().fit(&shaped, None)?;
        let data = OodDataset::from_arrays(x.clone(), Array1::zeros(6))?;
        let scores = energy.score(&data)?.scores;
        assert_eq!(scores, Energy::default().score_logits(got.view())?);
        let odin = Odin::new(10.0, 0.01)?.fit(&shaped, None)?;
        assert!(odin.score(&data)?.scores.iter().all(|s| s.is_finite()));
    }
    let twice = plain
        .clone()
        .with_shaping(Shaping::ash(0.9)?)?
        .with_shaping(Shaping::scale(0.85)?)
        .unwrap_err();
    assert!(
        twice.to_string().contains("one shaping at a time"),
        "{twice}"
    );
    Ok(())
}

/// A module without a head: shaping it is an error when it runs.
#[derive(Module, Debug)]
struct Headless {
    linear: Linear,
}

impl BurnClassifier for Headless {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.linear.forward(x.flatten(1, 3))
    }

    fn feature_layers(&self) -> Vec<String> {
        vec!["input".into()]
    }

    fn forward_features(&self, x: Tensor<4>) -> (Vec<Tensor<2>>, Tensor<2>) {
        let flat: Tensor<2> = x.flatten(1, 3);
        (vec![flat.clone()], self.linear.forward(flat))
    }
}

#[test]
fn shaping_a_module_without_a_head_is_an_error() {
    let device = Device::flex();
    let model = BurnModel::new(
        Headless {
            linear: LinearConfig::new(4, 2).init(&device),
        },
        &device,
    )
    .with_shaping(Shaping::React { threshold: 1.0 })
    .unwrap();
    let err = model
        .forward(Array4::zeros((1, 1, 2, 2)).view())
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("head"), "{err}");
}

/// A 2-16-2 ReLU network with hand-set weights (the detectors test's blob
/// network, in burn): hidden unit k responds to ±(x + y) − b_k.
fn blob_network(device: &Device) -> TwoLayer {
    let signs: Vec<f32> = (0..16).map(|k| if k < 8 { 1.0 } else { -1.0 }).collect();
    let w1: Vec<f32> = (0..2).flat_map(|_| signs.clone()).collect();
    let b1: Vec<f32> = (0..16).map(|k| -((k % 8) as f32) * 0.25).collect();
    let w2: Vec<f32> = (0..16)
        .flat_map(|k| if k < 8 { [0.25, -0.25] } else { [-0.25, 0.25] })
        .collect();
    let tensor2 = |v: Vec<f32>, shape: [usize; 2]| {
        Param::from_tensor(Tensor::<2>::from_data(TensorData::new(v, shape), device))
    };
    let tensor1 = |v: Vec<f32>| {
        let n = v.len();
        Param::from_tensor(Tensor::<1>::from_data(TensorData::new(v, [n]), device))
    };
    let mut hidden = LinearConfig::new(2, 16).init(device);
    hidden.weight = tensor2(w1, [2, 16]);
    hidden.bias = Some(tensor1(b1));
    let mut out = LinearConfig::new(16, 2).init(device);
    out.weight = tensor2(w2, [16, 2]);
    out.bias = Some(tensor1(vec![0.0, 0.0]));
    TwoLayer {
        hidden,
        out,
        relu: Relu,
    }
}

/// `n` points around each centre, deterministic, as 1x1x2 images.
fn blobs(centres: &[(f32, f32)], n: usize) -> OodDataset {
    let mut values = Vec::new();
    for &(cx, cy) in centres {
        for i in 0..n {
            // A low-discrepancy spread of radius up to 2.
            let (r, a) = (
                2.0 * ((i as f32 + 0.5) / n as f32).sqrt(),
                i as f32 * 2.399_963,
            );
            values.extend([cx + r * a.cos(), cy + r * a.sin()]);
        }
    }
    let count = values.len() / 2;
    OodDataset::from_arrays(
        Array4::from_shape_vec((count, 1, 1, 2), values).unwrap(),
        Array1::zeros(count),
    )
    .unwrap()
}

#[test]
fn gaussian_blobs_shaped_detectors_separate_id_from_ood() -> Result<()> {
    let device = Device::flex();
    let model = BurnModel::new(blob_network(&device), &device);
    let ds_in = blobs(&[(4.0, 4.0), (-4.0, -4.0)], 300);
    let ds_out = blobs(&[(4.0, -4.0), (-4.0, 4.0)], 300);
    let react = Shaping::react(&model, Some(&ds_in), 0.9)?;
    let auroc_of = |detector: Box<dyn ScoreLogits>, shaped: &BurnModel<TwoLayer>| -> Result<f64> {
        let detector = detector.attach(shaped.clone())?;
        auroc(
            &detector.score(&ds_in)?.scores,
            &detector.score(&ds_out)?.scores,
        )
    };
    for shaping in [react, Shaping::scale(0.85)?, Shaping::ash(0.9)?] {
        let shaped = model.clone().with_shaping(shaping)?;
        // ASH and SCALE multiply the activations by exp(Σ all / Σ kept):
        // the papers pair them with logit-magnitude scores (energy, max
        // logit), whose ID/OOD gap the scaling widens.
        let mut detectors: Vec<(&str, Box<dyn ScoreLogits>)> = vec![
            ("MLS", Box::new(Mls::new())),
            ("Energy", Box::new(Energy::default())),
        ];
        // ReAct only clips, so the softmax keeps its meaning; with SCALE the
        // two-class softmax saturates on ID and OOD alike (AUROC 0.87 here).
        if matches!(shaping, Shaping::React { .. }) {
            detectors.push(("MSP", Box::new(Mls::msp())));
        }
        for (name, detector) in detectors {
            let auc = auroc_of(detector, &shaped)?;
            assert!(auc >= 0.95, "{name} with {shaping:?}: AUROC {auc}");
        }
    }
    Ok(())
}
