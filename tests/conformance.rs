//! One loop over the registry: every registered detector kind, built from
//! its registration, fitted through a model, must
//! - score higher on inputs far from the fit data than on inputs like it
//!   (on the fixture network; the kinds that need a trained network's
//!   dropout or feature maps are checked on a random burn network for the
//!   rest),
//! - give the same scores whatever the batch size (1, 7, 128),
//! - save and load bit for bit, calibrated or not, through `AnyDetector`,
//! - score from several threads at once as from one,
//! - refuse NaN inputs, inputs of another shape and empty data.
//!
//! No list of kinds is kept here: a kind registered is a kind tested.

mod common;

use common::fixture_net::{FixtureNet, WIDTH, lifted_data};
use ndarray::{Array1, Array4, Axis, concatenate, s};
use oodkit::datasets::{BatchSource, OodDataset, PrepareConfig};
use oodkit::detectors::registry::{self, Capability, Params, Registration};
use oodkit::detectors::{AnyDetector, AnyModel};
use oodkit::metrics::bench_metrics;
use oodkit::{Batch, Error};

/// The parameters every kind is tested with (each takes those it knows):
/// small enough for the fixture's 90 fit inputs.
fn test_params(registration: &Registration) -> Params {
    Params::new()
        .set("k", 3_usize)
        .set("bank_fraction", 0.5)
        .set("dims", 2_usize)
        .set("tail", 10_usize)
        .set("passes", 5_usize)
        .set("epsilon", 0.002)
        .only(registration.params())
}

/// Whether the kind needs a network the fixture cannot be.
fn needs_network(registration: &Registration) -> bool {
    registration
        .needs()
        .capabilities
        .iter()
        .any(|c| matches!(c, Capability::MapEditing | Capability::StochasticPasses))
}

/// A model, its fit data, inputs like the fit data and inputs far from it.
struct Problem {
    model: Box<AnyModel<'static>>,
    fit: OodDataset,
    near: OodDataset,
    far: OodDataset,
    /// Whether the far inputs must score higher (a problem the method
    /// applies to).
    separates: bool,
}

fn fixture_problem() -> Problem {
    // Classes that overlap a little (so a fitted temperature stays
    // finite); far inputs lift pixel 3, which no class does: unsure logits,
    // features off every class and off the fit data's principal subspace.
    let far = Array4::from_shape_fn((40, 1, 1, WIDTH), |(i, _, _, j)| {
        let on = if j == 3 { 1.5 } else { 0.0 };
        on + ((i * 7 + j * 3) % 11) as f32 * 0.05
    });
    Problem {
        model: Box::new(FixtureNet::default()),
        fit: lifted_data(90, 1, 0.7),
        near: lifted_data(40, 3, 0.7),
        far: OodDataset::from_arrays(far, Array1::zeros(40)).unwrap(),
        separates: true,
    }
}

#[cfg(feature = "burn")]
fn network_problem() -> Problem {
    use burn::tensor::Device;
    use oodkit::model::BurnModel;
    use oodkit::nets::ToyConvnetConfig;
    let device = Device::flex();
    let net = ToyConvnetConfig::new(1, 28, 3).init(&device).unwrap();
    let images = |n: usize, salt: usize| {
        let inputs = Array4::from_shape_fn((n, 1, 28, 28), |(i, _, y, x)| {
            (((i + salt) * 31 + y * 7 + x * 3) % 17) as f32 / 17.0
        });
        let labels = Array1::from_shape_fn(n, |i| (i % 3) as i64);
        OodDataset::from_arrays(inputs, labels).unwrap()
    };
    Problem {
        model: Box::new(BurnModel::new(net, &device)),
        fit: images(30, 0),
        near: images(40, 1),
        far: images(40, 2),
        separates: false,
    }
}

fn batches(data: &OodDataset, size: usize) -> oodkit::datasets::Prepared<'_> {
    data.prepare(&PrepareConfig::new(size)).unwrap()
}

fn bits(scores: &Array1<f32>) -> Vec<u32> {
    scores.iter().map(|s| s.to_bits()).collect()
}

/// Both sets as one dataset (near first).
fn both(problem: &Problem) -> OodDataset {
    let inputs = concatenate(
        Axis(0),
        &[problem.near.inputs().view(), problem.far.inputs().view()],
    )
    .unwrap();
    let labels = concatenate(
        Axis(0),
        &[problem.near.labels().view(), problem.far.labels().view()],
    )
    .unwrap();
    OodDataset::from_arrays(inputs, labels).unwrap()
}

