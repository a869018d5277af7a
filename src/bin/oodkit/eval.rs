//! `oodkit eval`: the whole experiment in one command — fit every detector
//! on in-distribution images, score an ID and an OOD folder, report each
//! detector's metrics and draw its figures.

use std::path::PathBuf;

use oodkit::datasets::BatchSource;
use oodkit::datasets::image_folder::ImageFolder;
use oodkit::detectors::registry::{Capability, UnfittedDetector};
use oodkit::detectors::{AnyModel, ScoreOutput};
use oodkit::metrics::bench_metrics;
use oodkit::model::{LayerId, RecordedSet, Recording};
use oodkit::{Error, Result};
use serde_json::{Map, Value, json};

use crate::detectors::{Name, Params, check_needs, names};
use crate::inputs::{ModelArgs, layer_ids, report_skipped};
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
    /// Write the report as JSON to this file (rewritten as each detector
    /// completes).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// The memory the one pass over the images may keep (logits and the
    /// feature layers of every image), in MB; beyond it, the rest is
    /// written to --spill-dir and read back from there.
    #[arg(long, value_name = "MB", default_value_t = 4096)]
    pub memory_budget: usize,
    /// Where the one pass goes beyond --memory-budget: .npy files in a
    /// folder of their own, deleted at the end [default: the system's
    /// temporary folder, $TMPDIR].
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
}

/// Runs `oodkit eval`: every detector's needs are checked first; then the
/// network runs once over the fit, ID and OOD images (its logits and
/// layers kept in memory), and the detectors that need nothing more of
/// the network fit and score from that one pass. Each detector's result
/// goes to the report as soon as it is known.
pub fn run(args: &EvalArgs, quiet: bool) -> Result<()> {
    args.model
        .inputs()
        .with("--fit-data", args.fit_data.as_deref())
        .with("--id", Some(&args.id))
        .with("--ood", Some(&args.ood))
        .check_reports(args.json.as_deref(), args.plots.as_deref())?;
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
    let layer_names = args.model.feature_layers(&args.layers);
    let model = args.model.load(&layer_names, Some(&id_folder))?;
    let layers = layer_ids(&layer_names);
    let plans = args
        .detectors
        .iter()
        .map(|&name| Plan::new(name, args, &layers, &*model, fit_folder.as_ref()))
        .collect::<Result<Vec<_>>>()?;
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
    let sets = Sets {
        fit: fit_batches.as_ref().map(|b| b as &dyn BatchSource),
        id: &id_batches,
        ood: &ood_batches,
    };
    let replay = record(args, &plans, &layers, &*model, &sets, quiet)?;
    let mut detectors = Map::new();
    let mut accuracy = None;
    let mut report = json!({
        "id": {"folder": args.id, "images": id_folder.len()},
        "ood": {"folder": args.ood, "images": ood_folder.len()},
    });
    println!(
        "{:<12} {:>8} {:>9} {:>8} {:>9}",
        "detector", "AUROC", "FPR@95TPR", "AUPR-In", "AUPR-Out"
    );
    for plan in &plans {
        let name = plan.name.as_str();
        let [id_out, ood_out] = match (&replay, plan.replayable) {
            (Some((recording, recorded)), true) => {
                fit_and_score(plan, &**recording, recorded.as_sources())
            }
            _ => {
                let fit = sets
                    .fit
                    .map(|f| Progress::new(f, format!("{name}: fitting"), quiet));
                let id = Progress::new(sets.id, format!("{name}: ID"), quiet);
                let ood = Progress::new(sets.ood, format!("{name}: OOD"), quiet);
                fit_and_score(
                    plan,
                    &*model,
                    Sets {
                        fit: fit.as_ref().map(|p| p as &dyn BatchSource),
                        id: &id,
                        ood: &ood,
                    },
                )
            }
        }
        .map_err(|e| Error::custom(format!("{name}: {e}")))?;
        if accuracy.is_none() && id_folder.is_labelled() {
            accuracy = accuracy_of(&id_out);
        }
        let metrics = bench_metrics(&id_out.scores, &ood_out.scores, &METRICS)?;
        let get = |m: &str| metrics.get(m).unwrap_or(f64::NAN);
        println!(
            "{:<12} {:>8.4} {:>9.4} {:>8.4} {:>9.4}",
            name,
            get("auroc"),
            get("fpr95tpr"),
            get("aupr_in"),
            get("aupr_out")
        );
        if let Some(dir) = &args.plots {
            let suffix = format!("_{name}");
            plot(dir, &suffix, name, &id_out.scores, &ood_out.scores)?;
        }
        detectors.insert(name.to_owned(), report_json(&metrics));
        // The report so far: a later detector's failure keeps these.
        if let Some(path) = &args.json {
            report["detectors"] = Value::Object(detectors.clone());
            if let Some(accuracy) = accuracy {
                report["accuracy"] = Value::from(accuracy);
            }
            write_json(path, &report)?;
        }
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
    Ok(())
}

/// The fit (if any), ID and OOD images.
#[derive(Clone, Copy)]
struct Sets<'a> {
    fit: Option<&'a dyn BatchSource>,
    id: &'a dyn BatchSource,
    ood: &'a dyn BatchSource,
}

