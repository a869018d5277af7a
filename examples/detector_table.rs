//! Every detector of the crate on two experiments, as one Markdown table
//! (BENCHMARKS.md holds it): AUROC, FPR@95%TPR, fit and scoring time.
//!
//! - **MNIST 0-4 vs 5-9** (the reference experiment): the toy convnet
//!   trained on MNIST digits 0-4; ID = test digits 0-4, OOD = test digits
//!   5-9; the feature detectors fit on the training images of 0-4.
//! - **CIFAR-10 vs MNIST**: the pretrained ResNet-20 (the shared
//!   weights). There is no CIFAR-10 training split here and the shared
//!   test set is sorted by class, so the detectors fit on its even-indexed
//!   records (5 000) and score its odd-indexed ones (ID, 5 000) against the
//!   MNIST test set (OOD, 10 000 images zero-padded to 32x32 over three
//!   channels). The penultimate features and logits are computed once;
//!   the detectors that need more of the network (ODIN's input step, Gram
//!   and multi-layer Mahalanobis on inner layers, RankFeat) run it.
//!
//! ```sh
//! cargo run --release --example detector_table -- \
//!     [--data-dir DIR] [--model-dir DIR] [--seed N] [--epochs N] [--experiments mnist,cifar]
//! ```
//!
//! The MNIST options are `mnist_mls_msp`'s: with the same `--model-dir`,
//! both examples score the same trained network. The data root must hold
//! `mnist/` and, for the CIFAR experiment, `cifar10/` and
//! `weights/akamaster_resnet_cifar10/`.

#[allow(dead_code)] // the JSON report serves the other examples
mod common;

use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use clap::{Parser, ValueEnum};
use common::{Args, Mnist04, trained_or_loaded};
use ndarray::{Array1, Array2, ArrayView4, Axis, concatenate};
use oodkit::datasets::transforms::imagenet_preprocess;
use oodkit::datasets::{BatchSource, OodDataset, PrepareConfig, Split, cifar10, data_root, mnist};
use oodkit::detectors::registry::{self, Capability, Params, Registration, UnfittedDetector};
use oodkit::detectors::{AnyModel, Detector, Rectification, ScoreOutput, Vra};
use oodkit::metrics::{accuracy, bench_metrics};
use oodkit::model::{
    BurnModel, FeatureModel, LastLayer, LayerId, Model, Shaping, evaluate, from_fn_with_features,
};
use oodkit::nets::CifarResNet;
use oodkit::{Error, Result};

/// Every detector on MNIST 0-4 vs 5-9 and CIFAR-10 vs MNIST, as one
/// Markdown table.
#[derive(Parser, Debug)]
#[command(
    after_help = "Example: detector_table --data-dir ../shared/datasets --model-dir models/mnist"
)]
struct Cli {
    #[command(flatten)]
    mnist: Args,
    /// The experiments to run (their columns of the table).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "mnist,cifar")]
    experiments: Vec<Experiment>,
}

/// An experiment: a column set of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Experiment {
    /// The toy convnet on MNIST 0-4 vs 5-9.
    Mnist,
    /// The pretrained ResNet-20 on CIFAR-10 vs MNIST.
    Cifar,
}

fn main() -> ExitCode {
    common::main(run)
}

/// One row's figures in one experiment.
#[derive(Debug, Clone, Copy)]
struct Figures {
    auroc: f64,
    fpr: f64,
    fit_seconds: f64,
    score_seconds: f64,
}

/// The table: rows in first-seen order, one cell per experiment.
#[derive(Default)]
struct Results {
    rows: Vec<(String, [Option<Figures>; 2])>,
}

impl Results {
    fn put(&mut self, name: &str, column: usize, figures: Figures) {
        eprintln!(
            "  {name}: AUROC {:.4}, FPR@95 {:.4} ({:.1} s + {:.1} s)",
            figures.auroc, figures.fpr, figures.fit_seconds, figures.score_seconds
        );
        match self.rows.iter_mut().find(|(n, _)| n == name) {
            Some((_, cells)) => cells[column] = Some(figures),
            None => {
                let mut cells = [None, None];
                cells[column] = Some(figures);
                self.rows.push((name.to_owned(), cells));
            }
        }
    }