fn check_kind(registration: &'static Registration, problem: &Problem) {
    let kind = registration.kind();
    let model = &*problem.model;
    let detector = registration
        .build(&test_params(registration))
        .unwrap_or_else(|e| panic!("{kind}: built from its test parameters: {e}"));
    let fit = batches(&problem.fit, 16);
    let fitted = detector
        .fit(model, Some(&fit))
        .unwrap_or_else(|e| panic!("{kind}: fit: {e}"));
    assert_eq!(fitted.kind(), kind);

    // Higher = more OOD.
    let near = fitted.score(model, &batches(&problem.near, 16)).unwrap();
    let far = fitted.score(model, &batches(&problem.far, 16)).unwrap();
    if problem.separates {
        let report = bench_metrics(&near.scores, &far.scores, &["auroc"]).unwrap();
        let auroc = report.get("auroc").unwrap();
        // The sign check: measured 0.59 (temperature scaling, whose fitted
        // temperature saturates many probabilities at 1) to 1.0.
        assert!(
            auroc > 0.55,
            "{kind}: far inputs must score higher: AUROC {auroc}"
        );
    }

    // The same scores whatever the batch size.
    let all = both(problem);
    let reference = fitted.score(model, &batches(&all, 128)).unwrap().scores;
    for size in [1, 7] {
        let scores = fitted.score(model, &batches(&all, size)).unwrap().scores;
        for (i, (a, b)) in scores.iter().zip(&reference).enumerate() {
            let tolerance = 1e-5 * b.abs().max(1.0);
            assert!(
                (a - b).abs() <= tolerance,
                "{kind}: input {i} scores {a} in batches of {size}, {b} in one batch"
            );
        }
    }

    // Save and load bit for bit, calibrated or not.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{kind}.oodkit"));
    fitted.save(&path).unwrap();
    let loaded = AnyDetector::load(&path).unwrap_or_else(|e| panic!("{kind}: load: {e}"));
    assert_eq!(loaded.kind(), kind);
    assert!(!loaded.is_calibrated(), "{kind}");
    assert_eq!(
        loaded.expects(),
        fitted.expects(),
        "{kind}: the model shape seen"
    );
    if registration.needs().fit_data
        && registration
            .needs()
            .capabilities
            .contains(&Capability::Features)
    {
        // Fitted through the model on data: the input shape it saw.
        let dims = problem.fit.input_shape();
        assert_eq!(loaded.expects().map(|e| e.input), Some(dims), "{kind}");
    }
    let again = loaded.score(model, &batches(&all, 128)).unwrap().scores;
    assert_eq!(bits(&again), bits(&reference), "{kind}: scores after load");
    let calibration = &problem.near;
    let calibrated = loaded
        .calibrate(model, &batches(calibration, 16), 0.1)
        .unwrap_or_else(|e| panic!("{kind}: calibrate: {e}"));
    let calibrated_path = dir.path().join(format!("{kind}.calibrated.oodkit"));
    calibrated.save(&calibrated_path).unwrap();
    let reloaded = AnyDetector::load(&calibrated_path).unwrap();
    assert_eq!(
        reloaded
            .calibration()
            .map(|(c, a)| (c.scores().to_vec(), a)),
        calibrated
            .calibration()
            .map(|(c, a)| (c.scores().to_vec(), a)),
        "{kind}: the calibration after load"
    );
    let verdicts = calibrated.verdicts(model, &batches(&all, 128)).unwrap();
    assert_eq!(
        reloaded.verdicts(model, &batches(&all, 128)).unwrap(),
        verdicts,
        "{kind}: verdicts after load"
    );
    assert_eq!(
        verdicts
            .iter()
            .map(|v| v.score.to_bits())
            .collect::<Vec<_>>(),
        bits(&reference),
        "{kind}: a calibration changes no score"
    );

    // Several threads at once, as one.
    fn shared<T: Send + Sync>(value: &T) -> &T {
        value
    }
    let fitted = shared(&fitted);
    let alone = fitted.score(model, &batches(&all, 7)).unwrap().scores;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| fitted.score(model, &batches(&all, 7)).unwrap().scores))
            .collect();
        for worker in workers {
            let scores = worker.join().unwrap();
            assert_eq!(bits(&scores), bits(&alone), "{kind}: scored from a thread");
        }
    });

    // Bad input.
    let mut with_nan = all.inputs().slice(s![..3, .., .., ..]).to_owned();
    with_nan[[1, 0, 0, 0]] = f32::NAN;
    let err = fitted.score(model, &Batch::new(with_nan)).unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("nan")
            || err.to_string().contains("not finite")
            || matches!(err, Error::NotANumber { .. }),
        "{kind}: NaN input: {err}"
    );
    let dims = all.inputs().dim();
    let narrow = Array4::<f32>::zeros((2, dims.1, dims.2, dims.3 / 2));
    assert!(
        fitted.score(model, &Batch::new(narrow)).is_err(),
        "{kind}: inputs of another shape"
    );
    let empty = Array4::<f32>::zeros((0, dims.1, dims.2, dims.3));
    assert!(
        fitted.score(model, &Batch::new(empty)).is_err(),
        "{kind}: no input"
    );
    let no_fit = Batch::new(Array4::<f32>::zeros((0, dims.1, dims.2, dims.3)));
    assert!(
        detector
            .fit(model, Some(&no_fit as &dyn BatchSource))
            .is_err()
            || !registration.needs().fit_data,
        "{kind}: empty fit data"
    );
}

