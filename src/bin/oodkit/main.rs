//! `oodkit`: out-of-distribution detection from the command line — metrics
//! of score files, and detectors fitted, saved, run and compared on folders
//! of images through an ONNX graph or the crate's networks.
//!
//! Exit codes: 0 success, 1 an error (one line on stderr saying what to
//! do), 2 a usage error (clap's message and usage).

mod detectors;
mod eval;
mod fit;
mod inputs;
mod inspect;
mod metrics;
mod outputs;
mod progress;
mod report;
mod score;
mod scores;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # Fit KNN on the training images, calibrate it at a 5% false-alarm rate, save it
  oodkit fit --model net.onnx --layer penultimate --data train/ --detector knn \\
      --calibrate heldout/ --out knn.oodkit
  # Score new images with it: score, p-value and verdict per image
  oodkit score --model net.onnx --detector knn.oodkit --data incoming/ --out scores.csv
  # The whole benchmark in one command
  oodkit eval --model net.onnx --fit-data train/ --id test/ \\
      --ood other/ --detectors mls,energy,knn,vim --plots figures/ --json report.json
  # What a graph offers: inputs, outputs, its last linear layer, feature nodes
  oodkit inspect net.onnx
  # Metrics of scores computed elsewhere
  oodkit metrics --id scores_in.npy --ood scores_out.npy --json metrics.json

Feature detectors read the input of the graph's last linear layer unless --layer
names a node or an output (oodkit inspect lists them).

Images: a folder of class folders (root/<class>/<image>, classes sorted by
name) or a flat folder; PNG and JPEG. Exit codes: 0 ok, 1 error, 2 usage.";

/// Out-of-distribution detection for neural networks.
#[derive(Parser, Debug)]
#[command(name = "oodkit", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// AUROC, FPR@95%TPR, AUPR of ID and OOD score files (and their figures).
    Metrics(metrics::MetricsArgs),
    /// Fit a detector on in-distribution images (and calibrate it); save it.
    Fit(fit::FitArgs),
    /// Score a folder of images with a saved detector.
    Score(score::ScoreArgs),
    /// Fit detectors, score an ID and an OOD folder, report their metrics.
    Eval(eval::EvalArgs),
    /// An ONNX graph's inputs, outputs, last linear layer and the nodes
    /// --layer can name, with their shapes.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    // Usage errors print clap's message and exit with 2; --help with 0.
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Metrics(args) => metrics::run(args),
        Command::Fit(args) => fit::run(args, cli.quiet),
        Command::Score(args) => score::run(args, cli.quiet),
        Command::Eval(args) => eval::run(args, cli.quiet),
        Command::Inspect(args) => inspect::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever a parser's message held.
            let message = e.to_string();
            let lines: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("error: {}", lines.join(" "));
            ExitCode::FAILURE
        }
    }
}
