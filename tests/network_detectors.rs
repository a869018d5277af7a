//! The detectors that need the network itself — RankFeat and Monte Carlo
//! dropout — on the crate's burn networks: against direct computations,
//! their properties, errors on models that cannot serve them, and files.
#![cfg(feature = "burn")]

use burn::tensor::Device;
use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView4, Axis};
use oodkit::detectors::{
    AnyDetector, Detector, Entropy, FittedDetector, McDropout, McStatistic, Mls, Persist, RankFeat,
    ScoreLogits,
};
use oodkit::model::{BurnClassifier, BurnModel, MapEditing, Model, StochasticPasses, from_fn};
use oodkit::nets::{CifarResNetConfig, ToyConvnetConfig};
use oodkit::{Batch, Error};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn images(n: usize, side: usize, channels: usize, seed: u64) -> Array4<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array4::from_shape_fn((n, channels, side, side), |_| rng.random::<f32>())
}

fn lse(row: ArrayView1<f32>) -> f64 {
    let m = row.iter().map(|&v| f64::from(v)).fold(f64::MIN, f64::max);
    m + row
        .iter()
        .map(|&v| (f64::from(v) - m).exp())
        .sum::<f64>()
        .ln()
}

/// The top singular triple of `a` by power iteration on aᵀa, in f64: an
/// independent way to the rank-1 part RankFeat removes.
fn top_rank_one(a: &Array2<f64>) -> Array2<f64> {
    let mut v = Array1::from_elem(a.ncols(), 1.0) / (a.ncols() as f64).sqrt();
    for _ in 0..2000 {
        let w = a.t().dot(&a.dot(&v));
        let norm = w.dot(&w).sqrt();
        v = w / norm;
    }
    let u_sigma = a.dot(&v);
    let u = u_sigma.clone().insert_axis(Axis(1));
    u.dot(&v.insert_axis(Axis(0)))
}

#[test]
fn rankfeat_matches_a_direct_removal_through_the_network() {
    let device = Device::flex();
    for depth_or_toy in [0, 20] {
        let (model, x): (Box<dyn Model + Send + Sync>, Array4<f32>) = if depth_or_toy == 0 {
            let net = ToyConvnetConfig::new(1, 28, 5).init(&device).unwrap();
            (Box::new(BurnModel::new(net, &device)), images(3, 28, 1, 1))
        } else {
            let net = CifarResNetConfig::new(20, 10).init(&device).unwrap();
            (Box::new(BurnModel::new(net, &device)), images(3, 32, 3, 2))
        };
        let scores = RankFeat::default()
            .fit(&*model, None)
            .unwrap()
            .score(&Batch::new(x.clone()))
            .unwrap();
        // Directly: the map, minus its power-iteration rank-1 part, finished
        // by the network.
        let expected: Vec<f64> = (0..x.shape()[0])
            .map(|i| {
                let one = x.slice(ndarray::s![i..i + 1, .., .., ..]).to_owned();
                let logits = model
                    .as_map_editing()
                    .unwrap()
                    .forward_editing_map(one.view(), &|map: Array4<f32>| {
                        let (_, c, h, w) = map.dim();
                        let m = map.to_shape((c, h * w)).unwrap().mapv(f64::from);
                        let rest = &m - &top_rank_one(&m);
                        Ok(rest
                            .mapv(|v| v as f32)
                            .into_shape_with_order((1, c, h, w))
                            .unwrap())
                    })
                    .unwrap();
                -lse(logits.row(0))
            })
            .collect();
        for (s, e) in scores.scores.iter().zip(&expected) {
            assert!(
                (f64::from(*s) - e).abs() <= 1e-4 * e.abs().max(1.0),
                "{depth_or_toy}: {s} vs {e}"
            );
        }
        // The logits returned are the network's own.
        assert_eq!(scores.logits, model.forward(x.view()).unwrap());
    }
}

