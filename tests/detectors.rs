//! MLS / MSP / Energy / Entropy / GEN / ODIN on hand-worked logits, the Detector
//! flow on closure models, the error cases, and the Gaussian-blob problem
//! with a known answer.

use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, Axis, array};
use oodkit::datasets::{BatchSource, OodDataset, PrepareConfig};
use oodkit::detectors::{
    Detector, Energy, Entropy, FittedDetector, Gen, Mls, Odin, OutputActivation, ScoreLogits,
    ScoreOutput,
};
use oodkit::metrics::auroc;
use oodkit::model::{Model, from_fn, from_fn_with_gradient};
use oodkit::{Batch, Error};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn assert_close(found: &[f32], expected: &[f64], tol: f64) {
    assert_eq!(found.len(), expected.len(), "{found:?} vs {expected:?}");
    for (i, (&f, &e)) in found.iter().zip(expected).enumerate() {
        assert!(
            (f as f64 - e).abs() <= tol,
            "score {i}: found {f}, expected {e} (all: {found:?})"
        );
    }
}

#[test]
fn energy_is_minus_t_logsumexp_of_logits_over_t() {
    let ln = |x: f64| x.ln();
    let logits = array![[0.0_f32, 0.0], [3.0, 1.0], [5.0, 5.0], [7.0, -1000.0]];
    let scores = Energy::default().score_logits(logits.view()).unwrap();
    let expected = [
        -ln(2.0),
        -ln(3f64.exp() + 1f64.exp()),
        -(5.0 + ln(2.0)),
        -7.0,
    ];
    assert_close(scores.as_slice().unwrap(), &expected, 1e-5);
    // T = 10: −10 ln(e^0.3 + e^0.1).
    let scores = Energy::new(10.0)
        .unwrap()
        .score_logits(logits.view())
        .unwrap();
    assert_close(
        &scores.as_slice().unwrap()[1..2],
        &[-10.0 * ln(0.3f64.exp() + 0.1f64.exp())],
        1e-5,
    );
    // One class: minus its logit; logits of 1000 do not overflow.
    let one = Energy::default()
        .score_logits(array![[4.0_f32], [1000.0]].view())
        .unwrap();
    assert_close(one.as_slice().unwrap(), &[-4.0, -1000.0], 1e-3);
    let infinite = Energy::default()
        .score_logits(array![[f32::INFINITY, 0.0]].view())
        .unwrap();
    assert_eq!(infinite[0], f32::NEG_INFINITY);
    for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            Energy::new(t),
            Err(Error::InvalidParameter {
                name: "temperature",
                ..
            })
        ));
    }
}

#[test]
fn entropy_is_that_of_the_softmax() {
    // p = (0.75, 0.25): −(0.75 ln 0.75 + 0.25 ln 0.25).
    let h = -(0.75_f64 * 0.75_f64.ln() + 0.25 * 0.25_f64.ln());
    let logits = array![
        [3.0_f32.ln(), 0.0, f32::NEG_INFINITY],
        [1.0, 1.0, 1.0],
        [900.0, -900.0, 0.0]
    ];
    let scores = Entropy::new().score_logits(logits.view()).unwrap();
    assert_close(scores.as_slice().unwrap(), &[h, 3f64.ln(), 0.0], 1e-6);
    let edge = array![[2.0_f32], [f32::INFINITY], [f32::INFINITY]];
    let edge = Entropy::new().score_logits(edge.view()).unwrap();
    assert_eq!(edge.to_vec(), vec![0.0, 0.0, 0.0]);
}

