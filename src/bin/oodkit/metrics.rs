//! `oodkit metrics`: the metrics of two score files, and their figures.

use std::path::{Path, PathBuf};

use ndarray::Array1;
use oodkit::metrics::{MetricReport, bench_metrics};
use oodkit::plots::{RocPlot, ScorePlot, plot_ood_scores, plot_roc_curve};
use oodkit::{Error, Result};

use crate::report::write_json;
use crate::scores;

/// The metrics every command reports.
pub const METRICS: [&str; 4] = ["auroc", "fpr95tpr", "aupr_in", "aupr_out"];

/// `oodkit metrics`.
#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    /// Scores of in-distribution inputs: .npy (a vector) or a .csv that
    /// `oodkit score` wrote.
    #[arg(long, value_name = "FILE")]
    pub id: PathBuf,
    /// Scores of out-of-distribution inputs, likewise.
    #[arg(long, value_name = "FILE")]
    pub ood: PathBuf,
    /// Draw the score histograms (scores.png) and the ROC curve (roc.png)
    /// in this folder.
    #[arg(long, value_name = "DIR", alias = "plot")]
    pub plots: Option<PathBuf>,
    /// Write the metrics as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs `oodkit metrics`.
pub fn run(args: &MetricsArgs) -> Result<()> {
    crate::outputs::Inputs::default()
        .with("--id", Some(&args.id))
        .with("--ood", Some(&args.ood))
        .check_reports(args.json.as_deref(), args.plots.as_deref())?;
    let id = scores::read(&args.id)?;
    let ood = scores::read(&args.ood)?;
    let report = bench_metrics(&id, &ood, &METRICS)?;
    println!("{} ID and {} OOD scores", id.len(), ood.len());
    println!("{report}");
    if let Some(dir) = &args.plots {
        plot(dir, "", "", &id, &ood)?;
        println!("figures in {}", dir.display());
    }
    if let Some(path) = &args.json {
        write_json(path, &report_json(&report))?;
    }
    Ok(())
}

/// `{"auroc": .., ...}`.
pub fn report_json(report: &MetricReport) -> serde_json::Value {
    serde_json::to_value(report).unwrap_or(serde_json::Value::Null)
}

/// `scores{suffix}.png` and `roc{suffix}.png` in `dir`, titled by `title`.
pub fn plot(
    dir: &Path,
    suffix: &str,
    title: &str,
    id: &Array1<f32>,
    ood: &Array1<f32>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let title = if title.is_empty() {
        String::new()
    } else {
        format!("{title} ")
    };
    plot_ood_scores(
        id,
        ood,
        &ScorePlot::new().title(format!("{title}scores (ID vs OOD)")),
        dir.join(format!("scores{suffix}.png")),
    )?;
    let auroc = oodkit::metrics::auroc(id, ood)?;
    plot_roc_curve(
        id,
        ood,
        &RocPlot::new().title(format!("{title}ROC curve (AUROC {auroc:.4})")),
        dir.join(format!("roc{suffix}.png")),
    )
}
