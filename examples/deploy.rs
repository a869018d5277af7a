//! From notebook to service: fit and calibrate detectors, save them, and
//! serve them from a fresh process one image at a time.
//!
//! ```text
//! cargo run --example deploy -- fit   --data-dir DIR --model-dir DIR --out-dir DIR
//! cargo run --example deploy -- serve --data-dir DIR --model-dir DIR --out-dir DIR [--json PATH]
//! ```
//!
//! `fit` trains the toy convnet on MNIST digits 0-4 (or loads it from
//! `--model-dir`), fits MLS, Energy + ReAct, KNN and ViM on the training
//! images, calibrates each on one half of the ID test set (a fixed random
//! half) and saves each to `--out-dir` as `NAME.oodkit`. `serve` loads the
//! network and the detector files, scores the other half of the ID test
//! set and the OOD test set (digits 5-9) one image at a time, and reports
//! per detector the false-alarm rate on ID and the detection rate on OOD
//! at the calibrated α, and the latency of one verdict (p50, p99).

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use clap::{Parser, Subcommand};
use common::{Args, Mnist04, trained_or_loaded};
use oodkit::calibration::Calibrated;
use oodkit::datasets::{BatchSource, OodDataset};
use oodkit::detectors::{
    Detector, Energy, FittedDetector, FittedFeatures, FittedKnn, FittedShaped, FittedVim, Knn, Mls,
    Persist, Scorer, Shaped, Vim,
};
use oodkit::model::{BurnModel, evaluate};
use oodkit::nets::ToyConvnetConfig;
use oodkit::training::{Checkpoint, load_checkpoint};
use oodkit::{Error, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Fit, calibrate and save detectors; serve them from the files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fit and calibrate MLS, Energy + ReAct, KNN and ViM; save them.
    Fit {
        #[command(flatten)]
        mnist: Args,
        /// Where the detector files are written.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The false-alarm rate the verdicts flag at.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
    },
    /// Load the network and the detector files; score one image at a time.
    Serve {
        #[command(flatten)]
        mnist: Args,
        /// Where `fit` wrote the detector files.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Also write the figures to this JSON file.
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
    },
}

/// The detector files, by name.
const MLS: &str = "mls";
const ENERGY_REACT: &str = "energy_react";
const KNN: &str = "knn";
const VIM: &str = "vim";

fn main() -> ExitCode {
    common::main(|cli: &Cli| match &cli.command {
        Command::Fit {
            mnist,
            out_dir,
            alpha,
        } => fit(mnist, out_dir, *alpha),
        Command::Serve {
            mnist,
            out_dir,
            json,
        } => serve(mnist, out_dir, json.as_deref()),
    })
}

/// The ID test set cut in two fixed random halves: (calibration, serving).
fn halves(test_in: &OodDataset) -> Result<(OodDataset, OodDataset)> {
    let mut order: Vec<usize> = (0..test_in.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(2026));
    let (calibration, serving) = order.split_at(test_in.len() / 2);
    Ok((test_in.subset(calibration)?, test_in.subset(serving)?))
}

fn file(out_dir: &Path, name: &str) -> PathBuf {
    out_dir.join(format!("{name}.oodkit"))
}