#[test]
fn every_registered_kind_conforms() {
    let fixture = fixture_problem();
    #[cfg(feature = "burn")]
    let network = network_problem();
    let mut checked = Vec::new();
    for registration in registry::all() {
        if !needs_network(registration) {
            check_kind(registration, &fixture);
            checked.push(registration.kind());
        }
        #[cfg(feature = "burn")]
        if needs_network(registration) {
            check_kind(registration, &network);
            checked.push(registration.kind());
        }
    }
    // Without burn, the kinds that need the network itself have no model.
    let expected = registry::all()
        .iter()
        .filter(|r| cfg!(feature = "burn") || !needs_network(r))
        .count();
    assert_eq!(checked.len(), expected, "checked {checked:?}");
}

#[test]
fn names_and_kinds_are_unique_and_found() {
    let all = registry::all();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a.kind(), b.kind());
            assert_ne!(a.name(), b.name());
        }
        assert_eq!(registry::find(a.name()).unwrap().kind(), a.kind());
        assert_eq!(registry::find(a.kind()).unwrap().name(), a.name());
        assert!(!a.summary().is_empty(), "{}", a.kind());
    }
    let err = registry::find("no-such-detector").unwrap_err();
    assert!(err.to_string().contains("knn"), "{err}");
}

#[test]
fn parameters_a_kind_does_not_take_are_refused_and_bad_values_too() {
    let knn = registry::find("knn").unwrap();
    let err = knn.build(&Params::new().set("alpha", 0.5)).unwrap_err();
    assert!(err.to_string().contains("it takes k"), "{err}");
    assert!(knn.build(&Params::new().set("k", 0_usize)).is_err());
    assert!(knn.build(&Params::new().set("k", 2.5)).is_err());
    assert!(knn.build(&Params::new().set("k", "three")).is_err());
    assert!(knn.build(&Params::new().set("k", f64::NAN)).is_err());
    let energy = registry::find("energy").unwrap();
    assert!(
        energy
            .build(&Params::new().set("temperature", -1.0))
            .is_err()
    );
    let vim = registry::find("vim").unwrap();
    assert!(vim.build(&Params::new().set("dims", 0_usize)).is_err());
    assert!(vim.build(&Params::new().set("dims", 0.99)).is_ok());
}

/// The model, counting its forward passes (plain and with features).
struct Counting {
    net: FixtureNet,
    passes: std::sync::atomic::AtomicUsize,
}

