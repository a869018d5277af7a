//! What the examples share: their command line, the data of the MNIST
//! 0-4 vs 5-9 experiment and its network, trained or loaded, and the score
//! plots.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::Device;
use ndarray::{Array4, s};
use oodkit::datasets::{OodDataset, PrepareConfig, Prepared, Split, data_root, mnist};
use oodkit::nets::{ToyConvnet, ToyConvnetConfig};
use oodkit::training::{Checkpoint, TrainConfig, load_checkpoint, train};
use oodkit::{Batch, Error, Result};

/// The options every MNIST example takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The data root holding mnist/ (default: $OODKIT_DATA_DIR, else
    /// ~/.oodkit/datasets; MNIST is downloaded there if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the trained network is kept; when it holds a checkpoint, the
    /// network is loaded from it instead of trained.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Seed of the network's initialisation, the shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training epochs.
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub epochs: usize,
}

/// A positive integer.
fn positive(value: &str) -> std::result::Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, not {value:?}")),
    }
}

/// Parses the command line `C` (clap: `--help`, and exit code 2 on a usage
/// error) and runs `run`, printing an error and exiting with 1 on one.
pub fn main<C: clap::Parser>(run: fn(&C) -> Result<()>) -> ExitCode {
    let cli = C::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json(path: &Path, report: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Error::custom(format!("encoding the report: {e}")))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| Error::custom(format!("writing {}: {e}", path.display())))
}

/// MNIST split as the notebook does: the training digits 0-4, and the test
/// set's digits 0-4 (ID) and 5-9 (OOD).
pub struct Mnist04 {
    /// Training images of the digits 0-4.
    pub train_in: OodDataset,
    /// Test images of the digits 0-4.
    pub test_in: OodDataset,
    /// Test images of the digits 5-9.
    pub test_out: OodDataset,
}

impl Mnist04 {
    /// Loads MNIST from the data root (`data_dir`, else `OODKIT_DATA_DIR`,
    /// else `~/.oodkit/datasets`), downloading it first when it is missing
    /// and the `download` feature is on.
    pub fn load(data_dir: Option<PathBuf>) -> Result<Self> {
        let dir = data_root(data_dir)?.join("mnist");
        if let Err(Error::MissingFile { .. }) = mnist::load(&dir, Split::Train)
            && cfg!(feature = "download")
        {
            eprintln!("MNIST is not in {}: downloading it", dir.display());
            #[cfg(feature = "download")]
            oodkit::datasets::download::mnist(&dir)?;
        }
        let in_labels = [0, 1, 2, 3, 4];
        let (train_in, _) = mnist::load(&dir, Split::Train)?.split_by_class(&in_labels)?;
        let (test_in, test_out) = mnist::load(&dir, Split::Test)?.split_by_class(&in_labels)?;
        println!(
            "MNIST: {} training images of digits 0-4; test: {} ID (0-4), {} OOD (5-9)",
            train_in.len(),
            test_in.len(),
            test_out.len()
        );
        Ok(Mnist04 {
            train_in,
            test_in,
            test_out,
        })
    }

    /// The training batches: 128 images scaled to [0, 1], shuffled with `seed`.
    pub fn train_batches(&self, seed: u64) -> Result<Prepared<'_>> {
        self.train_in.prepare(&batches().shuffle(seed))
    }

    /// The ID and OOD test batches: 128 images scaled to [0, 1], in order.
    pub fn test_batches(&self) -> Result<(Prepared<'_>, Prepared<'_>)> {
        Ok((
            self.test_in.prepare(&batches())?,
            self.test_out.prepare(&batches())?,
        ))
    }
}

/// Batches of 128, pixels scaled to [0, 1] (the notebook's `x / 255`).
pub fn batches() -> PrepareConfig {
    batches_of(128)
}

/// Batches of `size`, pixels scaled to [0, 1].
pub fn batches_of(size: usize) -> PrepareConfig {
    PrepareConfig::new(size).preprocess(|mut batch: Batch| {
        batch.inputs /= 255.0;
        Ok(batch)
    })
}

