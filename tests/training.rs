//! The trainer on small synthetic datasets: it learns, it repeats itself
//! under a seed, it keeps loadable checkpoints, and bad data is an error.
#![cfg(feature = "burn")]

use std::sync::{Mutex, MutexGuard};

use burn::tensor::Device;
use ndarray::{Array1, Array2, Array4};
use oodkit::datasets::{BatchIter, BatchSource, OodDataset, PrepareConfig};
use oodkit::model::{BurnModel, Model, evaluate};
use oodkit::nets::{ToyConvnetConfig, ToyMlp, ToyMlpConfig};
use oodkit::training::{Checkpoint, LrSchedule, TrainConfig, load_checkpoint, train};
use oodkit::{Batch, Error};

mod common;

/// Burn's CPU random numbers are process-wide: runs that must repeat
/// themselves take turns.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// 12x12 images with one bright 4x4 square in the quadrant named by the
/// label (0..4), on faint noise.
fn quadrants(n: usize, seed: u64) -> OodDataset {
    let labels = Array1::from_shape_fn(n, |i| (i % 4) as i64);
    let inputs = Array4::from_shape_fn((n, 1, 12, 12), |(i, _, y, x)| {
        let label = labels[i] as usize;
        let (top, left) = ((label / 2) * 6 + 1, (label % 2) * 6 + 1);
        let inside = (top..top + 4).contains(&y) && (left..left + 4).contains(&x);
        let noise = ((i as u64 * 131 + y as u64 * 17 + x as u64 * 7 + seed) % 10) as f32 / 40.0;
        if inside { 1.0 } else { noise }
    });
    OodDataset::from_arrays(inputs, labels).unwrap()
}

fn quiet(epochs: usize) -> TrainConfig {
    TrainConfig::new(epochs).with_progress(false)
}

/// The logits of a fixed batch: two networks with equal outputs here have,
/// for all purposes of these tests, equal weights.
fn probe(model: &impl Model) -> Array2<f32> {
    model.forward(quadrants(8, 99).inputs().view()).unwrap()
}

