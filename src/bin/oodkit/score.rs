//! `oodkit score`: a saved detector on a folder of images — a score per
//! image and, when the detector was calibrated, a p-value and a verdict.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oodkit::datasets::BatchSource;
use oodkit::datasets::image_folder::{FolderBatches, ImageFolder};
use oodkit::detectors::AnyDetector;
use oodkit::{Error, Result};

use crate::inputs::{ModelArgs, report_skipped};
use crate::progress::Progress;
use crate::scores;

/// `oodkit score`.
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The detector `oodkit fit` saved (.oodkit).
    #[arg(long, value_name = "FILE")]
    pub detector: PathBuf,
    /// The images to score (any layout; class folders are not needed).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Where to write the scores: .csv (score, p-value, verdict, predicted
    /// class and file per image) or .npy (the scores).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Runs `oodkit score`.
pub fn run(args: &ScoreArgs, quiet: bool) -> Result<()> {
    scores::format_of(&args.out)?;
    args.model
        .inputs()
        .with("--detector", Some(&args.detector))
        .with("--data", Some(&args.data))
        .check_file("--out", &args.out)?;
    let detector = AnyDetector::load(&args.detector)?;
    // The images are prepared as they were for fitting.
    let mut model_args = args.model.clone();
    if let Some(recipe) = detector
        .info()
        .and_then(|info| info.annotations())
        .and_then(|a| a.get("input"))
    {
        model_args.follow(recipe)?;
    }
    let folder = model_args.open(&args.data)?;
    // An ONNX graph exposes the layers the detector was fitted on; a file
    // that names none (fitted on arrays with the default layer, -2) reads
    // the input of the graph's last linear layer, as `fit` does by default.
    let named = detector
        .info()
        .map(|info| named_layers(&info.metadata))
        .unwrap_or_default();
    let layers = model_args.feature_layers(&named);
    let model = model_args.load(&layers, Some(&folder))?;
    detector.check_model(&*model)?;
    let config = model_args.batches();
    let batches = folder.prepare(&config)?;
    if let Some(fitted) = detector.expects() {
        same_inputs_as_fit(fitted.input, &batches, &args.data)?;
    }
    let out = detector.score(&*model, &Progress::new(&batches, "scoring", quiet))?;
    let verdicts = if detector.is_calibrated() {
        detector.verdicts_of(&out)?
    } else {
        Vec::new()
    };
    let files = scored_files(&folder, &batches);
    scores::write(
        &args.out,
        &out.scores,
        &verdicts,
        &out.predictions(),
        &files,
    )?;
    println!(
        "{} images scored by {} ({}); scores written to {}",
        out.len(),
        detector.kind(),
        args.detector.display(),
        args.out.display()
    );
    if let Some((calibration, alpha)) = detector.calibration() {
        let flagged = verdicts.iter().filter(|v| v.is_ood).count();
        println!(
            "{flagged} flagged out-of-distribution ({:.2}%) at a false-alarm rate of {alpha} \
             (threshold {})",
            100.0 * flagged as f64 / out.len().max(1) as f64,
            calibration.threshold(alpha)?
        );
    } else {
        println!(
            "the detector is uncalibrated: scores only (fit it with --calibrate for verdicts)"
        );
    }
    Ok(())
}

/// The layer names a detector file records (for an ONNX graph to expose).
fn named_layers(meta: &serde_json::Value) -> Vec<String> {
    meta["detector"]["layers"]
        .as_array()
        .map(|layers| {
            layers
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .filter(|l| l != "logits")
                .collect()
        })
        .unwrap_or_default()
}

/// Errors when the images become inputs of another shape than the fit's:
/// a network that takes any size (a ResNet) would score them, but against
/// statistics of differently prepared inputs.
fn same_inputs_as_fit(fitted: [usize; 3], batches: &FolderBatches<'_>, dir: &Path) -> Result<()> {
    let Some(first) = batches.batches()?.next() else {
        return Ok(());
    };
    let first = first?;
    let found = &first.inputs.shape()[1..];
    if found == fitted {
        return Ok(());
    }
    let show = |s: &[usize]| format!("{}x{}x{}", s[0], s[1], s[2]);
    Err(Error::custom(format!(
        "the detector was fitted on {} inputs (channels x height x width) but the images in {} \
         give {}: pass the --channels and --size used at fit",
        show(&fitted),
        dir.display(),
        show(found)
    )))
}

/// The files that were scored, in order (those skipped as unreadable
/// left out, and reported).
pub fn scored_files(folder: &ImageFolder, batches: &FolderBatches<'_>) -> Vec<PathBuf> {
    report_skipped(batches);
    let skipped: HashSet<PathBuf> = batches.skipped().into_iter().collect();
    folder
        .files()
        .iter()
        .map(|(file, _)| file)
        .filter(|file| !skipped.contains(*file))
        .map(|file| {
            file.strip_prefix(folder.root())
                .unwrap_or(file)
                .to_path_buf()
        })
        .collect()
}
