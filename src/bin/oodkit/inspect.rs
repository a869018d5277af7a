//! `oodkit inspect`: what an ONNX graph offers the detectors — its inputs
//! and outputs, its last linear layer (the default --layer) and the nodes
//! a feature detector can read, with their shapes.

use std::path::PathBuf;

use oodkit::Result;
use oodkit::model::GraphSummary;

/// `oodkit inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The ONNX graph (its weights may be in a .data file beside it).
    #[arg(value_name = "FILE.onnx")]
    pub graph: PathBuf,
}

/// Runs `oodkit inspect`.
pub fn run(args: &InspectArgs) -> Result<()> {
    print!("{}", GraphSummary::of(&args.graph)?);
    Ok(())
}
