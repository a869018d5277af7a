//! The reference experiment: a toy convnet trained on MNIST digits 0-4, then
//! MLS and MSP separating the test digits 0-4 (in-distribution) from 5-9
//! (OOD), as the Python toolkit's notebook does.
//!
//! ```sh
//! cargo run --release --example mnist_mls_msp -- \
//!     [--data-dir DIR] [--model-dir DIR] [--out-dir DIR] [--json PATH] [--seed N] [--epochs N]
//! ```
//!
//! - `--data-dir`: the data root holding `mnist/` (else `OODKIT_DATA_DIR`,
//!   else `~/.oodkit/datasets`; MNIST is downloaded there if missing and the
//!   `download` feature is on).
//! - `--model-dir`: where the trained network is kept; when it already holds
//!   a checkpoint, the network is loaded from it instead of trained.
//! - `--out-dir`: where the plots go (score histograms, ROC curves, the
//!   penultimate features in 2-D); none are drawn without it.
//! - `--json`: write the figures as a JSON report.
//! - `--seed` (default 0), `--epochs` (default 5).

mod common;

use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use std::path::PathBuf;

use clap::Parser;
use common::{Mnist04, trained_or_loaded};
use oodkit::metrics::{MetricReport, bench_metrics};
use oodkit::model::{BurnModel, evaluate};
use oodkit::{Detector, Mls, Result};
use serde_json::json;

/// MNIST digits 0-4 (ID) vs 5-9 (OOD) with MLS and MSP, as the Python
/// toolkit's notebook.
#[derive(Parser, Debug)]
#[command(
    after_help = "Example: mnist_mls_msp --data-dir ../shared/datasets --out-dir figures --json report.json"
)]
struct Cli {
    #[command(flatten)]
    mnist: common::Args,
    /// Where the plots go (score histograms, ROC curves, the penultimate
    /// features in 2-D); none are drawn without it.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Write the figures as a JSON report.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// Detection figures of one detector.
struct Figures {
    name: &'static str,
    report: MetricReport,
}

fn main() -> ExitCode {
    common::main(run)
}

fn run(cli: &Cli) -> Result<()> {
    let args = &cli.mnist;
    // === Load ID and OOD data ===
    let mnist = Mnist04::load(args.data_dir.clone())?;
    let train_batches = mnist.train_batches(args.seed)?;
    let (ds_in, ds_out) = mnist.test_batches()?;

    // === Train / load the model ===
    let device = Device::flex();
    let (network, train_seconds) = trained_or_loaded(args, &device, &train_batches, &ds_in)?;
    let model = BurnModel::new(network, &device);
    let accuracy = evaluate(&model, &ds_in)?;
    println!("Test accuracy:\t{accuracy:.4}");

    // === MLS and MSP scores ===
    let started = Instant::now();
    let mut figures = Vec::new();
    for (name, detector) in [("mls", Mls::new()), ("msp", Mls::msp())] {
        let detector = detector.fit(&model, None)?;
        let scores_in = detector.score(&ds_in)?.scores;
        let scores_out = detector.score(&ds_out)?.scores;
        let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr"])?;
        println!("\n=== {} ===\n{report}", name.to_uppercase());
        if let Some(dir) = &cli.out_dir {
            // MSP scores pile up near -1: a log scale shows both tails.
            let title = name.to_uppercase();
            common::plot_scores(dir, name, &title, name == "msp", &scores_in, &scores_out)?;
        }
        figures.push(Figures { name, report });
    }
    let score_seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = &cli.out_dir {
        plots::features(dir, &model, &ds_in, &ds_out)?;
        println!("\nfigures written to {}", dir.display());
    }

    if let Some(path) = &cli.json {
        let report = json_report(args, accuracy, train_seconds, score_seconds, &figures);
        common::write_json(path, &report)?;
        println!("\nreport written to {}", path.display());
    }
    Ok(())
}

/// The figures as JSON (a missing or non-finite figure is `null`).
fn json_report(
    args: &common::Args,
    accuracy: f64,
    train_seconds: Option<f64>,
    score_seconds: f64,
    figures: &[Figures],
) -> serde_json::Value {
    let detectors: serde_json::Map<String, serde_json::Value> = figures
        .iter()
        .map(|f| {
            let figure = |metric: &str| f.report.get(metric);
            let value = json!({"auroc": figure("auroc"), "fpr95tpr": figure("fpr95tpr")});
            (f.name.to_owned(), value)
        })
        .collect();
    json!({
        "accuracy": accuracy,
        "train_seconds": train_seconds.map(|s| (s * 1000.0).round() / 1000.0),
        "score_seconds": (score_seconds * 1000.0).round() / 1000.0,
        "detectors": detectors,
        "seed": args.seed,
        "epochs": args.epochs,
    })
}

/// The notebook's figures.
mod plots {
    use std::path::Path;

    use oodkit::Result;
    use oodkit::datasets::Prepared;
    use oodkit::model::BurnModel;
    use oodkit::nets::ToyConvnet;
    use oodkit::plots::{FeaturePlot, Projection, plot_model_features};

    /// `features_2d.png`: the penultimate layer of ID and OOD test images.
    pub fn features(
        dir: &Path,
        model: &BurnModel<ToyConvnet>,
        ds_in: &Prepared<'_>,
        ds_out: &Prepared<'_>,
    ) -> Result<()> {
        // t-SNE, as the notebook draws them (PCA: `Projection::Pca`, faster).
        let options = FeaturePlot::new()
            .method(Projection::tsne())
            .title("Penultimate features (t-SNE)");
        plot_model_features(
            model,
            ds_in,
            ds_out,
            -2,
            &options,
            dir.join("features_2d.png"),
        )
    }
}
