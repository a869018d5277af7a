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

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use oodkit::datasets::{OodDataset, PrepareConfig, Split, data_root, mnist};
use oodkit::metrics::{MetricReport, bench_metrics};
use oodkit::model::BurnModel;
use oodkit::training::{
    Checkpoint, ToyConvnet, ToyConvnetConfig, TrainConfig, evaluate, load_checkpoint, train,
};
use oodkit::{Batch, Detector, Error, Mls, Result};

const USAGE: &str = "usage: mnist_mls_msp [--data-dir DIR] [--model-dir DIR] [--out-dir DIR] \
                     [--json PATH] [--seed N] [--epochs N]";

/// The command line.
struct Args {
    data_dir: Option<PathBuf>,
    model_dir: Option<PathBuf>,
    out_dir: Option<PathBuf>,
    json: Option<PathBuf>,
    seed: u64,
    epochs: usize,
}

impl Args {
    fn parse() -> std::result::Result<Args, String> {
        let mut args = Args {
            data_dir: None,
            model_dir: None,
            out_dir: None,
            json: None,
            seed: 0,
            epochs: 5,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                return Err(USAGE.into());
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let number = |what: &str| format!("{flag} takes {what}, not {value:?}");
            match flag.as_str() {
                "--data-dir" => args.data_dir = Some(value.into()),
                "--model-dir" => args.model_dir = Some(value.into()),
                "--out-dir" => args.out_dir = Some(value.into()),
                "--json" => args.json = Some(value.into()),
                "--seed" => args.seed = value.parse().map_err(|_| number("an integer"))?,
                "--epochs" => {
                    args.epochs = value
                        .parse()
                        .ok()
                        .filter(|&e| e > 0)
                        .ok_or_else(|| number("a positive integer"))?
                }
                _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
            }
        }
        Ok(args)
    }
}

/// Detection figures of one detector.
struct Figures {
    name: &'static str,
    report: MetricReport,
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    // === Load ID and OOD data ===
    let mnist_dir = data_root(args.data_dir.clone())?.join("mnist");
    let (train_all, test_all) = load_mnist(&mnist_dir)?;
    let in_labels = [0, 1, 2, 3, 4];
    let (train_in, _) = train_all.split_by_class(&in_labels)?;
    let (test_in, test_out) = test_all.split_by_class(&in_labels)?;
    let scale = |mut batch: Batch| {
        batch.inputs /= 255.0;
        Ok(batch)
    };
    let train_batches =
        train_in.prepare(&PrepareConfig::new(128).preprocess(scale).shuffle(args.seed))?;
    let config = PrepareConfig::new(128).preprocess(scale);
    let (ds_in, ds_out) = (test_in.prepare(&config)?, test_out.prepare(&config)?);
    println!(
        "MNIST: {} training images of digits 0-4; test: {} ID (0-4), {} OOD (5-9)",
        train_in.len(),
        test_in.len(),
        test_out.len()
    );

    // === Train / load the model ===
    let device = Device::flex();
    device.seed(args.seed);
    // Ten outputs, as in the notebook, though only five classes are seen.
    let network = ToyConvnetConfig::new(1, 28, 10).init(&device)?;
    let checkpoint = args
        .model_dir
        .as_ref()
        .map(|dir| Checkpoint::Last.path(dir));
    // No training time when the network comes from a checkpoint.
    let (network, train_seconds): (ToyConvnet, Option<f64>) = match &checkpoint {
        Some(path) if path.is_file() => {
            println!("loading the model from {}", path.display());
            (load_checkpoint(network, path)?, None)
        }
        _ => {
            let mut config = TrainConfig::new(args.epochs).with_seed(args.seed);
            if let Some(dir) = &args.model_dir {
                config = config.with_save_dir(dir);
            }
            let trained = train(network, &train_batches, Some(&ds_in), &config)?;
            println!(
                "trained {} epochs in {:.1} s ({:.0} images/s)",
                args.epochs,
                trained.train_seconds(),
                trained.samples_per_second()
            );
            let seconds = trained.train_seconds();
            (trained.model, Some(seconds))
        }
    };
    let model = BurnModel::new(network, &device);
    let accuracy = evaluate(&model, &ds_in)?;
    println!("Test accuracy:\t{accuracy:.4}");

