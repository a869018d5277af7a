//! The second reference experiment: a ResNet pretrained on CIFAR-10
//! (akamaster's PyTorch weights, as safetensors) scores the CIFAR-10 test
//! set (ID) against an OOD set with MLS and MSP.
//!
//! ```sh
//! cargo run --release --example cifar10_ood -- \
//!     [--data-dir DIR] [--depth 20|32|44|56] [--ood svhn|mnist] [--out-dir DIR] [--json PATH]
//! ```
//!
//! - `--data-dir`: the data root (else `OODKIT_DATA_DIR`, else
//!   `~/.oodkit/datasets`) holding `cifar10/`, the weights under
//!   `weights/akamaster_resnet_cifar10/resnet<depth>-*.safetensors`, and
//!   `svhn/test_32x32.mat` or `mnist/`.
//! - `--ood svhn` (default): the SVHN test set; `--ood mnist`: the MNIST
//!   test images zero-padded to 32x32 (2 pixels each side) and repeated
//!   over three channels, a standard far-OOD set for CIFAR-10.
//! - Inputs are scaled to [0, 1], then normalised by the ImageNet mean and
//!   standard deviation, as the weights were trained.
//! - `--out-dir`: score histograms and ROC curves (with the `plots`
//!   feature); `--json`: the figures as JSON.

#[allow(dead_code)] // the MNIST helpers serve the other examples
mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use clap::{Parser, ValueEnum};
use oodkit::datasets::transforms::imagenet_preprocess;
use oodkit::datasets::{PrepareConfig, Split, cifar10, data_root, mnist, svhn};
use oodkit::detectors::{Detector, Mls, ScoreLogits};
use oodkit::metrics::{accuracy, bench_metrics};
use oodkit::model::BurnModel;
use oodkit::nets::CifarResNet;
use oodkit::{Error, Result};
use serde_json::json;

/// A pretrained CIFAR-10 ResNet scoring CIFAR-10 (ID) against an OOD set
/// with MLS and MSP.
#[derive(Parser, Debug)]
#[command(
    after_help = "Example: cifar10_ood --data-dir ../shared/datasets --ood mnist --json report.json"
)]
struct Cli {
    /// The data root (default: $OODKIT_DATA_DIR, else ~/.oodkit/datasets)
    /// holding cifar10/, weights/akamaster_resnet_cifar10/ and svhn/ or
    /// mnist/.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The depth of the pretrained ResNet.
    #[arg(long, default_value_t = 20, value_parser = depth)]
    depth: usize,
    /// The OOD set.
    #[arg(long, value_enum, default_value_t = OodSet::Svhn)]
    ood: OodSet,
    /// Score histograms and ROC curves go here (with the plots feature).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Write the figures as a JSON report.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// A depth of the pretrained family.
fn depth(value: &str) -> std::result::Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|d| oodkit::nets::CIFAR_RESNET_DEPTHS.contains(d))
        .ok_or_else(|| format!("expected one of {:?}", oodkit::nets::CIFAR_RESNET_DEPTHS))
}

/// The OOD sets scored against CIFAR-10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OodSet {
    /// The SVHN test set.
    Svhn,
    /// The MNIST test images, zero-padded to 32x32, over three channels.
    Mnist,
}

impl std::fmt::Display for OodSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OodSet::Svhn => "svhn",
            OodSet::Mnist => "mnist",
        })
    }
}

fn main() -> ExitCode {
    common::main(run)
}

fn run(args: &Cli) -> Result<()> {
    let root = data_root(args.data_dir.clone())?;
    let ds_in = cifar10::load(root.join("cifar10"), Split::Test)?;
    let ds_out = match args.ood {
        OodSet::Svhn => svhn::load(root.join("svhn"), Split::Test)?,
        OodSet::Mnist => common::mnist_as_cifar(&mnist::load(root.join("mnist"), Split::Test)?)?,
    };
    println!(
        "ID: CIFAR-10 test, {} images; OOD: {} test, {} images",
        ds_in.len(),
        args.ood,
        ds_out.len()
    );

    let device = Device::flex();
    let weights = common::weights_file(&root, args.depth)?;
    let network = CifarResNet::from_safetensors(&weights, args.depth, &device)?;
    println!("ResNet-{} from {}", args.depth, weights.display());
    let model = BurnModel::new(network, &device);

    // One pass through the network: MLS's output carries the logits, which
    // give the accuracy and MSP's scores.
    let config = PrepareConfig::new(500).preprocess(imagenet_preprocess);
    let started = Instant::now();
    let mls = Mls::new().fit(&model, None)?;
    let scored_in = mls.score(&ds_in.prepare(&config)?)?;
    let scored_out = mls.score(&ds_out.prepare(&config)?)?;
    let seconds = started.elapsed().as_secs_f64();
    let labels = scored_in
        .labels
        .as_ref()
        .ok_or_else(|| Error::custom("the CIFAR-10 batches lost their labels"))?;
    let accuracy = accuracy(scored_in.logits.view(), labels.view())?;
    println!("Test accuracy:\t{accuracy:.4}");

    let msp = Mls::msp();
    let mut detectors = serde_json::Map::new();
    for (name, scores_in, scores_out) in [
        ("mls", scored_in.scores.clone(), scored_out.scores.clone()),
        (
            "msp",
            msp.score_logits(scored_in.logits.view())?,
            msp.score_logits(scored_out.logits.view())?,
        ),
    ] {
        let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr"])?;
        println!("\n=== {} ===\n{report}", name.to_uppercase());
        #[cfg(feature = "plots")]
        if let Some(dir) = &args.out_dir {
            let title = format!("{} (CIFAR-10 vs {})", name.to_uppercase(), args.ood);
            let files = format!("cifar_{name}");
            common::plot_scores(dir, &files, &title, name == "msp", &scores_in, &scores_out)?;
        }
        let figures = json!({"auroc": report.get("auroc"), "fpr95tpr": report.get("fpr95tpr")});
        detectors.insert(name.to_owned(), figures);
    }
    println!(
        "\nscored {} images in {seconds:.1} s",
        ds_in.len() + ds_out.len()
    );
    #[cfg(not(feature = "plots"))]
    if args.out_dir.is_some() {
        eprintln!("--out-dir: no plots without the `plots` feature");
    }

    if let Some(path) = &args.json {
        let report = json!({
            "depth": args.depth,
            "ood": args.ood.to_string(),
            "accuracy": accuracy,
            "score_seconds": (seconds * 1000.0).round() / 1000.0,
            "detectors": detectors,
        });
        common::write_json(path, &report)?;
        println!("report written to {}", path.display());
    }
    Ok(())
}