#[test]
fn the_toy_convnet_learns_a_separable_task() {
    let _turn = exclusive();
    let data = quadrants(256, 0);
    let batches = data.prepare(&PrepareConfig::new(32).shuffle(1)).unwrap();
    let test = quadrants(64, 5);
    let device = Device::flex();
    let network = ToyConvnetConfig::new(1, 12, 4).init(&device).unwrap();
    let untrained = evaluate(&BurnModel::new(network.clone(), &device), &test).unwrap();
    let trained = train(network, &batches, Some(&test), &quiet(8)).unwrap();

    assert_eq!(trained.history.len(), 8);
    let first = &trained.history[0];
    let last = &trained.history[7];
    assert!(
        last.loss < first.loss / 4.0,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    assert_eq!(last.samples, 256);
    let accuracy = evaluate(&BurnModel::new(trained.model, &device), &test).unwrap();
    assert!(accuracy >= 0.95, "accuracy {untrained} -> {accuracy}");
    assert_eq!(last.validation_accuracy, Some(accuracy));
}

#[test]
fn the_same_seed_gives_the_same_weights_and_another_seed_others() {
    let _turn = exclusive();
    let data = quadrants(96, 0);
    let run = |seed: u64| {
        let batches = data.prepare(&PrepareConfig::new(16).shuffle(seed)).unwrap();
        let device = Device::flex();
        device.seed(seed);
        let network = ToyConvnetConfig::new(1, 12, 4).init(&device).unwrap();
        let trained = train(network, &batches, None, &quiet(2).with_seed(seed)).unwrap();
        (
            probe(&BurnModel::new(trained.model, &device)),
            trained.history,
        )
    };
    let (a, history_a) = run(7);
    let (b, history_b) = run(7);
    let (c, _) = run(8);
    assert_eq!(a, b);
    assert_eq!(
        history_a.iter().map(|e| e.loss).collect::<Vec<_>>(),
        history_b.iter().map(|e| e.loss).collect::<Vec<_>>()
    );
    assert_ne!(a, c);
}

#[test]
fn checkpoints_hold_the_last_and_best_epochs_and_load_back() {
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let data = quadrants(64, 0);
    let batches = data.prepare(&PrepareConfig::new(16)).unwrap();
    let device = Device::flex();
    let build = || ToyMlpConfig::new(1, 12, 4).init(&device).unwrap();
    let config = quiet(3).with_save_dir(dir.path().join("run"));
    let trained = train(build(), &batches, Some(&data), &config).unwrap();

    let last = load_checkpoint(build(), Checkpoint::Last.path(dir.path().join("run"))).unwrap();
    let expected = probe(&BurnModel::new(trained.model.clone(), &device));
    assert_eq!(probe(&BurnModel::new(last, &device)), expected);
    assert!(probe(&BurnModel::new(build(), &device)) != expected);

    let best_path = Checkpoint::Best.path(dir.path().join("run"));
    let best: ToyMlp = load_checkpoint(build(), &best_path).unwrap();
    let best_accuracy = evaluate(&BurnModel::new(best, &device), &data).unwrap();
    let recorded = trained.history[trained.best_epoch - 1].validation_accuracy;
    assert_eq!(Some(best_accuracy), recorded);
    let top = trained
        .history
        .iter()
        .filter_map(|e| e.validation_accuracy)
        .fold(0.0, f64::max);
    assert_eq!(best_accuracy, top);
}

#[test]
fn loading_a_missing_or_foreign_checkpoint_is_an_error() {
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let network = ToyMlpConfig::new(1, 12, 4).init(&device).unwrap();
    let missing = load_checkpoint(network.clone(), dir.path().join("none.bpk")).unwrap_err();
    assert!(matches!(missing, Error::MissingFile { .. }), "{missing}");

    let garbage = dir.path().join("garbage.bpk");
    std::fs::write(&garbage, b"not a burnpack file").unwrap();
    let corrupt = load_checkpoint(network.clone(), &garbage).unwrap_err();
    assert!(matches!(corrupt, Error::CorruptFile { .. }), "{corrupt}");

    // The checkpoint of another architecture.
    let other = dir.path().join("convnet");
    let convnet = ToyConvnetConfig::new(1, 12, 4).init(&device).unwrap();
    burn::module::Module::save_file(convnet, &other).unwrap();
    let mismatch = load_checkpoint(network, other.with_extension("bpk")).unwrap_err();
    assert!(matches!(mismatch, Error::CorruptFile { .. }), "{mismatch}");
}

#[test]
fn the_cosine_schedule_ends_at_its_final_rate() {
    let _turn = exclusive();
    let data = quadrants(32, 0);
    let batches = data.prepare(&PrepareConfig::new(8)).unwrap();
    let device = Device::flex();
    let network = ToyMlpConfig::new(1, 12, 4).init(&device).unwrap();
    let config = quiet(2).with_schedule(LrSchedule::Cosine { final_lr: 1e-5 });
    let trained = train(network, &batches, None, &config).unwrap();
    // 4 steps per epoch: step 3 is at 3/7 of the way, step 7 at the end.
    let at = |t: f64| 1e-5 + 0.5 * (1e-3 - 1e-5) * (1.0 + (std::f64::consts::PI * t).cos());
    assert!((trained.history[0].learning_rate - at(3.0 / 7.0)).abs() < 1e-12);
    assert!((trained.history[1].learning_rate - 1e-5).abs() < 1e-12);
}

#[test]
fn a_label_the_network_has_no_output_for_is_an_error() {
    let _turn = exclusive();
    let data = quadrants(32, 0);
    let labels = data.labels().mapv(|l| l + 1); // 1..=4 with 4 outputs
    let data = OodDataset::from_arrays(data.inputs().clone(), labels).unwrap();
    let batches = data.prepare(&PrepareConfig::new(8)).unwrap();
    let network = ToyMlpConfig::new(1, 12, 4).init(&Device::flex()).unwrap();
    let err = train(network, &batches, None, &quiet(1)).unwrap_err();
    assert!(matches!(err, Error::InvalidLabel { label: 4, .. }), "{err}");
    assert!(err.to_string().contains("0..4"), "{err}");
}

#[test]
fn inputs_the_network_cannot_take_are_an_error() {
    let _turn = exclusive();
    let data = quadrants(16, 0);
    let batches = data.prepare(&PrepareConfig::new(8)).unwrap();
    // Built for 28x28 images, given 12x12 ones.
    let network = ToyMlpConfig::new(1, 28, 4).init(&Device::flex()).unwrap();
    let err = train(network, &batches, None, &quiet(1)).unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(err.to_string().contains("[8, 1, 12, 12]"), "{err}");
}

/// A source that yields no batch at all.
struct Nothing;

impl BatchSource for Nothing {
    fn batches(&self) -> oodkit::Result<BatchIter<'_>> {
        Ok(Box::new(std::iter::empty()))
    }
}