    // === MLS and MSP scores ===
    let started = Instant::now();
    let mut figures = Vec::new();
    for (name, mut detector) in [("mls", Mls::new()), ("msp", Mls::msp())] {
        detector.fit(&model, None)?;
        let scores_in = detector.score(&ds_in)?.scores;
        let scores_out = detector.score(&ds_out)?.scores;
        let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr"])?;
        println!("\n=== {} ===\n{report}", name.to_uppercase());
        if let Some(dir) = &args.out_dir {
            plots::scores(dir, name, &scores_in, &scores_out)?;
        }
        figures.push(Figures { name, report });
    }
    let score_seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = &args.out_dir {
        plots::features(dir, &model, &ds_in, &ds_out)?;
        println!("\nfigures written to {}", dir.display());
    }

    if let Some(path) = &args.json {
        let report = json_report(args, accuracy, train_seconds, score_seconds, &figures);
        std::fs::write(path, report)
            .map_err(|e| Error::custom(format!("writing {}: {e}", path.display())))?;
        println!("\nreport written to {}", path.display());
    }
    Ok(())
}

/// The train and test splits, downloading MNIST first when it is missing
/// (with the `download` feature).
fn load_mnist(dir: &Path) -> Result<(OodDataset, OodDataset)> {
    match mnist::load(dir, Split::Train) {
        Err(Error::MissingFile { .. }) if cfg!(feature = "download") => {
            eprintln!("MNIST is not in {}: downloading it", dir.display());
            #[cfg(feature = "download")]
            oodkit::datasets::download::mnist(dir)?;
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    Ok((
        mnist::load(dir, Split::Train)?,
        mnist::load(dir, Split::Test)?,
    ))
}

/// The figures as JSON (numbers only, so no escaping is needed beyond the
/// fixed keys).
fn json_report(
    args: &Args,
    accuracy: f64,
    train_seconds: Option<f64>,
    score_seconds: f64,
    figures: &[Figures],
) -> String {
    let detectors: Vec<String> = figures
        .iter()
        .map(|f| {
            let value = |metric: &str| number(f.report.get(metric));
            format!(
                "\"{}\": {{\"auroc\": {}, \"fpr95tpr\": {}}}",
                f.name,
                value("auroc"),
                value("fpr95tpr")
            )
        })
        .collect();
    let train_seconds = number(train_seconds.map(|s| (s * 1000.0).round() / 1000.0));
    format!(
        "{{\"accuracy\": {accuracy}, \"train_seconds\": {train_seconds}, \
         \"score_seconds\": {score_seconds:.3}, \"detectors\": {{{}}}, \"seed\": {}, \
         \"epochs\": {}}}\n",
        detectors.join(", "),
        args.seed,
        args.epochs
    )
}

/// A JSON number, or `null` for a missing or non-finite one.
fn number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => v.to_string(),
        _ => "null".into(),
    }
}

/// The notebook's figures.
mod plots {
    use std::path::Path;

    use ndarray::Array1;
    use oodkit::datasets::Prepared;
    use oodkit::model::BurnModel;
    use oodkit::plots::{
        FeaturePlot, Projection, RocPlot, ScorePlot, plot_model_features, plot_ood_scores,
        plot_roc_curve,
    };
    use oodkit::training::ToyConvnet;
    use oodkit::{Error, Result};

    /// `scores_<name>.png` and `roc_<name>.png` in `dir`.
    pub fn scores(
        dir: &Path,
        name: &str,
        scores_in: &Array1<f32>,
        scores_out: &Array1<f32>,
    ) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::custom(format!("creating {}: {e}", dir.display())))?;
        let upper = name.to_uppercase();
        // MSP scores pile up near -1: a log scale shows both tails.
        let histogram = ScorePlot::new()
            .title(format!("{upper} scores"))
            .log_scale(name == "msp");
        plot_ood_scores(
            scores_in,
            scores_out,
            &histogram,
            dir.join(format!("scores_{name}.png")),
        )?;
        let auroc = oodkit::metrics::auroc(scores_in, scores_out)?;
        let roc = RocPlot::new().title(format!("{upper} ROC curve (AUROC {auroc:.4})"));
        plot_roc_curve(
            scores_in,
            scores_out,
            &roc,
            dir.join(format!("roc_{name}.png")),
        )?;
        Ok(())
    }

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