/// The three sets as recorded.
struct RecordedSets {
    fit: Option<RecordedSet>,
    id: RecordedSet,
    ood: RecordedSet,
}

impl RecordedSets {
    fn as_sources(&self) -> Sets<'_> {
        Sets {
            fit: self.fit.as_ref().map(|f| f as &dyn BatchSource),
            id: &self.id,
            ood: &self.ood,
        }
    }
}

/// One detector of the run, built and checked before any image is read.
struct Plan {
    name: Name,
    detector: UnfittedDetector,
    /// It needs nothing of the network but logits, layers and the last
    /// layer: it runs on the recorded pass.
    replayable: bool,
}

impl Plan {
    fn new(
        name: Name,
        args: &EvalArgs,
        layers: &[LayerId],
        model: &AnyModel<'_>,
        fit: Option<&ImageFolder>,
    ) -> Result<Self> {
        let detector = name.build(&args.params, layers)?;
        check_needs(name, &detector, model, fit)?;
        let needs = detector.registration().needs();
        let replayable = needs
            .capabilities
            .iter()
            .all(|c| matches!(c, Capability::Features | Capability::LastLayer));
        Ok(Plan {
            name,
            detector,
            replayable,
        })
    }
}

/// One pass of the network over the sets, when a detector can use it:
/// the recording and the sets as recorded (`None` when no detector can).
/// Beyond `--memory-budget`, the pass is written to `--spill-dir` (said).
fn record(
    args: &EvalArgs,
    plans: &[Plan],
    layers: &[LayerId],
    model: &AnyModel<'_>,
    sets: &Sets<'_>,
    quiet: bool,
) -> Result<Option<(Box<Recording>, RecordedSets)>> {
    let replayed: Vec<&Plan> = plans.iter().filter(|p| p.replayable).collect();
    if replayed.is_empty() {
        return Ok(None);
    }
    let needs = |c: Capability| {
        replayed
            .iter()
            .any(|p| p.detector.registration().needs().capabilities.contains(&c))
    };
    let layers = if needs(Capability::Features) {
        layers
    } else {
        &[]
    };
    let budget = args.memory_budget.saturating_mul(1 << 20);
    let mut recording = Box::new(Recording::new(model, layers, budget)?);
    let spill_dir = args.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    if !spill_dir.is_dir() {
        return Err(Error::MissingFile {
            path: spill_dir,
            hint: "--spill-dir names a folder to write the pass to beyond --memory-budget: \
                   create it or name another"
                .into(),
        });
    }
    recording.spill_to(&spill_dir);
    let mut pass = |what: &str, source: &dyn BatchSource| -> Result<RecordedSet> {
        let progress = Progress::new(source, format!("network: {what}"), quiet);
        recording.record(model, &progress)
    };
    let fit_needed = replayed
        .iter()
        .any(|p| p.detector.registration().needs().fit_data);
    let recorded = (|| -> Result<RecordedSets> {
        Ok(RecordedSets {
            fit: match sets.fit {
                Some(fit) if fit_needed => Some(pass("fit", fit)?),
                _ => None,
            },
            id: pass("ID", sets.id)?,
            ood: pass("OOD", sets.ood)?,
        })
    })();
    let recorded = recorded?;
    if let Some(folder) = recording.spill_folder() {
        eprintln!(
            "note: the pass keeps more than --memory-budget {} MB: {} MB more are in {} \
             (deleted at the end)",
            args.memory_budget,
            recording.spilled_bytes().div_ceil(1 << 20),
            folder.display()
        );
    }
    Ok(Some((recording, recorded)))
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

/// Fits on the fit data, then scores the ID and the OOD sets.
fn fit_and_score(plan: &Plan, model: &AnyModel<'_>, sets: Sets<'_>) -> Result<[ScoreOutput; 2]> {
    let fitted = plan.detector.fit(model, sets.fit)?;
    Ok([
        fitted.score(model, sets.id)?,
        fitted.score(model, sets.ood)?,
    ])
}