#[test]
fn no_batches_unlabelled_batches_and_bad_settings_are_errors() {
    let _turn = exclusive();
    let device = Device::flex();
    let network = || ToyMlpConfig::new(1, 12, 4).init(&device).unwrap();
    let err = train(network(), &Nothing, None, &quiet(1)).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");

    let unlabelled = Batch::new(quadrants(4, 0).inputs().clone());
    let err = train(network(), &unlabelled, None, &quiet(1)).unwrap_err();
    assert!(err.to_string().contains("with_labels"), "{err}");
    let err = evaluate(&BurnModel::new(network(), &device), &unlabelled).unwrap_err();
    assert!(err.to_string().contains("with_labels"), "{err}");

    let data = quadrants(4, 0);
    for (config, name) in [
        (quiet(0), "epochs"),
        (quiet(1).with_learning_rate(-1.0), "learning_rate"),
        (quiet(1).with_learning_rate(f64::NAN), "learning_rate"),
        (quiet(1).with_adam(1.0, 0.999, 1e-7), "beta_1"),
        (quiet(1).with_adam(0.9, 0.999, 0.0), "epsilon"),
        (
            quiet(1).with_schedule(LrSchedule::Cosine { final_lr: 1.0 }),
            "final_lr",
        ),
    ] {
        let err = train(network(), &data, None, &config).unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { name: n, .. } if n == name),
            "{name}: {err}"
        );
    }
}

#[test]
fn the_networks_check_their_settings() {
    let _turn = exclusive();
    let device = Device::flex();
    assert!(ToyConvnetConfig::new(1, 9, 10).init(&device).is_err());
    assert!(ToyConvnetConfig::new(1, 10, 10).init(&device).is_ok());
    assert!(ToyMlpConfig::new(1, 28, 0).init(&device).is_err());
    let mlp = BurnModel::new(ToyMlpConfig::new(3, 8, 7).init(&device).unwrap(), &device);
    let out = oodkit::model::FeatureModel::forward_features(
        &mlp,
        Array4::zeros((2, 3, 8, 8)).view(),
        &["fc1".into(), "fc2".into()],
    )
    .unwrap();
    assert_eq!(out.features[0].shape(), &[2, 300]);
    assert_eq!(out.features[1].shape(), &[2, 150]);
    assert_eq!(out.logits.shape(), &[2, 7]);
}

/// A checkpoint cut at 64 offsets or with 100 bits flipped: an error or a
/// network that runs, never a panic.
#[test]
fn cut_or_flipped_checkpoints_are_errors_or_networks() {
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let network = ToyMlpConfig::new(1, 6, 3).init(&device).unwrap();
    let stem = dir.path().join("mlp");
    burn::module::Module::save_file(network.clone(), &stem).unwrap();
    let path = stem.with_extension("bpk");
    let good = std::fs::read(&path).unwrap();
    let mut rng = common::Xorshift(0x2545_f491_4f6c_dd1d_u64);
    let mut below = |n: usize| rng.below(n);
    let mut mutants: Vec<Vec<u8>> = (0..64)
        .map(|i| good[..i * good.len() / 64].to_vec())
        .collect();
    for _ in 0..100 {
        let mut flipped = good.clone();
        let at = below(flipped.len());
        flipped[at] ^= 1 << below(8);
        mutants.push(flipped);
    }
    for bytes in &mutants {
        std::fs::write(&path, bytes).unwrap();
        if let Ok(loaded) = load_checkpoint(network.clone(), &path) {
            let model = oodkit::model::BurnModel::new(loaded, &device);
            let _ =
                oodkit::model::Model::forward(&model, ndarray::Array4::zeros((1, 1, 6, 6)).view());
        }
    }
}