fn fit(args: &Args, out_dir: &Path, alpha: f64) -> Result<()> {
    let mnist = Mnist04::load(args.data_dir.clone())?;
    let train_batches = mnist.train_batches(args.seed)?;
    let (ds_in, _) = mnist.test_batches()?;
    let device = Device::flex();
    let (network, _) = trained_or_loaded(args, &device, &train_batches, &ds_in)?;
    let model = BurnModel::new(network, &device);
    println!("Test accuracy:\t{:.4}", evaluate(&model, &ds_in)?);
    std::fs::create_dir_all(out_dir).map_err(|e| Error::Io {
        path: out_dir.to_path_buf(),
        source: e,
    })?;

    let (calibration, _) = halves(&mnist.test_in)?;
    let calibration_images = calibration.len();
    let calibration = calibration.prepare(&common::batches())?;
    let fit_all = mnist.train_in.prepare(&common::batches())?;
    let react_indices: Vec<usize> = (0..5_000.min(mnist.train_in.len())).collect();
    let react_set = mnist.train_in.subset(&react_indices)?;
    let react_fit = react_set.prepare(&common::batches())?;
    println!(
        "fitting on {} training images, calibrating on {} ID test images at α = {alpha}",
        mnist.train_in.len(),
        calibration_images
    );

    let save = |name: &str, detector: &dyn Fn(&Path) -> Result<f32>| -> Result<()> {
        let path = file(out_dir, name);
        let start = Instant::now();
        let threshold = detector(&path)?;
        println!(
            "  {name:<13} threshold {threshold:>12.5}  → {} ({:.1} s)",
            path.display(),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    };
    save(MLS, &|path| {
        let scorer = Mls::new()
            .fit(&model, None)?
            .calibrate(&calibration, alpha)?;
        scorer.fitted().save(path)?;
        Ok(scorer.fitted().threshold())
    })?;
    save(ENERGY_REACT, &|path| {
        let energy = Shaped::react(Energy::default(), 0.9)?;
        let scorer = energy
            .fit(&model, Some(&react_fit))?
            .calibrate(&calibration, alpha)?;
        scorer.fitted().save(path)?;
        Ok(scorer.fitted().threshold())
    })?;
    save(KNN, &|path| {
        let scorer = Knn::new(50)?
            .fit(&model, Some(&fit_all))?
            .calibrate(&calibration, alpha)?;
        scorer.fitted().save(path)?;
        Ok(scorer.fitted().threshold())
    })?;
    save(VIM, &|path| {
        let scorer = Vim::default()
            .fit(&model, Some(&fit_all))?
            .calibrate(&calibration, alpha)?;
        scorer.fitted().save(path)?;
        Ok(scorer.fitted().threshold())
    })?;
    Ok(())
}

/// What serving one detector measured.
struct Served {
    false_alarm_rate: f64,
    detection_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Scores every image of `id` and `ood` one at a time through `scorer`.
fn serve_one<F: FittedDetector>(
    scorer: &Scorer<'_, Calibrated<F>>,
    id: &dyn BatchSource,
    ood: &dyn BatchSource,
) -> Result<Served> {
    let mut latencies = Vec::new();
    let mut flagged_share = |data: &dyn BatchSource| -> Result<f64> {
        let (mut flagged, mut total) = (0, 0);
        for batch in data.batches()? {
            let batch = batch?;
            let start = Instant::now();
            let verdicts = scorer.verdict_batch(batch)?;
            latencies.push(start.elapsed().as_secs_f64() * 1e3);
            flagged += verdicts.iter().filter(|v| v.is_ood).count();
            total += verdicts.len();
        }
        Ok(flagged as f64 / total.max(1) as f64)
    };
    let false_alarm_rate = flagged_share(id)?;
    let detection_rate = flagged_share(ood)?;
    latencies.sort_by(f64::total_cmp);
    let quantile =
        |q: f64| latencies[((q * latencies.len() as f64) as usize).min(latencies.len() - 1)];
    Ok(Served {
        false_alarm_rate,
        detection_rate,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
    })
}

fn serve(args: &Args, out_dir: &Path, json_path: Option<&Path>) -> Result<()> {
    let mnist = Mnist04::load(args.data_dir.clone())?;
    let device = Device::flex();
    let model_dir = args
        .model_dir
        .as_deref()
        .ok_or_else(|| Error::MissingInput {
            what: "--model-dir".into(),
            hint: "serve loads the network `fit` trained: pass the same --model-dir".into(),
        })?;
    let network = load_checkpoint(
        ToyConvnetConfig::new(1, 28, 10).init(&device)?,
        Checkpoint::Last.path(model_dir),
    )?;
    let model = BurnModel::new(network, &device);
    let (_, serving) = halves(&mnist.test_in)?;
    let one_at_a_time = common::batches_of(1);
    let id = serving.prepare(&one_at_a_time)?;
    let ood = mnist.test_out.prepare(&one_at_a_time)?;
    println!(
        "serving {} ID and {} OOD test images one at a time",
        serving.len(),
        mnist.test_out.len()
    );

    let mls = Calibrated::<Mls>::load(file(out_dir, MLS))?.attach(&model)?;
    let alpha = mls.fitted().alpha();
    let results = [
        (MLS, serve_one(&mls, &id, &ood)?),
        (
            ENERGY_REACT,
            serve_one(
                &Calibrated::<FittedShaped<Energy>>::load(file(out_dir, ENERGY_REACT))?
                    .attach(&model)?,
                &id,
                &ood,
            )?,
        ),
        (
            KNN,
            serve_one(
                &Calibrated::<FittedFeatures<FittedKnn>>::load(file(out_dir, KNN))?
                    .attach(&model)?,
                &id,
                &ood,
            )?,
        ),
        (
            VIM,
            serve_one(
                &Calibrated::<FittedFeatures<FittedVim>>::load(file(out_dir, VIM))?
                    .attach(&model)?,
                &id,
                &ood,
            )?,
        ),
    ];

    println!("\n| detector | false alarms (ID) | detections (OOD) | p50 | p99 |");
    println!("|---|---|---|---|---|");
    let mut report = serde_json::Map::new();
    for (name, served) in &results {
        println!(
            "| {name} | {:.4} | {:.4} | {:.2} ms | {:.2} ms |",
            served.false_alarm_rate, served.detection_rate, served.p50_ms, served.p99_ms
        );
        report.insert(
            (*name).into(),
            json!({
                "false_alarm_rate": served.false_alarm_rate,
                "detection_rate": served.detection_rate,
                "p50_ms": served.p50_ms,
                "p99_ms": served.p99_ms,
            }),
        );
    }
    println!("(α = {alpha}: the false-alarm rate is α up to sampling error)");
    if let Some(path) = json_path {
        common::write_json(path, &json!({"alpha": alpha, "detectors": report}))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