#[test]
fn gen_sums_the_generalized_entropy_of_the_top_probabilities() {
    let term = |p: f64, gamma: f64| (p * (1.0 - p)).powf(gamma);
    // Ties: three equal classes.
    let tied = Gen::default()
        .score_logits(array![[2.0_f32, 2.0, 2.0]].view())
        .unwrap();
    assert_close(
        tied.as_slice().unwrap(),
        &[3.0 * term(1.0 / 3.0, 0.1)],
        1e-5,
    );
    // p = (0.5, 0.3, 0.2) from logits ln p; top 2 with γ = 0.5, and top 100
    // clipped to the three classes.
    let logits = array![[0.3_f32.ln(), 0.5_f32.ln(), 0.2_f32.ln()]];
    let top2 = Gen::new(0.5, 2)
        .unwrap()
        .score_logits(logits.view())
        .unwrap();
    assert_close(
        top2.as_slice().unwrap(),
        &[term(0.5, 0.5) + term(0.3, 0.5)],
        1e-5,
    );
    let all = Gen::default().score_logits(logits.view()).unwrap();
    let expected = term(0.5, 0.1) + term(0.3, 0.1) + term(0.2, 0.1);
    assert_close(all.as_slice().unwrap(), &[expected], 1e-5);
    // A certain prediction scores 0; one class too.
    let certain = Gen::default()
        .score_logits(array![[1000.0_f32, 0.0], [1.0, f32::NEG_INFINITY]].view())
        .unwrap();
    assert_close(certain.as_slice().unwrap(), &[0.0, 0.0], 1e-6);
    assert!(matches!(
        Gen::new(1.5, 10),
        Err(Error::InvalidParameter { name: "gamma", .. })
    ));
    assert!(matches!(
        Gen::new(0.1, 0),
        Err(Error::InvalidParameter { name: "top_k", .. })
    ));
}

#[test]
fn every_logit_detector_rejects_nan_and_zero_classes() {
    let detectors: Vec<Box<dyn ScoreLogits>> = vec![
        Box::new(Energy::default()),
        Box::new(Entropy::new()),
        Box::new(Gen::default()),
    ];
    for detector in &detectors {
        let err = detector
            .score_logits(array![[0.0_f32, 1.0], [f32::NAN, 0.0]].view())
            .unwrap_err();
        assert!(matches!(err, Error::NotANumber { index: 1, .. }), "{err}");
        let err = detector
            .score_logits(Array2::<f32>::zeros((3, 0)).view())
            .unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    }
}

#[test]
fn mls_is_minus_the_largest_logit() {
    let logits = array![
        [1.0_f32, 2.0, 3.0],
        [0.0, 0.0, 0.0],
        [5.0, 5.0, 1.0],
        [1000.0, 0.0, -1000.0],
        [-7.5, -2.25, -9.0],
    ];
    let scores = Mls::new().score_logits(logits.view()).unwrap();
    assert_eq!(scores.to_vec(), vec![-3.0, 0.0, -5.0, -1000.0, 2.25]);
}

#[test]
fn msp_is_minus_the_largest_softmax_probability() {
    let logits = array![
        [1.0_f32, 2.0, 3.0],
        [0.0, 0.0, 0.0],
        [5.0, 5.0, 1.0],
        [1000.0, 0.0, -1000.0],
        [1000.0, 1000.0, 0.0],
        [-1000.0, -1001.0, -1100.0],
    ];
    let e = std::f64::consts::E;
    let expected = [
        // e^3 / (e + e^2 + e^3) = 1 / (e^-2 + e^-1 + 1)
        -1.0 / (e.powi(-2) + e.powi(-1) + 1.0),
        -1.0 / 3.0,
        // a tie at the top: 1 / (1 + 1 + e^-4)
        -1.0 / (2.0 + e.powi(-4)),
        // huge logits: no overflow, the top class takes everything
        -1.0,
        -0.5,
        // huge negative logits: no underflow to 0/0
        -1.0 / (1.0 + e.powi(-1) + e.powi(-100)),
    ];
    let scores = Mls::msp().score_logits(logits.view()).unwrap();
    assert_close(scores.as_slice().unwrap(), &expected, 1e-6);
    assert_eq!(
        Mls::with_activation(OutputActivation::Softmax)
            .score_logits(logits.view())
            .unwrap(),
        scores
    );
}

#[test]
fn infinite_logits_take_their_limit() {
    let inf = f32::INFINITY;
    let logits = array![
        [inf, 0.0, 1.0],
        [inf, inf, 0.0],
        [-inf, -inf, -inf],
        [-inf, 2.0, -inf]
    ];
    let msp = Mls::msp().score_logits(logits.view()).unwrap();
    assert_eq!(msp.to_vec(), vec![-1.0, -0.5, -1.0 / 3.0, -1.0]);
    let mls = Mls::new().score_logits(logits.view()).unwrap();
    assert_eq!(mls.to_vec(), vec![-inf, -inf, inf, -2.0]);
}

