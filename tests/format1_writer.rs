//! Writes the format-1 detector files of `tests/fixtures/format1/` with the
//! crate as it was before the registry redesign (issue 33). Run once, by
//! hand: `OODKIT_WRITE_FORMAT1=tests/fixtures/format1 cargo test --test
//! format1_writer -- --ignored`. Removed from the tree after the files were
//! committed, so later versions cannot overwrite them.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::fixture_net::{FixtureNet, calibration_data, fit_data, scored_data};
use ndarray::Axis;
use oodkit::datasets::PrepareConfig;
use oodkit::detectors::{
    Aggregation, Detector, Dice, Energy, Entropy, Fdbd, FeatureDetector, FittedDetector, Gen, Gmm,
    GradNorm, Gram, InputPerturbation, Klm, Knn, Mahalanobis, McDropout, McStatistic, Mls, Nci,
    NnGuide, Odin, OpenMax, Persist, PrincipalDims, RankFeat, Residual, Rmds, ScoreFeatures,
    Shaped, She, TemperatureScaling, TemperedSoftmax, Vim, Vra,
};
use oodkit::model::{FeatureModel, Shaping};
use serde_json::{Value, json};

type Entries = BTreeMap<String, Value>;

fn record(entries: &mut Entries, file: &str, scores: Option<Vec<f32>>, note: &str) {
    let scores = scores.map(|s| s.into_iter().map(f64::from).collect::<Vec<_>>());
    entries.insert(file.into(), json!({ "scores": scores, "what": note }));
}

/// Saves `fitted`, plain and calibrated, and records the scores of the
/// scored data through the network.
fn save<F>(dir: &Path, entries: &mut Entries, name: &str, fitted: F, note: &str)
where
    F: FittedDetector<Family = oodkit::detectors::Features> + Persist + Clone,
    oodkit::calibration::Calibrated<F>: Persist,
{
    save_plain(dir, entries, name, fitted.clone(), note);
    let net = FixtureNet::default();
    let calibration = calibration_data();
    let batches = calibration.prepare(&PrepareConfig::new(16)).unwrap();
    let calibrated = fitted
        .attach(&net)
        .unwrap()
        .calibrate(&batches, 0.1)
        .unwrap()
        .into_fitted();
    save_plain(
        dir,
        entries,
        &format!("{name}.calibrated"),
        calibrated,
        &format!("{note}, calibrated at α = 0.1 on 60 inputs"),
    );
}

fn save_plain<F>(dir: &Path, entries: &mut Entries, name: &str, fitted: F, note: &str)
where
    F: FittedDetector<Family = oodkit::detectors::Features> + Persist,
{
    let file = format!("{name}.oodkit");
    fitted.save(dir.join(&file)).unwrap();
    let net = FixtureNet::default();
    let scored = scored_data();
    let scores = fitted
        .attach(&net)
        .unwrap()
        .score(&scored.prepare(&PrepareConfig::new(16)).unwrap())
        .unwrap()
        .scores
        .to_vec();
    record(entries, &file, Some(scores), note);
}

fn save_logits<F>(dir: &Path, entries: &mut Entries, name: &str, fitted: F, note: &str)
where
    F: FittedDetector<Family = oodkit::detectors::Logits> + Persist + Clone,
    oodkit::calibration::Calibrated<F>: Persist,
{
    let net = FixtureNet::default();
    let file = format!("{name}.oodkit");
    fitted.save(dir.join(&file)).unwrap();
    let scored = scored_data();
    let scorer = fitted.clone().attach(&net).unwrap();
    let scores = scorer
        .score(&scored.prepare(&PrepareConfig::new(16)).unwrap())
        .unwrap()
        .scores
        .to_vec();
    record(entries, &file, Some(scores), note);
    let calibration = calibration_data();
    let calibrated = scorer
        .calibrate(&calibration.prepare(&PrepareConfig::new(16)).unwrap(), 0.1)
        .unwrap();
    let file = format!("{name}.calibrated.oodkit");
    calibrated.fitted().save(dir.join(&file)).unwrap();
    let scores = calibrated
        .score(&scored.prepare(&PrepareConfig::new(16)).unwrap())
        .unwrap()
        .scores
        .to_vec();
    record(
        entries,
        &file,
        Some(scores),
        &format!("{note}, calibrated at α = 0.1 on 60 inputs"),
    );
}

