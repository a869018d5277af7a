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

#[allow(dead_code)] // the JSON report serves the other examples
mod common;

use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use clap::Parser;
use common::{Args, Mnist04, trained_or_loaded};
use oodkit::datasets::BatchSource;
use oodkit::detectors::{
    Detector, Energy, Entropy, FeatureDetector, FittedDetector, Gen, Gram, IntoModel, Knn,
    Mahalanobis, Mls, Odin, Rmds, She, Vim,
};
use oodkit::metrics::bench_metrics;
use oodkit::model::{BurnModel, Shaping, evaluate};
use oodkit::{Error, Result};

/// Every detector on the MNIST 0-4 vs 5-9 experiment, as a Markdown table.
#[derive(Parser, Debug)]
#[command(
    after_help = "Example: detector_table --data-dir ../shared/datasets --model-dir models/mnist"
)]
struct Cli {
    #[command(flatten)]
    mnist: Args,
}

fn main() -> ExitCode {
    common::main(|cli: &Cli| run(&cli.mnist))
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

    let fit_all = mnist.train_in.prepare(&common::batches())?;
    let table = Table {
        ds_in: &ds_in,
        ds_out: &ds_out,
    };
    println!(
        "| detector | AUROC | FPR@95%TPR | fit ({} training images) | scoring (10 000 images) |",
        mnist.train_in.len()
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    table.row("MLS", Mls::new(), &model, None)?;
    table.row("MSP", Mls::msp(), &model, None)?;
    table.row("Energy (T = 1)", Energy::default(), &model, None)?;
    table.row("Entropy", Entropy::new(), &model, None)?;
    table.row("GEN (γ = 0.1, top 100)", Gen::default(), &model, None)?;
    table.row(
        "ODIN (T = 1000, ε = 0)",
        Odin::new(1000.0, 0.0)?,
        &model,
        None,
    )?;
    table.row("ODIN (T = 1000, ε = 0.0014)", Odin::default(), &model, None)?;
    for (shaping, shaped) in &shaped_models {
        table.row(&format!("MLS + {shaping}"), Mls::new(), shaped, None)?;
        table.row(
            &format!("Energy + {shaping}"),
            Energy::default(),
            shaped,
            None,
        )?;
    }

    // Layers of the toy convnet: 0 = pool1 and 1 = pool2 (channel means),
    // 2 = the flattened last map (penultimate, 1 600 wide).
    let fit = Some(&fit_all as &dyn BatchSource);
    table.row("Mahalanobis", Mahalanobis::new(), &model, fit)?;
    table.row("RMDS", Rmds::new(), &model, fit)?;
    table.row("KNN (k = 50)", Knn::new(50)?, &model, fit)?;
    table.row("ViM (99% variance)", Vim::default(), &model, fit)?;
    table.row("SHE", She::new(), &model, fit)?;
    let gram = Gram::default().with_layers([0, 1])?;
    table.row(
        "Gram (orders 1-5, q = 0.01; pool1 + pool2)",
        gram,
        &model,
        fit,
    )?;
    let mahalanobis = Mahalanobis::new().with_layers([0, 1, 2])?;
    let name = "Mahalanobis (pool1 + pool2 + flatten, std-normalised)";
    table.row(name, mahalanobis, &model, fit)?;
    Ok(())
}

/// The two test sets every row scores.
struct Table<'a> {
    ds_in: &'a dyn BatchSource,
    ds_out: &'a dyn BatchSource,
}

impl Table<'_> {
    /// Fits `detector` on `model` (and `fit_data`), scores both sets and
    /// prints the row: code generic over every detector of either family.
    fn row<'m, D, M>(
        &self,
        name: &str,
        detector: D,
        model: M,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<()>
    where
        D: Detector,
        M: IntoModel<'m, <D::Fitted as FittedDetector>::Family>,
    {
        let started = Instant::now();
        let scorer = detector.fit(model, fit_data)?;
        let fit_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let scores_in = scorer.score(self.ds_in)?.scores;
        let scores_out = scorer.score(self.ds_out)?.scores;
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
}