#[test]
fn nan_logits_and_zero_classes_are_errors() {
    let logits = array![[1.0_f32, 2.0], [f32::NAN, 0.0], [0.0, 1.0]];
    for detector in [Mls::new(), Mls::msp()] {
        let err = detector.score_logits(logits.view()).unwrap_err();
        assert!(matches!(err, Error::NotANumber { index: 1, .. }), "{err}");
    }
    let err = Mls::new()
        .score_logits(Array2::<f32>::zeros((3, 0)).view())
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // No rows is not an error: no scores.
    assert_eq!(
        Mls::new()
            .score_logits(Array2::<f32>::zeros((0, 4)).view())
            .unwrap()
            .len(),
        0
    );
}

/// `n` 1x1x2 "images" (a, b); the model's logits are (a, b, a + b).
fn pairs(n: usize) -> OodDataset {
    let inputs = Array4::from_shape_fn((n, 1, 1, 2), |(i, _, _, j)| {
        // Distinct, unordered values so a reordering would show.
        ((i * 37 + j * 11) % 101) as f32 / 10.0 - 5.0
    });
    OodDataset::from_arrays(inputs, Array1::from_iter((0..n as i64).map(|i| i % 3))).unwrap()
}

fn sum_model() -> impl Model {
    from_fn(|x: ArrayView4<f32>| {
        let a = x.index_axis(Axis(1), 0).index_axis(Axis(1), 0).to_owned();
        let sum = a.sum_axis(Axis(1)).insert_axis(Axis(1));
        Ok(ndarray::concatenate![Axis(1), a, sum])
    })
}

#[test]
fn scoring_a_dataset_follows_the_python_flow() {
    let ds = pairs(50);
    let model = sum_model();
    let mls = Mls::new().fit(&model, None).unwrap();
    assert_eq!(mls.name(), "MLS");
    let out = mls.score(&ds).unwrap();
    assert_eq!(out.len(), 50);
    for (i, img) in ds.inputs().outer_iter().enumerate() {
        let (a, b) = (img[[0, 0, 0]], img[[0, 0, 1]]);
        assert_eq!(out.logits.row(i).to_vec(), vec![a, b, a + b]);
        assert_eq!(out.scores[i], -a.max(b).max(a + b));
    }
    assert_eq!(out.labels.as_ref(), Some(ds.labels()));
    // Predictions are the argmax of the logits.
    let first = out.logits.row(0);
    let argmax = (0..3).fold(0, |best, k| if first[k] > first[best] { k } else { best });
    assert_eq!(out.predictions()[0], argmax as i64);
}

#[test]
fn batch_size_does_not_change_scores_or_their_order() {
    let ds = pairs(300);
    let model = sum_model();
    let msp = Mls::msp().fit(&model, None).unwrap();
    let expected = msp
        .fitted()
        .score_logits(model.forward(ds.inputs().view()).unwrap().view())
        .unwrap();
    for batch_size in [1, 7, 128] {
        let prepared = ds.prepare(&PrepareConfig::new(batch_size)).unwrap();
        let out = msp.score(&prepared).unwrap();
        assert_eq!(out.scores, expected, "batch size {batch_size}");
        assert_eq!(out.labels.as_ref(), Some(ds.labels()));
    }
    // Without labels in the batches there are none in the output.
    let unlabelled = ds
        .prepare(&PrepareConfig::new(64).with_labels(false))
        .unwrap();
    assert_eq!(msp.score(&unlabelled).unwrap().labels, None);
}

