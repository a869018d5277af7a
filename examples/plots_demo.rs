//! The three plots on synthetic data: score histograms (linear and log
//! scale), a ROC curve, and 2-D feature maps (PCA and t-SNE).
//!
//! ```sh
//! cargo run --release --example plots_demo -- [OUT_DIR]   # default: plots_demo/
//! ```

use std::path::PathBuf;

use ndarray::{Array1, Array2};
use oodkit::plots::{
    FeaturePlot, Projection, RocPlot, ScorePlot, plot_2d_features, plot_ood_scores, plot_roc_curve,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A normal sample by Box-Muller.
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn main() -> oodkit::Result<()> {
    let out_dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "plots_demo".into()),
    );
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| oodkit::Error::custom(format!("{}: {e}", out_dir.display())))?;
    let mut rng = StdRng::seed_from_u64(0);

    // MLS-like scores: ID around -12, OOD around -7, overlapping.
    let scores_in: Vec<f32> = (0..5000).map(|_| -12.0 + 2.5 * normal(&mut rng)).collect();
    let scores_out: Vec<f32> = (0..5000).map(|_| -7.0 + 2.5 * normal(&mut rng)).collect();
    plot_ood_scores(
        &scores_in,
        &scores_out,
        &ScorePlot::new(),
        out_dir.join("scores.png"),
    )?;
    plot_roc_curve(
        &scores_in,
        &scores_out,
        &RocPlot::new(),
        out_dir.join("roc.png"),
    )?;

    // MSP-like scores: piled up near -1, log scale.
    let squash = |s: f32| -1.0 / (1.0 + (s + 8.0).exp());
    let msp_in: Vec<f32> = scores_in.iter().map(|&s| squash(s)).collect();
    let msp_out: Vec<f32> = scores_out.iter().map(|&s| squash(s)).collect();
    plot_ood_scores(
        &msp_in,
        &msp_out,
        &ScorePlot::new().log_scale(true).title("MSP scores"),
        out_dir.join("scores_log.png"),
    )?;

    // Features: five ID classes in 64-D, OOD points between them.
    let classes = 5;
    let per_class = 300;
    let centres = Array2::from_shape_fn((classes, 64), |_| 4.0 * normal(&mut rng));
    let features_in = Array2::from_shape_fn((classes * per_class, 64), |(i, j)| {
        centres[[i / per_class, j]] + normal(&mut rng)
    });
    let labels_in = Array1::from_iter((0..classes * per_class).map(|i| (i / per_class) as i64));
    let features_out = Array2::from_shape_fn((600, 64), |(_, j)| {
        centres.column(j).mean().unwrap_or(0.0) + 2.0 * normal(&mut rng)
    });
    plot_2d_features(
        &features_in,
        &labels_in,
        &features_out,
        &FeaturePlot::new(),
        out_dir.join("features_pca.png"),
    )?;
    let tsne = FeaturePlot::new().method(Projection::tsne());
    plot_2d_features(
        &features_in,
        &labels_in,
        &features_out,
        &tsne,
        out_dir.join("features_tsne.png"),
    )?;

    println!(
        "wrote scores.png, scores_log.png, roc.png, features_pca.png, features_tsne.png to {}",
        out_dir.display()
    );
    Ok(())
}
