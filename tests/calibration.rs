//! Conformal calibration: its false-alarm guarantee measured, on
//! exchangeable synthetic scores and (ignored without `OODKIT_DATA_DIR`)
//! on MNIST 0-4 with MLS through a trained toy convnet, over random
//! calibration / test splits of the ID test set.

use ndarray::{Array1, ArrayView1};
use oodkit::calibration::Calibration;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

/// Over `splits` random halvings of `id`, the mean share of the test half
/// flagged at `alpha` when calibrated on the other half, and the mean
/// share of `ood` flagged.
fn false_alarm_and_detection(
    id: &[f32],
    ood: &[f32],
    alpha: f64,
    splits: usize,
    seed: u64,
) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..id.len()).collect();
    let (mut far, mut detection) = (0.0, 0.0);
    for _ in 0..splits {
        order.shuffle(&mut rng);
        let (cal, test) = order.split_at(id.len() / 2);
        let cal: Array1<f32> = cal.iter().map(|&i| id[i]).collect();
        let calibration = Calibration::fit(cal.view()).unwrap();
        let threshold = calibration.threshold(alpha).unwrap();
        let test: Array1<f32> = test.iter().map(|&i| id[i]).collect();
        let flagged = |scores: ArrayView1<f32>| {
            let verdicts = calibration.verdicts(scores, None, alpha).unwrap();
            // The threshold and the p-values agree.
            for v in &verdicts {
                assert_eq!(v.is_ood, v.score >= threshold);
            }
            verdicts.iter().filter(|v| v.is_ood).count() as f64 / scores.len() as f64
        };
        far += flagged(test.view());
        detection += flagged(ArrayView1::from(ood));
    }
    (far / splits as f64, detection / splits as f64)
}

#[test]
fn the_false_alarm_rate_is_alpha_on_exchangeable_scores() {
    let mut rng = StdRng::seed_from_u64(3);
    // Heavy-tailed, with a few ties (rounded to 1e-3). Conditional on the
    // 1 000 scores, a random halving makes calibration and test
    // exchangeable: the mean rate is in [α − 1/(n+1), α] up to ties
    // (which only lower it) and the error of averaging 400 splits.
    let id: Vec<f32> = (0..1000)
        .map(|_| (-(rng.random::<f32>().max(1e-9)).ln() * 1000.0).round() / 100.0)
        .collect();
    let ood: Vec<f32> = id.iter().map(|s| s + 1.0).collect();
    for alpha in [0.01, 0.05, 0.2] {
        let (far, detection) = false_alarm_and_detection(&id, &ood, alpha, 400, 11);
        assert!(far <= alpha + 0.005, "alpha {alpha}: false alarms {far}");
        assert!(
            far >= alpha - 0.002 - 0.006,
            "alpha {alpha}: false alarms {far}"
        );
        assert!(detection > far, "alpha {alpha}: detection {detection}");
    }
}

#[cfg(feature = "burn")]
#[test]
#[ignore = "needs OODKIT_DATA_DIR (MNIST); trains the toy convnet for one epoch"]
fn mls_on_mnist_flags_five_percent_of_id_at_alpha_five_percent() {
    use oodkit::Batch;
    use oodkit::calibration::Calibrated;
    use oodkit::datasets::{PrepareConfig, Split, mnist};
    use oodkit::detectors::{Detector, Mls};
    use oodkit::model::BurnModel;
    use oodkit::nets::ToyConvnetConfig;
    use oodkit::training::{TrainConfig, train};

    let dir = std::path::PathBuf::from(
        std::env::var_os("OODKIT_DATA_DIR").expect("OODKIT_DATA_DIR names the data root"),
    )
    .join("mnist");
    let classes = [0, 1, 2, 3, 4];
    let (train_in, _) = mnist::load(&dir, Split::Train)
        .unwrap()
        .split_by_class(&classes)
        .unwrap();
    let (test_in, test_out) = mnist::load(&dir, Split::Test)
        .unwrap()
        .split_by_class(&classes)
        .unwrap();
    let batches = || {
        PrepareConfig::new(128).preprocess(|mut b: Batch| {
            b.inputs /= 255.0;
            Ok(b)
        })
    };
    let device = burn::tensor::Device::flex();
    device.seed(0);
    let network = ToyConvnetConfig::new(1, 28, 10).init(&device).unwrap();
    let trained = train(
        network,
        &train_in.prepare(&batches().shuffle(0)).unwrap(),
        None,
        &TrainConfig::new(1).with_seed(0),
    )
    .unwrap();
    let mls = Mls::new()
        .fit(BurnModel::new(trained.model, &device), None)
        .unwrap();
    let id = mls.score(&test_in.prepare(&batches()).unwrap()).unwrap();
    let ood = mls.score(&test_out.prepare(&batches()).unwrap()).unwrap();
    let (far, detection) = false_alarm_and_detection(
        id.scores.as_slice().unwrap(),
        ood.scores.as_slice().unwrap(),
        0.05,
        20,
        0,
    );
    println!(
        "MNIST 0-4, MLS, 20 splits of the {} ID test images: false-alarm rate {far:.4}, \
         detection rate on 5-9 {detection:.4} at alpha = 0.05",
        id.len()
    );
    assert!((far - 0.05).abs() <= 0.01, "false-alarm rate {far}");
    // The calibrated detector gives the same decisions as the threshold.
    let half = test_in.subset(&(0..2000).collect::<Vec<_>>()).unwrap();
    let calibrated = mls
        .calibrate(&half.prepare(&batches()).unwrap(), 0.05)
        .unwrap();
    let fitted: &Calibrated<Mls> = calibrated.fitted();
    let verdicts = calibrated
        .verdicts(&test_out.prepare(&batches()).unwrap())
        .unwrap();
    let t = fitted.threshold();
    assert!(verdicts.iter().all(|v| v.is_ood == (v.score >= t)));
    assert_eq!(verdicts.len(), test_out.len());
}