impl Counting {
    fn tick(&self) {
        self.passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl oodkit::model::Model for Counting {
    fn forward(&self, inputs: ndarray::ArrayView4<f32>) -> oodkit::Result<ndarray::Array2<f32>> {
        self.tick();
        self.net.forward(inputs)
    }
    fn as_features(&self) -> Option<&dyn oodkit::model::FeatureModel> {
        Some(self)
    }
    fn as_last_layer(&self) -> Option<&dyn oodkit::model::LastLayer> {
        self.net.as_last_layer()
    }
    fn as_input_gradient(&self) -> Option<&dyn oodkit::model::InputGradient> {
        self.net.as_input_gradient()
    }
}

impl oodkit::model::FeatureModel for Counting {
    fn layer_names(&self) -> Vec<String> {
        oodkit::model::FeatureModel::layer_names(&self.net)
    }
    fn forward_features(
        &self,
        inputs: ndarray::ArrayView4<f32>,
        layers: &[oodkit::model::LayerId],
    ) -> oodkit::Result<oodkit::model::ModelOutput> {
        self.tick();
        oodkit::model::FeatureModel::forward_features(&self.net, inputs, layers)
    }
}

#[test]
fn every_kind_on_recorded_outputs_scores_as_through_the_model() {
    use oodkit::model::Recording;
    use std::sync::atomic::Ordering;
    let problem = fixture_problem();
    let model = Counting {
        net: FixtureNet::default(),
        passes: Default::default(),
    };
    let mut recording = Recording::new(&model, &[(-2).into()], 1 << 24).unwrap();
    let fit = recording.record(&model, &problem.fit).unwrap();
    let near = recording.record(&model, &problem.near).unwrap();
    let far = recording.record(&model, &problem.far).unwrap();
    let recorded_passes = model.passes.load(Ordering::Relaxed);
    assert_eq!(recording.len(), 90 + 40 + 40);
    let mut replayed = 0;
    for registration in registry::all() {
        if needs_network(registration) {
            continue;
        }
        let kind = registration.kind();
        let detector = registration.build(&test_params(registration)).unwrap();
        let fit_data = registration
            .needs()
            .fit_data
            .then_some(&fit as &dyn BatchSource);
        if registration
            .needs()
            .capabilities
            .contains(&Capability::InputGradient)
        {
            // ODIN's step needs the network: refused at fit, naming it.
            let err = detector.fit(&recording, fit_data).unwrap_err();
            assert!(matches!(err, Error::Unsupported { .. }), "{kind}: {err}");
            continue;
        }
        let through_recording = detector.fit(&recording, fit_data).unwrap();
        let direct = detector
            .fit(
                &model,
                registration
                    .needs()
                    .fit_data
                    .then_some(&problem.fit as &dyn BatchSource),
            )
            .unwrap();
        for (set, data) in [(&near, &problem.near), (&far, &problem.far)] {
            let a = through_recording.score(&recording, set).unwrap().scores;
            let b = direct.score(&model, data).unwrap().scores;
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "{kind}: {x} vs {y}"
                );
            }
        }
        replayed += 1;
    }
    assert!(replayed >= 20, "{replayed} kinds replayed");
    // The recording never ran the network again: only the direct fits did.
    let mut second = Recording::new(&model, &[(-2).into()], 1 << 24).unwrap();
    let before = model.passes.load(Ordering::Relaxed);
    let set = second.record(&model, &problem.near).unwrap();
    let after = model.passes.load(Ordering::Relaxed);
    registry::find("knn")
        .unwrap()
        .build(&test_params(registry::find("knn").unwrap()))
        .unwrap()
        .fit(&second, Some(&set))
        .unwrap()
        .score(&second, &set)
        .unwrap();
    assert_eq!(model.passes.load(Ordering::Relaxed), after);
    assert!(after > before && recorded_passes > 0);
    // A batch the recording did not make is refused.
    assert!(
        oodkit::model::Model::forward(&recording, Array4::from_elem((1, 1, 1, WIDTH), 1e9).view())
            .is_err()
    );
}

