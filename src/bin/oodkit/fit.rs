//! `oodkit fit`: fit a detector on a folder of in-distribution images,
//! optionally calibrate its decision, and save it.

use std::path::{Path, PathBuf};

use oodkit::calibration::Calibrated;
use oodkit::datasets::BatchSource;
use oodkit::detectors::{Detector, FittedDetector, Persist};
use oodkit::{Error, Result};

use crate::detectors::{Action, FromAny, Name, Params, with_detector};
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
    #[arg(long, value_enum)]
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
    let model = args.model.load(
        &args.layers,
        fit_folder.as_ref().or(calibration_folder.as_ref()),
    )?;
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
    let summary = with_detector(
        args.detector,
        &args.params,
        &layer_ids(&args.layers),
        FitAndSave {
            model: &model,
            fit_data: fit_progress.as_ref().map(|p| p as &dyn BatchSource),
            calibration: calibration_progress.as_ref().map(|p| p as &dyn BatchSource),
            alpha: args.alpha,
            out: &args.out,
        },
    )?;
    for batches in fit_batches.iter().chain(&calibration_batches) {
        report_skipped(batches);
    }
    println!("{summary}");
    Ok(())
}

/// Fits, calibrates when asked, saves; says what it saved.
pub struct FitAndSave<'a> {
    pub model: &'a Network,
    pub fit_data: Option<&'a dyn BatchSource>,
    pub calibration: Option<&'a dyn BatchSource>,
    pub alpha: f64,
    pub out: &'a Path,
}

impl Action for FitAndSave<'_> {
    type Out = String;

    fn run<D>(self, detector: D) -> Result<String>
    where
        D: Detector,
        D::Fitted: Persist + 'static,
        Calibrated<D::Fitted>: Persist,
        <D::Fitted as FittedDetector>::Family: FromAny,
    {
        let model = <<D::Fitted as FittedDetector>::Family as FromAny>::from_any(&**self.model);
        let fitted = detector.fit_model(model, self.fit_data)?;
        let kind = fitted.kind();
        match self.calibration {
            Some(data) => {
                let calibrated = Calibrated::fit(fitted, model, data, self.alpha)?;
                calibrated.save(self.out)?;
                Ok(format!(
                    "saved a calibrated {kind} detector to {} (it flags scores >= {}: a false-alarm \
                     rate of {} on in-distribution inputs; calibrated on {} images)",
                    self.out.display(),
                    calibrated.threshold(),
                    self.alpha,
                    calibrated.calibration().len()
                ))
            }
            None => {
                fitted.save(self.out)?;
                Ok(format!(
                    "saved the {kind} detector to {} (uncalibrated: it scores, it does not decide; \
                     pass --calibrate DIR for verdicts)",
                    self.out.display()
                ))
            }
        }
    }
}
