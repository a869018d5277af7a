//! `oodkit fit`: fit a detector on a folder of in-distribution images,
//! optionally calibrate its decision, and save it.

use std::path::{Path, PathBuf};

use oodkit::datasets::BatchSource;
use oodkit::detectors::registry::UnfittedDetector;
use oodkit::{Error, Result};

use crate::detectors::{Name, Params, check_needs, names};
use crate::inputs::{ModelArgs, Network, layer_ids, report_skipped};
use crate::progress::Progress;

/// `oodkit fit`.
#[derive(clap::Args, Debug)]
pub struct FitArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// In-distribution images to fit on (ImageFolder layout root/<class>/<image>,
    /// or a flat folder; Mahalanobis, RMDS and SHE need the class folders).
    /// Needed by the feature detectors.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The detector.
    #[arg(long, value_parser = names())]
    pub detector: Name,
    /// A feature layer the detector reads (repeat for several): an ONNX
    /// node name, or a layer name or position (negative from the end) of
    /// the crate's networks [default: the penultimate layer].
    #[arg(long = "layer", value_name = "NAME")]
    pub layers: Vec<String>,
    #[command(flatten)]
    pub params: Params,
    /// Where to save the fitted detector (.oodkit).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Held-out in-distribution images (not the fit data) to calibrate
    /// the decision on: the saved detector then flags inputs with a
    /// false-alarm rate of --alpha.
    #[arg(long, value_name = "DIR")]
    pub calibrate: Option<PathBuf>,
    /// The false-alarm rate of the calibrated decision.
    #[arg(long, default_value_t = 0.05, value_name = "RATE")]
    pub alpha: f64,
}

/// Runs `oodkit fit`.
pub fn run(args: &FitArgs, quiet: bool) -> Result<()> {
    args.model
        .inputs()
        .with("--data", args.data.as_deref())
        .with("--calibrate", args.calibrate.as_deref())
        .check_file("--out", &args.out)?;
    let fit_folder = args
        .data
        .as_deref()
        .map(|d| args.model.open(d))
        .transpose()?;
    if fit_folder.is_none() && args.detector.needs_fit_data() {
        return Err(Error::MissingInput {
            what: format!("fit data for {}", args.detector.as_str()),
            hint: "it learns in-distribution statistics: pass --data DIR".into(),
        });
    }
    let calibration_folder = args
        .calibrate
        .as_deref()
        .map(|d| args.model.open(d))
        .transpose()?;
    let layer_names = args.model.feature_layers(&args.layers);
    let model = args.model.load(
        &layer_names,
        fit_folder.as_ref().or(calibration_folder.as_ref()),
    )?;
    let detector = args
        .detector
        .build(&args.params, &layer_ids(&layer_names))?;
    check_needs(args.detector, &detector, &*model, fit_folder.as_ref())?;
    let config = args.model.batches();
    let fit_batches = fit_folder
        .as_ref()
        .map(|f| f.prepare(&config))
        .transpose()?;
    let calibration_batches = calibration_folder
        .as_ref()
        .map(|f| f.prepare(&config))
        .transpose()?;
    if let Some(folder) = &fit_folder {
        println!(
            "fit data: {} images in {}",
            folder.len(),
            folder.root().display()
        );
    }
    let fit_progress = fit_batches
        .as_ref()
        .map(|b| Progress::new(b, format!("fitting {}", args.detector.as_str()), quiet));
    let calibration_progress = calibration_batches
        .as_ref()
        .map(|b| Progress::new(b, "calibrating", quiet));
    let summary = fit_and_save(
        &detector,
        &model,
        fit_progress.as_ref().map(|p| p as &dyn BatchSource),
        calibration_progress.as_ref().map(|p| p as &dyn BatchSource),
        args.alpha,
        &args.out,
        // How the images were prepared: `oodkit score` prepares its own so.
        &serde_json::json!({ "input": args.model.recipe() }),
    )?;
    for batches in fit_batches.iter().chain(&calibration_batches) {
        report_skipped(batches);
    }
    println!("{summary}");
    Ok(())
}

/// Fits, calibrates when asked, saves; says what it saved.
fn fit_and_save(
    detector: &UnfittedDetector,
    model: &Network,
    fit_data: Option<&dyn BatchSource>,
    calibration: Option<&dyn BatchSource>,
    alpha: f64,
    out: &Path,
    annotations: &serde_json::Value,
) -> Result<String> {
    let fitted = detector.fit(&**model, fit_data)?;
    let kind = fitted.kind();
    match calibration {
        Some(data) => {
            let calibrated = fitted.calibrate(&**model, data, alpha)?;
            calibrated.save_annotated(out, annotations)?;
            let (calibration, alpha) = calibrated
                .calibration()
                .ok_or_else(|| Error::custom("the calibration was lost"))?;
            Ok(format!(
                "saved a calibrated {kind} detector to {} (it flags scores >= {}: a false-alarm \
                 rate of {alpha} on in-distribution inputs; calibrated on {} images)",
                out.display(),
                calibration.threshold(alpha)?,
                calibration.len()
            ))
        }
        None => {
            fitted.save_annotated(out, annotations)?;
            Ok(format!(
                "saved the {kind} detector to {} (uncalibrated: it scores, it does not decide; \
                 pass --calibrate DIR for verdicts)",
                out.display()
            ))
        }
    }
}