#[test]
fn scoring_uses_the_prepared_preprocessing_and_single_batches() {
    let ds = pairs(10);
    let model = sum_model();
    let mls = Mls::new().fit(&model, None).unwrap();
    let doubled = ds
        .prepare(&PrepareConfig::new(4).preprocess(|mut b| {
            b.inputs *= 2.0;
            Ok(b)
        }))
        .unwrap();
    let plain = mls.score(&ds).unwrap().scores;
    assert_eq!(mls.score(&doubled).unwrap().scores, plain * 2.0);

    let batch = Batch::new(ds.inputs().clone());
    let single = mls.score(&batch).unwrap();
    assert_eq!(single.scores, mls.score(&ds).unwrap().scores);
    assert_eq!(single.labels, None);
    assert_eq!(mls.score_batch(batch).unwrap().scores, single.scores);
}

#[test]
fn fitted_state_is_a_value_that_attaches_to_a_model_again() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let ds = pairs(12);
    let model = sum_model();
    let scorer = Odin::new(2.0, 0.0).unwrap().fit(&model, None).unwrap();
    send_sync(&scorer);
    let scores = scorer.score(&ds).unwrap().scores;
    // Detached, the fitted state holds no model; attached to the same
    // network again, it scores the same.
    let fitted: Odin = scorer.into_fitted();
    send_sync(&fitted);
    let again = fitted.attach(sum_model()).unwrap();
    assert_eq!(again.score(&ds).unwrap().scores, scores);
    assert_eq!(again.name(), "ODIN");
    // Through the fitted state and a model given at each call, too.
    assert_eq!(fitted.score(&model, &ds).unwrap().scores, scores);
}

/// Scores `data` with MLS fitted on `model`.
fn mls_scores(
    model: impl Model + Send + Sync,
    data: &dyn BatchSource,
) -> Result<ScoreOutput, Error> {
    let mls = Mls::new().fit(model, None)?;
    mls.score(data)
}

#[test]
fn bad_model_outputs_are_errors_with_shapes() {
    let ds = pairs(20);
    // One row short.
    let short = from_fn(|x: ArrayView4<f32>| Ok(Array2::zeros((x.shape()[0] - 1, 3))));
    let err = mls_scores(short, &ds).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("(19, 3)"), "{err}");

    // Zero classes.
    let empty = from_fn(|x: ArrayView4<f32>| Ok(Array2::zeros((x.shape()[0], 0))));
    assert!(matches!(
        mls_scores(empty, &ds).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));

    // A width that changes between batches: 3 classes, then 4.
    // (Models are shared between threads: state goes in an atomic.)
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let drifting = from_fn(|x: ArrayView4<f32>| {
        let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Ok(Array2::zeros((x.shape()[0], 2 + call)))
    });
    let err = mls_scores(drifting, &ds.prepare(&PrepareConfig::new(8)).unwrap()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("batch 1"), "{err}");

    // An error from the model itself comes back as it is.
    let failing = from_fn(|_: ArrayView4<f32>| Err(Error::custom("engine offline")));
    assert_eq!(
        mls_scores(failing, &ds).unwrap_err().to_string(),
        "engine offline"
    );
}

#[test]
fn nan_in_logits_names_the_sample_in_the_whole_dataset() {
    let ds = pairs(40);
    // NaN logits for the input whose first value is the 23rd input's.
    let poison = ds.inputs()[[23, 0, 0, 0]];
    let model = from_fn(move |x: ArrayView4<f32>| {
        Ok(Array2::from_shape_fn((x.shape()[0], 2), |(i, _)| {
            if x[[i, 0, 0, 0]] == poison {
                f32::NAN
            } else {
                1.0
            }
        }))
    });
    assert_eq!(
        ds.inputs()
            .outer_iter()
            .filter(|img| img[[0, 0, 0]] == poison)
            .count(),
        1
    );
    let mls = Mls::new().fit(&model, None).unwrap();
    let err = mls
        .score(&ds.prepare(&PrepareConfig::new(10)).unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::NotANumber { index: 23, .. }), "{err}");
}

/// A normal sample (Box-Muller), so the test needs no distribution crate.
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// `n` points of each blob, as 1x1x2 images; label = blob index.
fn blobs(centres: &[(f32, f32)], n: usize, rng: &mut StdRng) -> OodDataset {
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for (k, &(cx, cy)) in centres.iter().enumerate() {
        for _ in 0..n {
            values.push(cx + normal(rng));
            values.push(cy + normal(rng));
            labels.push(k as i64);
        }
    }
    let inputs = Array4::from_shape_vec((labels.len(), 1, 1, 2), values).unwrap();
    OodDataset::from_arrays(inputs, Array1::from(labels)).unwrap()
}