#[test]
fn removing_nothing_gives_the_energy_of_the_network() {
    // An edit that keeps the map: the logits are the network's.
    let device = Device::flex();
    let model = BurnModel::new(
        ToyConvnetConfig::new(1, 28, 5).init(&device).unwrap(),
        &device,
    );
    let x = images(4, 28, 1, 3);
    let kept = model.forward_editing_map(x.view(), &Ok).unwrap();
    let plain = model.forward(x.view()).unwrap();
    for (a, b) in kept.iter().zip(&plain) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0));
    }
}

#[test]
fn mc_dropout_without_dropout_is_the_softmax_entropy_and_msp() {
    let device = Device::flex();
    let net = ToyConvnetConfig::new(1, 28, 5)
        .with_dropout(0.0)
        .init(&device)
        .unwrap();
    let model = BurnModel::new(net, &device);
    let batch = || Batch::new(images(6, 28, 1, 4));
    let logits = model.forward(batch().inputs.view()).unwrap();
    for (statistic, reference) in [
        (
            McStatistic::Entropy,
            Entropy::new().score_logits(logits.view()).unwrap(),
        ),
        (
            McStatistic::Msp,
            Mls::msp().score_logits(logits.view()).unwrap(),
        ),
    ] {
        let scores = McDropout::new(5, statistic)
            .unwrap()
            .fit(&model, None)
            .unwrap()
            .score(&batch())
            .unwrap()
            .scores;
        for (s, r) in scores.iter().zip(&reference) {
            assert!((s - r).abs() < 1e-5, "{statistic:?}: {s} vs {r}");
        }
    }
}

#[test]
fn mc_dropout_averages_real_stochastic_passes() {
    let device = Device::flex();
    let net = ToyConvnetConfig::new(1, 28, 5).init(&device).unwrap();
    let model = BurnModel::new(net, &device);
    let x = images(4, 28, 1, 5);
    let passes = model.forward_stochastic(x.view(), 12, 7).unwrap();
    assert_eq!(passes.len(), 12);
    assert!(passes[0] != passes[1], "dropout is active");
    // The same seed, the same masks.
    assert_eq!(passes, model.forward_stochastic(x.view(), 12, 7).unwrap());
    // The network's shared-trunk passes are its single passes, seed by seed.
    let tensor = || oodkit::model::array_to_tensor(x.clone(), &device);
    let shared = model.module().stochastic_passes(tensor(), &[3, 4]).unwrap();
    for (pass, seed) in shared.into_iter().zip([3, 4]) {
        let single = model.module().stochastic_logits(tensor(), seed).unwrap();
        let (a, b) = (
            oodkit::model::tensor_to_array(pass).unwrap(),
            oodkit::model::tensor_to_array(single).unwrap(),
        );
        assert!((&a - &b).iter().all(|d| d.abs() < 1e-5), "seed {seed}");
    }
    // The detector's score is the entropy of the passes' mean softmax.
    let mut mean = Array2::<f64>::zeros((4, 5));
    for p in &passes {
        for (mut m, row) in mean.rows_mut().into_iter().zip(p.rows()) {
            let z = lse(row);
            m.zip_mut_with(&row, |m, &v| *m += (f64::from(v) - z).exp() / 12.0);
        }
    }
    let expected: Vec<f64> = mean
        .rows()
        .into_iter()
        .map(|p| -p.iter().map(|&v| v * v.ln()).sum::<f64>())
        .collect();
    let scores = McDropout::new(12, McStatistic::Entropy)
        .unwrap()
        .with_seed(7)
        .fit(&model, None)
        .unwrap()
        .score(&Batch::new(x.clone()))
        .unwrap()
        .scores;
    for (s, e) in scores.iter().zip(&expected) {
        assert!((f64::from(*s) - e).abs() < 1e-5, "{s} vs {e}");
    }
    // Inverted dropout before a linear layer: each pass's logits are an
    // unbiased estimate of the network's inference logits, so the mean of n
    // passes lies within a few standard errors of them. The bound comes from
    // the passes' own spread (the weights are random, so no fixed tolerance
    // fits every draw); 6 standard errors over 20 logits fail by chance about
    // once in 10^7 runs.
    let n = 3000;
    let many = model.forward_stochastic(x.view(), n, 1).unwrap();
    let plain = model.forward(x.view()).unwrap();
    let mut mean = Array2::<f64>::zeros((4, 5));
    let mut square = Array2::<f64>::zeros((4, 5));
    for p in &many {
        mean.zip_mut_with(p, |m, &v| *m += f64::from(v) / n as f64);
        square.zip_mut_with(p, |s, &v| *s += f64::from(v).powi(2) / n as f64);
    }
    for ((m, s), p) in mean.iter().zip(&square).zip(&plain) {
        let standard_error = ((s - m * m).max(0.0) / (n - 1) as f64).sqrt();
        let gap = (m - f64::from(*p)).abs();
        assert!(
            gap <= 6.0 * standard_error + 1e-6,
            "mean {m} vs inference {p}: {gap} is over 6 standard errors ({standard_error})"
        );
    }
}

