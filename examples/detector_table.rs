//! Every detector of the crate on the reference experiment (the toy convnet
//! trained on MNIST digits 0-4; ID = test digits 0-4, OOD = 5-9): AUROC,
//! FPR@95%TPR, fit and scoring time, as a Markdown table (BENCHMARKS.md
//! holds one). The detectors on features fit on the training images of
//! digits 0-4.
//!
//! ```sh
//! cargo run --release --example detector_table -- \
//!     [--data-dir DIR] [--model-dir DIR] [--seed N] [--epochs N]
//! ```
//!
//! The options are `mnist_mls_msp`'s: with the same `--model-dir`, both
//! examples score the same trained network.

mod common;

use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use common::{Args, Mnist04, trained_or_loaded};
use oodkit::datasets::BatchSource;
use oodkit::detectors::{
    Detector, Energy, Entropy, Gen, Gram, Knn, Mahalanobis, Mls, Odin, Rmds, She, Vim,
};
use oodkit::metrics::bench_metrics;
use oodkit::model::{BurnModel, FeatureModel, Model, Shaping};
use oodkit::training::ToyConvnet;
use oodkit::training::evaluate;
use oodkit::{Error, Result};

/// A detector on logits, whichever it is.
type LogitDetector<'m> = Box<dyn Detector<Network = dyn Model + 'm> + 'm>;
/// A detector on features, whichever it is.
type FeatureDetector<'m> = Box<dyn Detector<Network = dyn FeatureModel + 'm> + 'm>;

const USAGE: &str =
    "usage: detector_table [--data-dir DIR] [--model-dir DIR] [--seed N] [--epochs N]";

fn main() -> ExitCode {
    common::main(USAGE, &[], run)
}

fn run(args: &Args) -> Result<()> {
    let mnist = Mnist04::load(args.data_dir.clone())?;
    let train_batches = mnist.train_batches(args.seed)?;
    let (ds_in, ds_out) = mnist.test_batches()?;
    let device = Device::flex();
    let (network, _) = trained_or_loaded(args, &device, &train_batches, &ds_in)?;
    let model = BurnModel::new(network, &device);
    println!("Test accuracy:\t{:.4}\n", evaluate(&model, &ds_in)?);

    // Activation shaping of the penultimate layer, ReAct's threshold fitted
    // on 5 000 training images.
    let fit_indices: Vec<usize> = (0..5_000.min(mnist.train_in.len())).collect();
    let fit_set = mnist.train_in.subset(&fit_indices)?;
    let fit_batches = fit_set.prepare(&common::batches())?;
    let mut shaped_models = Vec::new();
    for (name, shaping) in [
        (
            "ReAct (90%)",
            Shaping::react(&model, Some(&fit_batches), 0.9)?,
        ),
        ("ASH-S (90%)", Shaping::ash(0.9)?),
        ("SCALE (85%)", Shaping::scale(0.85)?),
    ] {
        shaped_models.push((name, model.clone().with_shaping(shaping)?));
    }

    let mut detectors: Vec<(String, LogitDetector, &BurnModel<ToyConvnet>)> = vec![
        ("MLS".into(), Box::new(Mls::new()), &model),
        ("MSP".into(), Box::new(Mls::msp()), &model),
        ("Energy (T = 1)".into(), Box::new(Energy::default()), &model),
        ("Entropy".into(), Box::new(Entropy::new()), &model),
        (
            "GEN (γ = 0.1, top 100)".into(),
            Box::new(Gen::default()),
            &model,
        ),
        (
            "ODIN (T = 1000, ε = 0)".into(),
            Box::new(Odin::new(1000.0, 0.0)?),
            &model,
        ),
        (
            "ODIN (T = 1000, ε = 0.0014)".into(),
            Box::new(Odin::default()),
            &model,
        ),
    ];
    for (shaping, shaped) in &shaped_models {
        detectors.push((format!("MLS + {shaping}"), Box::new(Mls::new()), shaped));
        detectors.push((
            format!("Energy + {shaping}"),
            Box::new(Energy::default()),
            shaped,
        ));
    }

    // Layers of the toy convnet: 0 = pool1 and 1 = pool2 (channel means),
    // 2 = the flattened last map (penultimate, 1 600 wide).
    let features: Vec<(&str, FeatureDetector)> = vec![
        ("Mahalanobis", Box::new(Mahalanobis::new())),
        ("RMDS", Box::new(Rmds::new())),
        ("KNN (k = 50)", Box::new(Knn::new(50)?)),
        ("ViM (99% variance)", Box::new(Vim::default())),
        ("SHE", Box::new(She::new())),
        (
            "Gram (orders 1-5, q = 0.01; pool1 + pool2)",
            Box::new(Gram::default().with_layers([0, 1])?),
        ),
        (
            "Mahalanobis (pool1 + pool2 + flatten, std-normalised)",
            Box::new(Mahalanobis::new().with_layers([0, 1, 2])?),
        ),
    ];
    let fit_all = mnist.train_in.prepare(&common::batches())?;

    println!(
        "| detector | AUROC | FPR@95%TPR | fit ({} training images) | scoring (10 000 images) |",
        mnist.train_in.len()
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, mut detector, network) in detectors {
        let started = Instant::now();
        detector.fit_model(Box::new(network), None)?;
        let fitted = started.elapsed().as_secs_f64();
        row(&name, detector.as_ref(), &ds_in, &ds_out, fitted)?;
    }
    for (name, mut detector) in features {
        let started = Instant::now();
        detector.fit_model(Box::new(&model), Some(&fit_all))?;
        let fitted = started.elapsed().as_secs_f64();
        row(name, detector.as_ref(), &ds_in, &ds_out, fitted)?;
    }
    Ok(())
}

/// Scores both sets with `detector` and prints its row.
fn row<N: ?Sized>(
    name: &str,
    detector: &dyn Detector<Network = N>,
    ds_in: &dyn BatchSource,
    ds_out: &dyn BatchSource,
    fit_seconds: f64,
) -> Result<()> {
    let started = Instant::now();
    let scores_in = detector.score(ds_in)?.scores;
    let scores_out = detector.score(ds_out)?.scores;
    let seconds = started.elapsed().as_secs_f64();
    let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr"])?;
    let figure = |metric: &str| {
        report
            .get(metric)
            .ok_or_else(|| Error::custom(format!("{metric} missing from the report")))
    };
    println!(
        "| {name} | {:.4} | {:.4} | {fit_seconds:.2} s | {seconds:.2} s |",
        figure("auroc")?,
        figure("fpr95tpr")?
    );
    Ok(())
}