/// The Python toolkit's toy problem: ID = blobs at (4, 4) and (-4, -4), OOD
/// = blobs at (4, -4) and (-4, 4). A 2-16-2 ReLU network with hand-set
/// weights separates the ID classes along x + y, so its logits are large on
/// ID points and near zero on OOD points, which sit on its decision boundary.
#[test]
fn gaussian_blobs_every_logit_detector_separates_id_from_ood() {
    let mut rng = StdRng::seed_from_u64(7);
    let ds_in = blobs(&[(4.0, 4.0), (-4.0, -4.0)], 500, &mut rng);
    let ds_out = blobs(&[(4.0, -4.0), (-4.0, 4.0)], 500, &mut rng);

    // Hidden unit k responds to s * (x + y) - b_k: s = +1 for k < 8, -1 after.
    let hidden_bias: Vec<f32> = (0..16).map(|k| (k % 8) as f32 * 0.25).collect();
    let unit = |k: usize| if k < 8 { (1.0, 0) } else { (-1.0, 1) };
    let biases = hidden_bias.clone();
    let forward = move |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let mut logits = Array2::zeros((n, 2));
        for i in 0..n {
            let s = x[[i, 0, 0, 0]] + x[[i, 0, 0, 1]];
            for (k, b) in biases.iter().enumerate() {
                let (sign, class) = unit(k);
                let h = (sign * s - b).max(0.0);
                logits[[i, class]] += 0.25 * h;
                logits[[i, 1 - class]] -= 0.25 * h;
            }
        }
        Ok(logits)
    };
    // Its input gradient (for ODIN): both pixels get d(Σ g·logits)/ds.
    let gradient = move |x: ArrayView4<f32>, g: ArrayView2<f32>| {
        let mut grad = Array4::zeros(x.raw_dim());
        for i in 0..x.shape()[0] {
            let s = x[[i, 0, 0, 0]] + x[[i, 0, 0, 1]];
            let mut d = 0.0;
            for (k, b) in hidden_bias.iter().enumerate() {
                let (sign, class) = unit(k);
                if sign * s - b > 0.0 {
                    d += 0.25 * sign * (g[[i, class]] - g[[i, 1 - class]]);
                }
            }
            grad[[i, 0, 0, 0]] = d;
            grad[[i, 0, 0, 1]] = d;
        }
        Ok(grad)
    };
    let model = from_fn_with_gradient(forward, gradient);

    // Detectors on logits learn nothing: a list of any of them attaches to
    // the model directly.
    let detectors: Vec<Box<dyn ScoreLogits>> = vec![
        Box::new(Mls::new()),
        Box::new(Mls::msp()),
        Box::new(Energy::default()),
        Box::new(Entropy::new()),
        Box::new(Gen::default()),
        Box::new(Odin::default()),
        Box::new(Odin::new(1.0, 0.05).unwrap()),
    ];
    for detector in detectors {
        let name = detector.name();
        let detector = detector.attach(&model).unwrap();
        let prepared_in = ds_in.prepare(&PrepareConfig::new(64).shuffle(3)).unwrap();
        let scored_in = detector.score(&prepared_in).unwrap();
        let scored_out = detector.score(&ds_out).unwrap();
        // The network classifies the ID blobs.
        let labels = scored_in.labels.clone().unwrap();
        let correct = (scored_in.predictions() - &labels)
            .iter()
            .filter(|&&d| d == 0)
            .count();
        assert!(
            correct as f64 / labels.len() as f64 > 0.99,
            "{name}: {correct} correct"
        );
        let auc = auroc(&scored_in.scores, &scored_out.scores).unwrap();
        assert!(auc >= 0.95, "{name}: AUROC {auc}");
    }
}

