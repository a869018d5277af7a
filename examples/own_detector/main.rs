//! A detector of your own, first class: defined outside the crate
//! (`detector.rs`: a standardised distance to the mean fit feature), it is
//! registered, built by name with parameters, fitted through a model,
//! scored, calibrated, saved and loaded back by its kind through
//! `AnyDetector`, like the crate's own.
//!
//! ```text
//! cargo run --example own_detector
//! ```
//!
//! The data is made here: 4-pixel "images" whose pixels are the features;
//! the in-distribution ones scatter around 0, the OOD ones around 2.

mod detector;

use ndarray::{Array1, Array4, ArrayView4, Axis};
use oodkit::OodDataset;
use oodkit::detectors::registry::{self, Params};
use oodkit::detectors::{AnyDetector, FittedFeatures, Persist};
use oodkit::model::from_fn_with_features;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use detector::{FittedMeanDistance, REGISTRATION};

/// `n` images of 1 x 2 x 2 pixels, each uniform in `centre ± 1.5` with
/// one pixel spread wider.
fn images(n: usize, centre: f32, seed: u64) -> Array4<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array4::from_shape_fn((n, 1, 2, 2), |(_, _, i, j)| {
        let spread = if (i, j) == (0, 0) { 4.0 } else { 1.0 };
        centre + spread * (rng.random::<f32>() * 3.0 - 1.5)
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The network: its one feature layer is the flattened image; two
    // classes whose logits are the first and the last pixel.
    let model = from_fn_with_features(["pixels"], |x: ArrayView4<f32>| {
        let pixels = x.to_shape((x.shape()[0], 4))?.to_owned();
        let logits = ndarray::stack![Axis(1), pixels.column(0), pixels.column(3)];
        Ok((vec![pixels], logits))
    });

    registry::register(&REGISTRATION)?;
    // Registered once: a second time (or a kind the crate has) is refused.
    assert!(registry::register(&REGISTRATION).is_err());

    let fit = OodDataset::from_arrays(images(500, 0.0, 1), Array1::zeros(500))?;
    let calibration = OodDataset::from_arrays(images(300, 0.0, 2), Array1::zeros(300))?;
    let id = OodDataset::from_arrays(images(400, 0.0, 3), Array1::zeros(400))?;
    let ood = OodDataset::from_arrays(images(400, 2.0, 4), Array1::zeros(400))?;

    let unfitted = registry::find("mean-distance")?.build(&Params::new().set("floor", 1e-4))?;
    let fitted = unfitted
        .fit(&model, Some(&fit))?
        .calibrate(&model, &calibration, 0.05)?;
    let (id_scores, ood_scores) = (fitted.score(&model, &id)?, fitted.score(&model, &ood)?);
    let auroc = oodkit::metrics::auroc(&id_scores.scores, &ood_scores.scores)?;
    let flagged = |d: &OodDataset| -> oodkit::Result<f64> {
        let verdicts = fitted.verdicts(&model, d)?;
        Ok(verdicts.iter().filter(|v| v.is_ood).count() as f64 / verdicts.len() as f64)
    };
    let (false_alarms, caught) = (flagged(&id)?, flagged(&ood)?);
    println!(
        "{}: AUROC {auroc:.4}; calibrated at α = 0.05, {:.1} % of ID flagged, {:.1} % of OOD",
        fitted.kind(),
        100.0 * false_alarms,
        100.0 * caught
    );

    // Saved, and read back by its kind alone.
    let dir = std::env::temp_dir().join(format!("oodkit-own-detector-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("mean_distance.oodkit");
    fitted.save(&path)?;
    let loaded = AnyDetector::load(&path)?;
    assert_eq!(loaded.kind(), detector::KIND);
    assert!(loaded.is_calibrated());
    assert_eq!(loaded.score(&model, &ood)?.scores, ood_scores.scores);
    // The typed detector reads the same file.
    let typed = oodkit::calibration::Calibrated::<FittedFeatures<FittedMeanDistance>>::load(&path)?;
    assert_eq!(typed.fitted().states().len(), 1);
    println!(
        "saved to {} and loaded back by its kind: the same scores, bit for bit",
        path.display()
    );
    std::fs::remove_dir_all(&dir)?;

    if auroc < 0.9 || false_alarms > 0.12 {
        return Err(
            format!("unexpected figures: AUROC {auroc}, false alarms {false_alarms}").into(),
        );
    }
    Ok(())
}
