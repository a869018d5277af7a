//! `oodkit eval`: the whole experiment in one command — fit every detector
//! on in-distribution images, score an ID and an OOD folder, report each
//! detector's metrics and draw its figures.

use std::path::PathBuf;

use oodkit::datasets::BatchSource;
use oodkit::detectors::ScoreOutput;
use oodkit::metrics::bench_metrics;
use oodkit::model::LayerId;
use oodkit::{Error, Result};
use serde_json::{Map, Value, json};

use crate::detectors::{Name, Params, names};
use crate::inputs::{ModelArgs, Network, layer_ids, report_skipped};
use crate::metrics::{METRICS, plot, report_json};
use crate::progress::Progress;
use crate::report::write_json;

/// `oodkit eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// In-distribution images the detectors are fitted on (e.g. part of the
    /// training set; class folders for Mahalanobis, RMDS and SHE).
    #[arg(long, value_name = "DIR")]
    pub fit_data: Option<PathBuf>,
    /// In-distribution test images. With class folders named in the
    /// model's class order, the model's accuracy is reported too.
    #[arg(long, value_name = "DIR")]
    pub id: PathBuf,
    /// Out-of-distribution test images.
    #[arg(long, value_name = "DIR")]
    pub ood: PathBuf,
    /// The detectors, comma-separated.
    #[arg(
        long,
        value_parser = names(),
        value_delimiter = ',',
        default_value = "mls,energy,knn,vim"
    )]
    pub detectors: Vec<Name>,
    /// A feature layer the feature detectors read (repeat for several; see
    /// `oodkit fit --help`) [default: the penultimate layer].
    #[arg(long = "layer", value_name = "NAME")]
    pub layers: Vec<String>,
    #[command(flatten)]
    pub params: Params,
    /// Draw each detector's score histograms and ROC curve in this folder
    /// (scores_<detector>.png, roc_<detector>.png).
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs `oodkit eval`.
pub fn run(args: &EvalArgs, quiet: bool) -> Result<()> {
    let needs_fit = args.detectors.iter().find(|d| d.needs_fit_data());
    let fit_folder = match (&args.fit_data, needs_fit) {
        (Some(dir), _) => Some(args.model.open(dir)?),
        (None, None) => None,
        (None, Some(name)) => {
            return Err(Error::MissingInput {
                what: format!("fit data for {}", name.as_str()),
                hint: "it learns in-distribution statistics: pass --fit-data DIR".into(),
            });
        }
    };
    let id_folder = args.model.open(&args.id)?;
    let ood_folder = args.model.open(&args.ood)?;
    let model = args.model.load(&args.layers, Some(&id_folder))?;
    let config = args.model.batches();
    let fit_batches = fit_folder
        .as_ref()
        .map(|f| f.prepare(&config))
        .transpose()?;
    let id_batches = id_folder.prepare(&config)?;
    let ood_batches = ood_folder.prepare(&config)?;
    println!(
        "ID: {} images in {}; OOD: {} images in {}{}",
        id_folder.len(),
        id_folder.root().display(),
        ood_folder.len(),
        ood_folder.root().display(),
        fit_folder.as_ref().map_or_else(String::new, |f| format!(
            "; fit: {} images in {}",
            f.len(),
            f.root().display()
        ))
    );
    let layers = layer_ids(&args.layers);
    let mut detectors = Map::new();
    let mut accuracy = None;
    println!(
        "{:<12} {:>8} {:>9} {:>8} {:>9}",
        "detector", "AUROC", "FPR@95TPR", "AUPR-In", "AUPR-Out"
    );
    for &name in &args.detectors {
        let fit_progress = fit_batches
            .as_ref()
            .map(|b| Progress::new(b, format!("fitting {}", name.as_str()), quiet));
        let id_progress = Progress::new(&id_batches, format!("{}: ID", name.as_str()), quiet);
        let ood_progress = Progress::new(&ood_batches, format!("{}: OOD", name.as_str()), quiet);
        let [id_out, ood_out] = fit_and_score(
            name,
            &args.params,
            &layers,
            &model,
            fit_progress.as_ref().map(|p| p as &dyn BatchSource),
            [&id_progress, &ood_progress],
        )
        .map_err(|e| Error::custom(format!("{}: {e}", name.as_str())))?;
        if accuracy.is_none() && id_folder.is_labelled() {
            accuracy = accuracy_of(&id_out);
        }
        let report = bench_metrics(&id_out.scores, &ood_out.scores, &METRICS)?;
        let get = |m: &str| report.get(m).unwrap_or(f64::NAN);
        println!(
            "{:<12} {:>8.4} {:>9.4} {:>8.4} {:>9.4}",
            name.as_str(),
            get("auroc"),
            get("fpr95tpr"),
            get("aupr_in"),
            get("aupr_out")
        );
        if let Some(dir) = &args.plots {
            let suffix = format!("_{}", name.as_str());
            plot(dir, &suffix, name.as_str(), &id_out.scores, &ood_out.scores)?;
        }
        detectors.insert(name.as_str().to_owned(), report_json(&report));
    }
    for batches in fit_batches.iter().chain([&id_batches, &ood_batches]) {
        report_skipped(batches);
    }
    if let Some(accuracy) = accuracy {
        println!("accuracy on the ID images: {accuracy:.4}");
    }
    if let Some(dir) = &args.plots {
        println!("figures in {}", dir.display());
    }
    if let Some(path) = &args.json {
        let mut report = json!({
            "id": {"folder": args.id, "images": id_folder.len()},
            "ood": {"folder": args.ood, "images": ood_folder.len()},
            "detectors": detectors,
        });
        if let Some(accuracy) = accuracy {
            report["accuracy"] = Value::from(accuracy);
        }
        write_json(path, &report)?;
    }
    Ok(())
}

/// The share of inputs whose predicted class is their label.
fn accuracy_of(out: &ScoreOutput) -> Option<f64> {
    let labels = out.labels.as_ref()?;
    let right = out
        .predictions()
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    Some(right as f64 / labels.len().max(1) as f64)
}

/// Fits on the fit data, then scores each of two sets.
fn fit_and_score(
    name: Name,
    params: &Params,
    layers: &[LayerId],
    model: &Network,
    fit_data: Option<&dyn BatchSource>,
    [id, ood]: [&dyn BatchSource; 2],
) -> Result<[ScoreOutput; 2]> {
    let fitted = name.build(params, layers)?.fit(&**model, fit_data)?;
    Ok([fitted.score(&**model, id)?, fitted.score(&**model, ood)?])
}
