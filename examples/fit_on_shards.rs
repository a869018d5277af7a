//! Fitting on shards, as a cluster's workers would: the fit features are
//! cut into four partitions and four worker **processes** (this program,
//! run again with `worker ...`) each fit the first pass of their own
//! partition and save the partial fit to a file; the driver loads and
//! merges the files. For a detector with a second pass (ViM) the driver
//! saves the merged fit, each worker loads it, runs the second pass over
//! its partition and saves it again, and those merge. The result is
//! checked against the one-pass fit on all the features: the example exits
//! non-zero when a score differs by more than 1e-6 relative.
//!
//! Workers share no memory with the driver: each regenerates the (seeded)
//! data set and keeps its partition, as a worker reads its own part of a
//! data set on a cluster; the files are all that travels.
//!
//! ```sh
//! cargo run --features cli --example fit_on_shards -- 40000
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{Array1, Array2, s};
use oodkit::detectors::{
    FeatureDetector, Knn, Mahalanobis, PartialFit, PartialState, Persist, PrincipalDims, Rmds,
    ScoreFeatures, Vim,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const WIDTH: usize = 64;
const CLASSES: usize = 10;
const WORKERS: usize = 4;
const DETECTORS: [&str; 4] = ["mahalanobis", "rmds", "knn", "vim"];

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("worker") => worker(&args[1..]),
        _ => driver(args.first()),
    }
}

/// The rows of partition `k` of `rows`: uneven, as a cluster's partitions
/// are.
fn partition(rows: usize, k: usize) -> std::ops::Range<usize> {
    let cuts = [0, rows / 7, rows / 2, rows * 4 / 5, rows];
    cuts[k]..cuts[k + 1]
}

fn driver(rows: Option<&String>) -> Result<(), Failure> {
    let rows: usize = match rows {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("the argument is the number of fit rows, got {arg:?}: {e}"))?,
        None => 40_000,
    };
    if rows < WORKERS * CLASSES * 2 {
        return Err(format!("give at least {} fit rows", WORKERS * CLASSES * 2).into());
    }
    let queries = class_features(2_000, 1).0.mapv(|v| 1.2 * v);
    let dir = tempfile::tempdir()?;
    let mut worst = 0.0_f32;
    for name in DETECTORS {
        let difference = match name {
            "mahalanobis" => compare(&Mahalanobis::new(), name, rows, dir.path(), &queries)?,
            "rmds" => compare(&Rmds::new(), name, rows, dir.path(), &queries)?,
            "knn" => compare(&Knn::new(50)?, name, rows, dir.path(), &queries)?,
            _ => compare(&vim()?, name, rows, dir.path(), &queries)?,
        };
        worst = worst.max(difference);
    }
    if worst > 1e-6 {
        return Err(format!("a sharded fit differs from the one-pass fit by {worst:e}").into());
    }
    println!("every sharded fit scores as the one-pass fit (largest difference {worst:e})");
    Ok(())
}

/// ViM, with a head (it needs one on precomputed features).
fn vim() -> oodkit::Result<Vim> {
    let (w, b) = head();
    Vim::new(PrincipalDims::Count(WIDTH / 4))?.with_head(w, b)
}

/// Fits `detector` on worker processes and on everything at once, prints
/// the largest relative difference of their scores on `queries`, and
/// returns it.
fn compare<D>(
    detector: &D,
    name: &str,
    rows: usize,
    dir: &Path,
    queries: &Array2<f32>,
) -> Result<f32, Failure>
where
    D: FeatureDetector,
    D::Fitter: PartialState,
{
    let sharded = fit_on_workers::<D>(name, rows, dir)?;
    let (features, labels) = class_features(rows, 0);
    let whole = detector.fit_features(features.view(), labels.view())?;
    let (a, b) = (
        sharded.score_features(queries.view())?,
        whole.score_features(queries.view())?,
    );
    let worst = a
        .iter()
        .zip(&b)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0, f32::max);
    println!(
        "{:<12} fitted by {WORKERS} worker processes: largest relative score difference \
         {worst:.1e}",
        detector.name(),
    );
    Ok(worst)
}

/// The driver: one worker process per partition for each pass, their
/// partial fits merged in the partitions' order.
fn fit_on_workers<D>(name: &str, rows: usize, dir: &Path) -> Result<D::Fitted, Failure>
where
    D: FeatureDetector,
    D::Fitter: PartialState,
{
    let firsts = run_workers(name, "first", rows, dir)?;
    let mut merged = merge::<D>(&firsts)?;
    if merged.end_first_pass()? {
        // The second pass needs what the first found: each worker loads the
        // merged fit.
        merged.save(merged_path(dir, name))?;
        let seconds = run_workers(name, "second", rows, dir)?;
        merged = merge::<D>(&seconds)?;
    }
    Ok(merged.finish()?)
}