/// The notebook's network (ten outputs, though only five classes are seen),
/// loaded from `args.model_dir` when it holds a checkpoint, else trained for
/// `args.epochs` on `train_batches` (validated on `validation`) and saved
/// there. Returns it with its training time (`None` when loaded).
pub fn trained_or_loaded(
    args: &Args,
    device: &Device,
    train_batches: &Prepared<'_>,
    validation: &Prepared<'_>,
) -> Result<(ToyConvnet, Option<f64>)> {
    device.seed(args.seed);
    let network = ToyConvnetConfig::new(1, 28, 10).init(device)?;
    let checkpoint = args
        .model_dir
        .as_deref()
        .map(|dir: &Path| Checkpoint::Last.path(dir));
    if let Some(path) = checkpoint.filter(|path| path.is_file()) {
        println!("loading the model from {}", path.display());
        return Ok((load_checkpoint(network, path)?, None));
    }
    let mut config = TrainConfig::new(args.epochs).with_seed(args.seed);
    if let Some(dir) = &args.model_dir {
        config = config.with_save_dir(dir);
    }
    let trained = train(network, train_batches, Some(validation), &config)?;
    println!(
        "trained {} epochs in {:.1} s ({:.0} images/s)",
        args.epochs,
        trained.train_seconds(),
        trained.samples_per_second()
    );
    let seconds = trained.train_seconds();
    Ok((trained.model, Some(seconds)))
}

/// `scores_<files>.png` (histograms, log scale when asked) and
/// `roc_<files>.png` in `dir`, titled with `title`.
#[cfg(feature = "plots")]
#[allow(dead_code)] // not every example draws
pub fn plot_scores(
    dir: &Path,
    files: &str,
    title: &str,
    log_scale: bool,
    scores_in: &ndarray::Array1<f32>,
    scores_out: &ndarray::Array1<f32>,
) -> Result<()> {
    use oodkit::plots::{RocPlot, ScorePlot, plot_ood_scores, plot_roc_curve};
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::custom(format!("creating {}: {e}", dir.display())))?;
    let histogram = ScorePlot::new()
        .title(format!("{title} scores"))
        .log_scale(log_scale);
    plot_ood_scores(
        scores_in,
        scores_out,
        &histogram,
        dir.join(format!("scores_{files}.png")),
    )?;
    let auroc = oodkit::metrics::auroc(scores_in, scores_out)?;
    let roc = RocPlot::new().title(format!("{title} ROC curve (AUROC {auroc:.4})"));
    plot_roc_curve(
        scores_in,
        scores_out,
        &roc,
        dir.join(format!("roc_{files}.png")),
    )
}

#[allow(dead_code)] // the CIFAR examples
/// `weights/akamaster_resnet_cifar10/resnet<depth>-*.safetensors` under the
/// data root.
pub fn weights_file(root: &Path, depth: usize) -> Result<PathBuf> {
    let dir = root.join("weights/akamaster_resnet_cifar10");
    let prefix = format!("resnet{depth}-");
    let found = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".safetensors"))
        });
    found.ok_or_else(|| Error::MissingFile {
        path: dir.join(format!("{prefix}*.safetensors")),
        hint: "the pretrained CIFAR ResNets (github.com/akamaster/pytorch_resnet_cifar10) \
               converted to safetensors; depths 20, 32, 44, 56"
            .into(),
    })
}

#[allow(dead_code)] // the CIFAR examples
/// MNIST digits as CIFAR-shaped images: 28x28 zero-padded to 32x32 (2
/// pixels each side), the grey level repeated over R, G and B.
pub fn mnist_as_cifar(digits: &OodDataset) -> Result<OodDataset> {
    let n = digits.len();
    let mut images = Array4::<f32>::zeros((n, 3, 32, 32));
    for c in 0..3 {
        images
            .slice_mut(s![.., c..c + 1, 2..30, 2..30])
            .assign(digits.inputs());
    }
    OodDataset::from_arrays(images, digits.labels().clone())
}