/// logits = x W over flattened 1x1x3 "images", with its exact input gradient
/// g Wᵀ.
fn linear_model_with_gradient() -> impl Model {
    let w = array![[1.0_f32, -2.0, 0.5], [0.3, 1.5, -1.0], [-0.7, 0.2, 2.0]];
    let (wf, wg) = (w.clone(), w);
    from_fn_with_gradient(
        move |x: ArrayView4<f32>| Ok(x.to_shape((x.shape()[0], 3))?.dot(&wf)),
        move |x: ArrayView4<f32>, g: ArrayView2<f32>| {
            Ok(g.dot(&wg.t())
                .into_shape_with_order((x.shape()[0], 1, 1, 3))?)
        },
    )
}

/// Cross-entropy of logits / t with the class `target`.
fn cross_entropy(logits: ArrayView1<f32>, t: f64, target: usize) -> f64 {
    let z: Vec<f64> = logits.iter().map(|&l| f64::from(l) / t).collect();
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    lse - z[target]
}

#[test]
fn odin_steps_against_the_finite_difference_gradient_of_its_loss() {
    let model = linear_model_with_gradient();
    let x = Array4::from_shape_vec((2, 1, 1, 3), vec![0.4, -1.2, 0.9, 2.0, 0.1, -0.5]).unwrap();
    let t = 5.0;
    let odin = Odin::new(t, 0.01).unwrap();
    let logits = model.forward(x.view()).unwrap();
    let perturbed = odin
        .step()
        .perturb(&model, x.clone(), logits.view())
        .unwrap();
    let h = 1e-3_f32;
    for i in 0..2 {
        let target = logits
            .row(i)
            .iter()
            .enumerate()
            .fold(0, |b, (k, &v)| if v > logits[[i, b]] { k } else { b });
        for j in 0..3 {
            let loss_at = |delta: f32| {
                let mut moved = x.clone();
                moved[[i, 0, 0, j]] += delta;
                let l = model.forward(moved.view()).unwrap();
                cross_entropy(l.row(i), f64::from(t), target)
            };
            let slope = (loss_at(h) - loss_at(-h)) / (2.0 * f64::from(h));
            assert!(
                slope.abs() > 1e-4,
                "a flat direction would not test the sign"
            );
            let step = perturbed[[i, 0, 0, j]] - x[[i, 0, 0, j]];
            assert!(
                (step + 0.01 * slope.signum() as f32).abs() < 1e-6,
                "sample {i} pixel {j}: step {step}, slope {slope}"
            );
        }
    }
    // The step lowers the loss, so it raises the temperature-scaled confidence.
    let scores = Odin::new(t, 0.0).unwrap();
    let before = scores.score_logits(logits.view()).unwrap();
    let after = scores
        .score_logits(model.forward(perturbed.view()).unwrap().view())
        .unwrap();
    assert!(
        before.iter().zip(&after).all(|(b, a)| a < b),
        "{before} -> {after}"
    );
}

#[test]
fn odin_without_a_step_is_msp_at_temperature_t_on_any_model() {
    let ds = pairs(20);
    let model = sum_model(); // from_fn: no input gradient
    let odin = Odin::new(2.0, 0.0).unwrap().fit(&model, None).unwrap();
    let scored = odin.score(&ds).unwrap();
    let expected: Vec<f64> = scored
        .logits
        .rows()
        .into_iter()
        .map(|row| {
            let z: Vec<f64> = row.iter().map(|&l| f64::from(l) / 2.0).collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            -1.0 / z.iter().map(|v| (v - max).exp()).sum::<f64>()
        })
        .collect();
    assert_close(scored.scores.as_slice().unwrap(), &expected, 1e-6);

    // With a step, a model without input gradients is a clear error when
    // fitted or attached, before anything is scored.
    let err = Odin::default().fit(&model, None).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let err = Odin::default().attach(&model).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("from_fn_with_gradient"), "{err}");
    for (t, e) in [
        (0.0, 0.0),
        (1.0, -1e-3),
        (f32::NAN, 0.0),
        (1.0, f32::INFINITY),
    ] {
        assert!(Odin::new(t, e).is_err(), "T {t}, ε {e}");
    }
}