    fn print(&self) {
        println!(
            "| detector | MNIST AUROC | MNIST FPR@95 | MNIST fit | MNIST scoring | CIFAR AUROC | \
             CIFAR FPR@95 | CIFAR fit | CIFAR scoring |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (name, cells) in &self.rows {
            let cell = |f: &Option<Figures>| match f {
                Some(f) => format!(
                    "{:.4} | {:.4} | {:.2} s | {:.2} s",
                    f.auroc, f.fpr, f.fit_seconds, f.score_seconds
                ),
                None => "— | — | — | —".into(),
            };
            println!("| {name} | {} | {} |", cell(&cells[0]), cell(&cells[1]));
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let mut results = Results::default();
    if cli.experiments.contains(&Experiment::Mnist) {
        mnist_rows(&cli.mnist, &mut results)?;
    }
    if cli.experiments.contains(&Experiment::Cifar) {
        cifar_rows(&cli.mnist, &mut results)?;
    }
    results.print();
    Ok(())
}

/// The rows both experiments share: every registered detector that needs
/// no more of the network than its penultimate features and last layer,
/// at its defaults (ODIN without its input step; NNGuide's bank fraction
/// `bank`). `model` runs the network (or its cached penultimate features),
/// `fit` is the fit data.
fn shared_rows(
    table: &Table,
    results: &mut Results,
    model: &AnyModel<'_>,
    fit: &dyn BatchSource,
    bank: f64,
) -> Result<()> {
    for registration in registry::all() {
        let params = match registration.name() {
            "odin" => Params::new().set("epsilon", 0.0),
            "nnguide" => Params::new().set("bank_fraction", bank),
            _ => Params::new(),
        };
        let through_network = registration
            .needs()
            .capabilities
            .iter()
            .any(|c| matches!(c, Capability::MapEditing | Capability::StochasticPasses));
        if through_network {
            continue;
        }
        let name = label(registration, &params);
        let detector = registration.build(&params)?;
        let fit = registration.needs().fit_data.then_some(fit);
        results.put(&name, table.column, table.row(&detector, model, fit)?);
    }
    // A variant the registry's defaults do not show.
    let vra_p = Vra::default().with_rectification(Rectification::Piecewise { gamma: 0.5 })?;
    let name = "VRA-P (10% / 90%, γ = 0.5)";
    let scorer = vra_p.fit(model, Some(fit))?;
    results.put(
        name,
        table.column,
        table.figures(|data| scorer.score(data))?,
    );
    Ok(())
}

/// The registered detector `name` at its defaults.
fn by_name(name: &str) -> Result<UnfittedDetector> {
    registry::find(name)?.build(&Params::new())
}

/// A row's name: the kind, and the parameters set away from the defaults.
fn label(registration: &Registration, params: &Params) -> String {
    if params.names().next().is_none() {
        registration.kind().to_owned()
    } else {
        format!("{} ({params})", registration.kind())
    }
}

/// The MNIST column: the toy convnet, trained or loaded.
fn mnist_rows(args: &Args, results: &mut Results) -> Result<()> {
    let mnist = Mnist04::load(args.data_dir.clone())?;
    let train_batches = mnist.train_batches(args.seed)?;
    let (ds_in, ds_out) = mnist.test_batches()?;
    let device = Device::flex();
    let (network, _) = trained_or_loaded(args, &device, &train_batches, &ds_in)?;
    let model = BurnModel::new(network, &device);
    eprintln!("MNIST: test accuracy {:.4}", evaluate(&model, &ds_in)?);
    let table = Table {
        column: 0,
        ds_in: &ds_in,
        ds_out: &ds_out,
    };
    let fit_all = mnist.train_in.prepare(&common::batches())?;
    shared_rows(&table, results, &model, &fit_all, 0.01)?;
    network_rows(
        &table,
        results,
        &model,
        &fit_all,
        ["pool1", "pool2", "flatten"],
    )?;

    // Activation shaping of the penultimate layer, ReAct's threshold fitted
    // on 5 000 training images.
    let fit_indices: Vec<usize> = (0..5_000.min(mnist.train_in.len())).collect();
    let fit_set = mnist.train_in.subset(&fit_indices)?;
    let fit_batches = fit_set.prepare(&common::batches())?;
    for (name, shaping) in shapings(&model, &fit_batches)? {
        let shaped = model.clone().with_shaping(shaping)?;
        results.put(
            &format!("MLS + {name}"),
            0,
            table.row(&by_name("mls")?, &shaped, None)?,
        );
        let energy = format!("Energy + {name}");
        let row = table.row(&by_name("energy")?, &shaped, None)?;
        results.put(&energy, 0, row);
    }
    Ok(())
}

/// ReAct (90%, fitted on `fit`), ASH-S (90%), SCALE (85%).
fn shapings(model: &dyn Model, fit: &dyn BatchSource) -> Result<Vec<(&'static str, Shaping)>> {
    Ok(vec![
        ("ReAct (90%)", Shaping::react(model, Some(fit), 0.9)?),
        ("ASH-S (90%)", Shaping::ash(0.9)?),
        ("SCALE (85%)", Shaping::scale(0.85)?),
    ])
}

/// The rows that run the network itself: ODIN's input step, Gram on the
/// two inner layers, Mahalanobis on all three, and every registered
/// detector that needs the network (RankFeat; MC dropout where the network
/// has dropout).
fn network_rows(
    table: &Table,
    results: &mut Results,
    model: &AnyModel<'_>,
    fit: &dyn BatchSource,
    layers: [&str; 3],
) -> Result<()> {
    let c = table.column;
    let inner: Vec<LayerId> = layers[..2].iter().map(|&l| l.into()).collect();
    let all: Vec<LayerId> = layers.iter().map(|&l| l.into()).collect();
    let rows = [
        ("ODIN (T = 1000, ε = 0.0014)", "odin", Params::new(), false),
        (
            "Gram (orders 1-5, q = 0.01; the two inner layers)",
            "gram",
            Params::new().with_layers(inner),
            true,
        ),
        (
            "Mahalanobis (three layers, std-normalised)",
            "mahalanobis",
            Params::new().with_layers(all),
            true,
        ),
    ];
    for (name, kind, params, with_fit) in rows {
        let detector = registry::find(kind)?.build(&params)?;
        let fit = with_fit.then_some(fit);
        results.put(name, c, table.row(&detector, model, fit)?);
    }
    for registration in registry::all() {
        let needs = registration.needs();
        let through_network = needs
            .capabilities
            .iter()
            .any(|c| matches!(c, Capability::MapEditing | Capability::StochasticPasses));
        if !through_network {
            continue;
        }
        let detector = registration.build(&Params::new())?;
        match table.row(&detector, model, needs.fit_data.then_some(fit)) {
            Ok(figures) => results.put(registration.kind(), c, figures),
            // MC dropout on a network without dropout: not a row.
            Err(Error::Unsupported { what, .. }) => {
                eprintln!("  {}: not run ({what})", registration.kind());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The CIFAR column: ResNet-20 fitted on the even-indexed test records.
fn cifar_rows(args: &Args, results: &mut Results) -> Result<()> {
    let root = data_root(args.data_dir.clone())?;
    let cifar = cifar10::load(root.join("cifar10"), Split::Test)?;
    let even: Vec<usize> = (0..cifar.len()).step_by(2).collect();
    let odd: Vec<usize> = (1..cifar.len()).step_by(2).collect();
    let (fit_set, id_set) = (cifar.subset(&even)?, cifar.subset(&odd)?);
    let ood_set = common::mnist_as_cifar(&mnist::load(root.join("mnist"), Split::Test)?)?;
    let device = Device::flex();
    let network = CifarResNet::from_safetensors(common::weights_file(&root, 20)?, 20, &device)?;
    let resnet = BurnModel::new(network, &device);
    let config = PrepareConfig::new(500).preprocess(imagenet_preprocess);
    let (fit_images, id_images, ood_images) = (
        fit_set.prepare(&config)?,
        id_set.prepare(&config)?,
        ood_set.prepare(&config)?,
    );

    // The penultimate features and logits, once.
    let started = Instant::now();
    let fit = Penultimate::of(&resnet, &fit_images)?;
    let id = Penultimate::of(&resnet, &id_images)?;
    let ood = Penultimate::of(&resnet, &ood_images)?;
    eprintln!(
        "CIFAR: features of {} images in {:.1} s; ID accuracy {:.4} (fit half {:.4})",
        fit_set.len() + id_set.len() + ood_set.len(),
        started.elapsed().as_secs_f64(),
        accuracy(id.logits.view(), id_set.labels().view())?,
        accuracy(fit.logits.view(), fit_set.labels().view())?,
    );
    let (weights, bias) = resnet.head_parameters()?;
    let cached = |shaping: Option<Shaping>| cached_model(weights.clone(), bias.clone(), shaping);
    let plain = cached(None)?;
    let as_batches = |p: &Penultimate, labels: &Array1<i64>| -> Result<OodDataset> {
        let n = p.features.nrows();
        let images = p
            .features
            .clone()
            .into_shape_with_order((n, 1, 1, p.features.ncols()))?;
        OodDataset::from_arrays(images, labels.clone())
    };
    let fit_features = as_batches(&fit, fit_set.labels())?;
    let id_features = as_batches(&id, id_set.labels())?;
    let ood_features = as_batches(&ood, ood_set.labels())?;
    let batches = PrepareConfig::new(500);
    let (fit_cached, id_cached, ood_cached) = (
        fit_features.prepare(&batches)?,
        id_features.prepare(&batches)?,
        ood_features.prepare(&batches)?,
    );
    let table = Table {
        column: 1,
        ds_in: &id_cached,
        ds_out: &ood_cached,
    };
    shared_rows(&table, results, &plain, &fit_cached, 0.1)?;
    let through_network = Table {
        column: 1,
        ds_in: &id_images,
        ds_out: &ood_images,
    };
    network_rows(
        &through_network,
        results,
        &resnet,
        &fit_images,
        ["layer1", "layer2", "pool"],
    )?;
    for (name, shaping) in shapings(&plain, &fit_cached)? {
        let shaped = cached(Some(shaping))?;
        results.put(
            &format!("MLS + {name}"),
            1,
            table.row(&by_name("mls")?, &shaped, None)?,
        );
        let energy = format!("Energy + {name}");
        let row = table.row(&by_name("energy")?, &shaped, None)?;
        results.put(&energy, 1, row);
    }
    Ok(())
}

/// A network's penultimate features and logits of a dataset.
struct Penultimate {
    features: Array2<f32>,
    logits: Array2<f32>,
}

impl Penultimate {
    fn of(model: &dyn FeatureModel, data: &dyn BatchSource) -> Result<Self> {
        let (mut features, mut logits) = (Vec::new(), Vec::new());
        for batch in data.batches()? {
            let out = model.forward_features_owned(batch?.inputs, &[LayerId::Index(-2)])?;
            features.extend(out.features);
            logits.push(out.logits);
        }
        let join = |parts: &[Array2<f32>]| -> Result<Array2<f32>> {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            Ok(concatenate(Axis(0), &views)?)
        };
        Ok(Penultimate {
            features: join(&features)?,
            logits: join(&logits)?,
        })
    }
}

type Forward =
    Box<dyn Fn(ArrayView4<f32>) -> Result<(Vec<Array2<f32>>, Array2<f32>)> + Send + Sync>;

/// A model over cached penultimate features `(N, 1, 1, D)`: its one
/// feature layer is them, its logits the last layer on them (shaped
/// first, when asked), exactly what the network computes from there.
fn cached_model(
    weights: Array2<f32>,
    bias: Array1<f32>,
    shaping: Option<Shaping>,
) -> Result<oodkit::model::FnFeatureModel<Forward>> {
    let (w, b) = (weights.clone(), bias.clone());
    let forward: Forward = Box::new(move |x: ArrayView4<f32>| {
        let (n, d) = (x.shape()[0], x.shape()[3]);
        let features = x.to_shape((n, d))?.to_owned();
        let logits = match &shaping {
            Some(s) => s.logits(features.view(), w.t(), b.view())?,
            None => features.dot(&w.t()) + &b,
        };
        Ok((vec![features], logits))
    });
    from_fn_with_features(["pool"], forward).with_head(weights, bias)
}

/// The test sets every row of one experiment scores.
struct Table<'a> {
    column: usize,
    ds_in: &'a dyn BatchSource,
    ds_out: &'a dyn BatchSource,
}

impl Table<'_> {
    /// Fits `detector` on `model` (and `fit_data`), scores both sets and
    /// returns the figures.
    fn row(
        &self,
        detector: &UnfittedDetector,
        model: &AnyModel<'_>,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<Figures> {
        let started = Instant::now();
        let fitted = detector.fit(model, fit_data)?;
        let fit_seconds = started.elapsed().as_secs_f64();
        let mut figures = self.figures(|data| fitted.score(model, data))?;
        figures.fit_seconds = fit_seconds;
        Ok(figures)
    }

    /// Scores both sets with `score` and measures them (fit time 0).
    fn figures(&self, score: impl Fn(&dyn BatchSource) -> Result<ScoreOutput>) -> Result<Figures> {
        let started = Instant::now();
        let scores_in = score(self.ds_in)?.scores;
        let scores_out = score(self.ds_out)?.scores;
        let score_seconds = started.elapsed().as_secs_f64();
        let report = bench_metrics(&scores_in, &scores_out, &["auroc", "fpr95tpr"])?;
        let figure = |metric: &str| {
            report
                .get(metric)
                .ok_or_else(|| Error::custom(format!("{metric} missing from the report")))
        };
        Ok(Figures {
            auroc: figure("auroc")?,
            fpr: figure("fpr95tpr")?,
            fit_seconds: 0.0,
            score_seconds,
        })
    }
}