#[test]
fn a_recording_beyond_its_budget_spills_to_npy_shards_and_replays_the_same() {
    use oodkit::model::Recording;
    let problem = fixture_problem();
    let net = FixtureNet::default();
    let layers = [(-2).into()];
    let record_all = |recording: &mut Recording| {
        [&problem.fit, &problem.near, &problem.far].map(|set| recording.record(&net, set).unwrap())
    };
    let mut in_memory = Recording::new(&net, &layers, 1 << 24).unwrap();
    let memory_sets = record_all(&mut in_memory);
    let row_bytes = in_memory.bytes() / in_memory.len();
    // Room for 25 of the 170 rows: the rest goes to disk.
    let budget = 25 * row_bytes;
    let dir = tempfile::tempdir().unwrap();
    let mut spilled = Recording::new(&net, &layers, budget).unwrap();
    spilled.spill_to(dir.path());
    let spilled_sets = record_all(&mut spilled);
    assert!(spilled.bytes() <= budget, "{} > {budget}", spilled.bytes());
    assert_eq!(spilled.bytes() + spilled.spilled_bytes(), in_memory.bytes());
    let folder = spilled.spill_folder().unwrap().to_path_buf();
    assert!(folder.starts_with(dir.path()));
    // The shards are NumPy files any .npy reader takes: the far set's
    // logits, as the network gives them, are in its first shard.
    let first_far = 90 + 40;
    #[cfg(feature = "npy")]
    {
        let far_logits = oodkit::model::Model::forward(&net, problem.far.inputs().view()).unwrap();
        let shard =
            oodkit::datasets::npy::read_matrix(folder.join(format!("{first_far}-0.npy"))).unwrap();
        assert_eq!(shard, far_logits.slice(s![..shard.nrows(), ..]));
    }
    // Every kind that replays gives the same scores from disk as from memory.
    let mut compared = 0;
    for registration in registry::all() {
        if needs_network(registration)
            || registration
                .needs()
                .capabilities
                .contains(&Capability::InputGradient)
        {
            continue;
        }
        let detector = registration.build(&test_params(registration)).unwrap();
        let fitted = |recording: &Recording, sets: &[oodkit::model::RecordedSet; 3]| {
            let fit_data = registration
                .needs()
                .fit_data
                .then_some(&sets[0] as &dyn BatchSource);
            let fitted = detector.fit(recording, fit_data).unwrap();
            [&sets[1], &sets[2]].map(|set| fitted.score(recording, set).unwrap().scores)
        };
        assert_eq!(
            fitted(&spilled, &spilled_sets),
            fitted(&in_memory, &memory_sets),
            "{}",
            registration.kind()
        );
        compared += 1;
    }
    assert!(compared >= 20, "{compared}");
    // A shard changed behind the recording's back: an error naming it.
    let victim = folder.join(format!("{first_far}-1.npy"));
    std::fs::write(&victim, b"\x93NUMPY").unwrap();
    let knn = registry::find("knn")
        .unwrap()
        .build(&Params::new().set("k", 2_usize))
        .unwrap();
    let err = knn
        .fit(&spilled, Some(&spilled_sets[0]))
        .and_then(|k| k.score(&spilled, &spilled_sets[2]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::CorruptFile { path, .. } if path == &victim),
        "{err}"
    );
    // The shards go with the recording.
    drop(spilled);
    assert!(!folder.exists());
}

#[test]
fn a_recording_refuses_what_it_cannot_hold_or_replay() {
    use oodkit::model::Recording;
    let problem = fixture_problem();
    let net = FixtureNet::default();
    // Over budget: an error naming it, and nothing of that set kept.
    let mut small = Recording::new(&net, &[(-2).into()], 1000).unwrap();
    let err = small.record(&net, &problem.fit).unwrap_err();
    assert!(err.to_string().contains("budget"), "{err}");
    assert!(small.is_empty());
    // A layer the model does not have, and layers of a logits-only model.
    assert!(Recording::new(&net, &["no-such-layer".into()], 1 << 20).is_err());
    let logits_only = oodkit::model::from_fn(|x: ndarray::ArrayView4<f32>| {
        Ok(x.to_shape((x.shape()[0], WIDTH))?.to_owned())
    });
    assert!(Recording::new(&logits_only, &[(-2).into()], 1 << 20).is_err());
    // Logits alone: logit detectors replay, feature detectors are refused
    // at fit (no layers recorded).
    let mut logits = Recording::new(&logits_only, &[], 1 << 20).unwrap();
    let set = logits.record(&logits_only, &problem.near).unwrap();
    let mls = registry::find("mls")
        .unwrap()
        .build(&Params::new())
        .unwrap();
    assert_eq!(
        mls.fit(&logits, None)
            .unwrap()
            .score(&logits, &set)
            .unwrap()
            .scores
            .len(),
        40
    );
    let knn = registry::find("knn")
        .unwrap()
        .build(&Params::new())
        .unwrap();
    assert!(matches!(
        knn.fit(&logits, Some(&set)),
        Err(Error::Unsupported { .. })
    ));
    // NaN in the inputs' activations is refused as the model's pass does.
    let nan = OodDataset::from_arrays(
        Array4::from_elem((2, 1, 1, WIDTH), f32::NAN),
        Array1::zeros(2),
    )
    .unwrap();
    let mut rec = Recording::new(&net, &[(-2).into()], 1 << 20).unwrap();
    assert!(rec.record(&net, &nan).is_err());
    assert!(rec.is_empty());
}