fn fit_through<D>(detector: D) -> D::Fitted
where
    D: Detector,
    D::Fitted: FittedDetector<Family = oodkit::detectors::Features>,
{
    let net = FixtureNet::default();
    let fit = fit_data();
    detector
        .fit(&net, Some(&fit.prepare(&PrepareConfig::new(16)).unwrap()))
        .unwrap()
        .into_fitted()
}

fn fit_logits<D>(detector: D) -> D::Fitted
where
    D: Detector,
    D::Fitted: FittedDetector<Family = oodkit::detectors::Logits>,
{
    let net = FixtureNet::default();
    let fit = fit_data();
    detector
        .fit(&net, Some(&fit.prepare(&PrepareConfig::new(16)).unwrap()))
        .unwrap()
        .into_fitted()
}

#[test]
#[ignore = "writes the committed format-1 fixtures; run by hand once (see the module docs)"]
fn write_format1_fixtures() {
    let Some(dir) = std::env::var_os("OODKIT_WRITE_FORMAT1") else {
        panic!("set OODKIT_WRITE_FORMAT1 to the folder to write");
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut e = Entries::new();
    let e = &mut e;

    // Logit detectors.
    save_logits(dir, e, "mls", fit_logits(Mls::new()), "MLS");
    save_logits(dir, e, "msp", fit_logits(Mls::msp()), "MSP");
    save_logits(
        dir,
        e,
        "energy",
        fit_logits(Energy::new(0.5).unwrap()),
        "Energy, T = 0.5",
    );
    save_logits(dir, e, "entropy", fit_logits(Entropy::new()), "Entropy");
    save_logits(
        dir,
        e,
        "gen",
        fit_logits(Gen::new(0.2, 2).unwrap()),
        "GEN, γ = 0.2, k = 2",
    );
    save_logits(
        dir,
        e,
        "odin",
        fit_logits(Odin::new(100.0, 0.002).unwrap()),
        "ODIN, T = 100, ε = 0.002 (through the exact input gradient)",
    );
    save_logits(
        dir,
        e,
        "temperature_scaling",
        fit_logits(TemperatureScaling::new()),
        "temperature scaling fitted on 90 inputs",
    );
    save_logits(dir, e, "klm", fit_logits(Klm::new()), "KLM fitted on 90 inputs");
    save_logits(
        dir,
        e,
        "openmax",
        fit_logits(OpenMax::new(10, 2).unwrap()),
        "OpenMax, tail 10, α = 2",
    );
    // Network-only detectors: the fixture net cannot score them; the files
    // are checked by their parameters.
    let rankfeat = RankFeat::new(2.0).unwrap();
    rankfeat.save(dir.join("rankfeat.oodkit")).unwrap();
    record(e, "rankfeat.oodkit", None, "RankFeat, T = 2 (parameters only)");
    let mc = McDropout::new(7, McStatistic::Msp).unwrap().with_seed(42);
    mc.save(dir.join("mcdropout.oodkit")).unwrap();
    record(
        e,
        "mcdropout.oodkit",
        None,
        "MC dropout, 7 passes, MSP, seed 42 (parameters only)",
    );

    // Shaped logit detectors.
    let net = FixtureNet::default();
    let fit = fit_data();
    let fit_batches = fit.prepare(&PrepareConfig::new(16)).unwrap();
    let react = Shaping::react(&net as &dyn FeatureModel, Some(&fit_batches), 0.8).unwrap();
    save(
        dir,
        e,
        "energy.react",
        Shaped::new(Energy::default(), react).unwrap(),
        "Energy on ReAct (q = 0.8) shaped logits",
    );
    save(
        dir,
        e,
        "mls.ash",
        Shaped::new(Mls::new(), Shaping::ash(0.5).unwrap()).unwrap(),
        "MLS on ASH (0.5)",
    );
    save(
        dir,
        e,
        "msp.scale",
        Shaped::new(Mls::msp(), Shaping::scale(0.5).unwrap()).unwrap(),
        "MSP on SCALE (0.5)",
    );
    save(
        dir,
        e,
        "entropy.react",
        Shaped::new(Entropy::new(), react).unwrap(),
        "Entropy on ReAct",
    );
    save(
        dir,
        e,
        "gen.ash",
        Shaped::new(Gen::new(0.1, 3).unwrap(), Shaping::ash(0.25).unwrap()).unwrap(),
        "GEN on ASH (0.25)",
    );
    save(
        dir,
        e,
        "odin.scale",
        Shaped::new(Odin::new(10.0, 0.0).unwrap(), Shaping::scale(0.25).unwrap()).unwrap(),
        "ODIN (T = 10, ε = 0) on SCALE (0.25)",
    );
    save(
        dir,
        e,
        "temperature_scaling.react",
        Shaped::new(TemperedSoftmax::new(1.7).unwrap(), react).unwrap(),
        "tempered softmax (T = 1.7) on ReAct",
    );

    // Feature detectors, penultimate layer ("hidden").
    save(dir, e, "mahalanobis", fit_through(Mahalanobis::new()), "Mahalanobis");
    save(dir, e, "rmds", fit_through(Rmds::new()), "RMDS");
    save(dir, e, "knn", fit_through(Knn::new(3).unwrap()), "KNN, k = 3");
    save(
        dir,
        e,
        "vim",
        fit_through(Vim::new(PrincipalDims::Count(2)).unwrap()),
        "ViM, 2 principal dims",
    );
    save(dir, e, "she", fit_through(She::new()), "SHE");
    save(
        dir,
        e,
        "gram",
        fit_through(Gram::default().with_layers(["input", "hidden"]).unwrap()),
        "Gram on input and hidden",
    );
    save(dir, e, "dice", fit_through(Dice::new(0.5).unwrap()), "DICE, sparsity 0.5");
    save(dir, e, "vra", fit_through(Vra::default()), "VRA");
    save(dir, e, "fdbd", fit_through(Fdbd::default()), "fDBD");
    save(dir, e, "nci", fit_through(Nci::default()), "NCI");
    save(
        dir,
        e,
        "nnguide",
        fit_through(NnGuide::new(3, 0.5).unwrap()),
        "NNGuide, k = 3, bank 0.5",
    );
    let gradnorm = GradNorm::new()
        .fit(&net, None)
        .unwrap()
        .into_fitted();
    save(dir, e, "gradnorm", gradnorm, "GradNorm (no fit data)");
    save(
        dir,
        e,
        "residual",
        fit_through(Residual::new(PrincipalDims::Count(2)).unwrap()),
        "Residual, 2 principal dims",
    );
    save(dir, e, "gmm", fit_through(Gmm::new(1e-3).unwrap()), "GMM, reg 1e-3");

    // Several layers, each aggregation, an input step.
    for (name, aggregation) in [
        ("std", Aggregation::StdNormalized),
        ("mean", Aggregation::MeanNormalized),
        ("fisher", Aggregation::Fisher),
    ] {
        save(
            dir,
            e,
            &format!("mahalanobis.layers.{name}"),
            fit_through(
                Mahalanobis::new()
                    .with_layers(["input", "hidden"])
                    .unwrap()
                    .with_aggregation(aggregation),
            ),
            &format!("Mahalanobis on input and hidden, {name} aggregation"),
        );
    }
    save(
        dir,
        e,
        "knn.step",
        fit_through(
            Knn::new(2)
                .unwrap()
                .with_input_perturbation(InputPerturbation::new(10.0, 0.01).unwrap()),
        ),
        "KNN, k = 2, input step T = 10, ε = 0.01",
    );

    // A state fitted on precomputed features (the hidden layer's), alone.
    let hidden = |ds: &oodkit::OodDataset| {
        net.forward_features(ds.inputs().view(), &[(-2).into()])
            .unwrap()
            .features
            .remove(0)
    };
    let index = Knn::new(4)
        .unwrap()
        .fit_features(hidden(&fit).view(), fit.labels().view())
        .unwrap();
    index.save(dir.join("knn.features.oodkit")).unwrap();
    let scored = scored_data();
    let scores = index.score_features(hidden(&scored).view()).unwrap();
    record(
        e,
        "knn.features.oodkit",
        Some(scores.to_vec()),
        "KNN index (k = 4) fitted on precomputed hidden features; scores of the scored data's \
         hidden features",
    );
    let _ = Axis(0);

    let expected = json!({
        "written_by": format!("oodkit {}", env!("CARGO_PKG_VERSION")),
        "network": "tests/common/fixture_net.rs: FixtureNet::default(); fit_data(), \
                    calibration_data(), scored_data() (batches of 16)",
        "files": e,
    });
    std::fs::write(
        dir.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}