fn merged_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-merged.oodkit"))
}

/// Starts one worker process per partition and waits for them; returns
/// the files they wrote, in order.
fn run_workers(name: &str, pass: &str, rows: usize, dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let program = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut outputs = Vec::new();
    for k in 0..WORKERS {
        let out = dir.join(format!("{name}-{pass}-{k}.oodkit"));
        let child = Command::new(&program)
            .arg("worker")
            .args([name, pass, &k.to_string(), &rows.to_string()])
            .arg(dir)
            .arg(&out)
            .spawn()?;
        children.push(child);
        outputs.push(out);
    }
    for (k, mut child) in children.into_iter().enumerate() {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("worker {k} of {name}'s {pass} pass failed ({status})").into());
        }
    }
    Ok(outputs)
}

fn merge<D>(paths: &[PathBuf]) -> Result<PartialFit<D>, Failure>
where
    D: FeatureDetector,
    D::Fitter: PartialState,
{
    let (first, rest) = paths.split_first().ok_or("no partial fit to merge")?;
    let mut merged = PartialFit::<D>::load(first)?;
    for path in rest {
        merged.merge(PartialFit::load(path)?)?;
    }
    Ok(merged)
}

/// `worker NAME PASS K ROWS DIR OUT`: fits partition K of the data set's
/// ROWS rows (first pass: from nothing; second: from DIR's merged fit)
/// and saves the partial fit at OUT.
fn worker(args: &[String]) -> Result<(), Failure> {
    let [name, pass, k, rows, dir, out] = args else {
        return Err("usage: fit_on_shards worker NAME PASS K ROWS DIR OUT".into());
    };
    let (k, rows): (usize, usize) = (k.parse()?, rows.parse()?);
    if k >= WORKERS {
        return Err(format!("partition {k} of {WORKERS}").into());
    }
    let (dir, out) = (Path::new(dir), Path::new(out));
    match name.as_str() {
        "mahalanobis" => work(&Mahalanobis::new(), name, pass, k, rows, dir, out),
        "rmds" => work(&Rmds::new(), name, pass, k, rows, dir, out),
        "knn" => work(&Knn::new(50)?, name, pass, k, rows, dir, out),
        "vim" => work(&vim()?, name, pass, k, rows, dir, out),
        other => Err(format!("unknown detector {other}").into()),
    }
}

fn work<D>(
    detector: &D,
    name: &str,
    pass: &str,
    k: usize,
    rows: usize,
    dir: &Path,
    out: &Path,
) -> Result<(), Failure>
where
    D: FeatureDetector,
    D::Fitter: PartialState,
{
    let (features, labels) = class_features(rows, 0);
    let part = partition(rows, k);
    let (features, labels) = (features.slice(s![part.clone(), ..]), labels.slice(s![part]));
    let partial = match pass {
        "first" => detector.partial_fit(features, labels)?,
        _ => {
            let mut merged = PartialFit::<D>::load(merged_path(dir, name))?;
            merged.update(features, labels)?;
            merged
        }
    };
    partial.save(out)?;
    Ok(())
}

/// `n` penultimate-layer-like features: a centre per class plus noise of
/// a spread that differs by dimension.
fn class_features(n: usize, seed: u64) -> (Array2<f32>, Array1<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres = Array2::from_shape_fn((CLASSES, WIDTH), |_| 4.0 * rng.random::<f32>() - 2.0);
    let labels: Array1<i64> = (0..n)
        .map(|_| rng.random_range(0..CLASSES as i64))
        .collect();
    let features = Array2::from_shape_fn((n, WIDTH), |(i, j)| {
        let spread = 0.3 + j as f32 / WIDTH as f32;
        centres[[labels[i] as usize, j]] + spread * (rng.random::<f32>() - 0.5) * 3.0
    });
    (features, labels)
}

/// A linear head (`CLASSES` rows of other features: ViM needs one, any
/// full-rank one will do for the comparison).
fn head() -> (Array2<f32>, Array1<f32>) {
    let (centres, _) = class_features(CLASSES * 50, 2);
    let w = centres.slice(s![..CLASSES, ..]).to_owned();
    (w, Array1::zeros(CLASSES))
}