#[test]
fn models_that_cannot_serve_them_are_errors_saying_why() {
    let closure = from_fn(|x: ArrayView4<f32>| Ok(x.to_shape((x.shape()[0], 4))?.to_owned()));
    for err in [
        RankFeat::default().fit(&closure, None).unwrap_err(),
        McDropout::default().fit(&closure, None).unwrap_err(),
        RankFeat::default().attach(&closure).unwrap_err(),
    ] {
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("BurnModel"), "{err}");
    }
    // The CIFAR ResNets have no dropout.
    let device = Device::flex();
    let resnet = BurnModel::new(
        CifarResNetConfig::new(20, 10).init(&device).unwrap(),
        &device,
    );
    // The CIFAR ResNets have no dropout: refused when fitted, not later.
    let err = McDropout::default().fit(&resnet, None).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported { .. }) && err.to_string().contains("dropout"),
        "{err}"
    );
    // RankFeat edits their last feature map.
    RankFeat::default().fit(&resnet, None).unwrap();
    // Precomputed logits, and absurd parameters.
    let logits = Array2::zeros((2, 3));
    assert!(matches!(
        RankFeat::default().score_logits(logits.view()),
        Err(Error::Unsupported { .. })
    ));
    assert!(McDropout::default().score_logits(logits.view()).is_err());
    assert!(RankFeat::new(0.0).is_err() && RankFeat::new(f32::NAN).is_err());
    assert!(McDropout::new(0, McStatistic::Msp).is_err());
    assert!(McDropout::new(McDropout::MAX_PASSES + 1, McStatistic::Msp).is_err());
}

#[test]
fn network_detectors_round_trip_and_load_as_any() {
    let device = Device::flex();
    let model = BurnModel::new(
        ToyConvnetConfig::new(1, 28, 5).init(&device).unwrap(),
        &device,
    );
    let dir = tempfile::tempdir().unwrap();
    let batch = || Batch::new(images(3, 28, 1, 8));
    let rankfeat = RankFeat::new(2.0).unwrap();
    let mc = McDropout::new(4, McStatistic::Msp).unwrap().with_seed(11);
    let path = dir.path().join("d.oodkit");
    rankfeat.save(&path).unwrap();
    assert_eq!(RankFeat::load(&path).unwrap(), rankfeat);
    let any = AnyDetector::load(&path).unwrap();
    assert_eq!(any.kind(), "RankFeat");
    assert_eq!(
        any.score_batch(&model, batch()).unwrap().scores,
        rankfeat
            .fit(&model, None)
            .unwrap()
            .score(&batch())
            .unwrap()
            .scores
    );
    mc.save(&path).unwrap();
    assert_eq!(McDropout::load(&path).unwrap(), mc);
    let any = AnyDetector::load(&path).unwrap();
    assert_eq!(any.kind(), "MCDropout");
    assert_eq!(
        any.score_batch(&model, batch()).unwrap().scores,
        mc.fit(&model, None)
            .unwrap()
            .score(&batch())
            .unwrap()
            .scores
    );
}
