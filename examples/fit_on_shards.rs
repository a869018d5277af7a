//! Fitting on shards, as a cluster engine's workers would: the fit
//! features are cut into four shards, four workers (threads here; the
//! partial fits are plain values a worker hands back) each fit the first
//! pass of their shard, the driver merges the partial fits, and for a
//! detector with a second pass (ViM) the workers run it on copies of the
//! merged fitter, which merge again. The result is checked against the
//! one-pass fit on all the features: the example exits non-zero when a
//! score differs by more than 1e-6 relative.
//!
//! ```sh
//! cargo run --features cli --example fit_on_shards -- 40000
//! ```

use std::thread;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, s};
use oodkit::detectors::{
    FeatureDetector, Knn, LayerBatch, LayerFitter, Mahalanobis, PrincipalDims, Rmds, ScoreFeatures,
    Vim,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const WIDTH: usize = 64;
const CLASSES: usize = 10;
const WORKERS: usize = 4;

type Shard<'a> = (ArrayView2<'a, f32>, ArrayView1<'a, i64>);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("the argument is the number of fit rows, got {arg:?}: {e}"))?,
        None => 40_000,
    };
    if rows < WORKERS * CLASSES * 2 {
        return Err(format!("give at least {} fit rows", WORKERS * CLASSES * 2).into());
    }
    let (features, labels) = class_features(rows, 0);
    let queries = class_features(2_000, 1).0.mapv(|v| 1.2 * v);
    // Uneven shards, as a cluster's partitions are.
    let cuts = [0, rows / 7, rows / 2, rows * 4 / 5, rows];
    let shards: Vec<Shard> = cuts
        .windows(2)
        .map(|w| {
            (
                features.slice(s![w[0]..w[1], ..]),
                labels.slice(s![w[0]..w[1]]),
            )
        })
        .collect();

    let (w, b) = head();
    let vim = Vim::new(PrincipalDims::Count(WIDTH / 4))?.with_head(w, b)?;
    let worst = [
        compare(&Mahalanobis::new(), &shards, &features, &labels, &queries)?,
        compare(&Rmds::new(), &shards, &features, &labels, &queries)?,
        compare(&Knn::new(50)?, &shards, &features, &labels, &queries)?,
        compare(&vim, &shards, &features, &labels, &queries)?,
    ]
    .into_iter()
    .fold(0.0_f32, f32::max);
    if worst > 1e-6 {
        return Err(format!("a sharded fit differs from the one-pass fit by {worst:e}").into());
    }
    println!("every sharded fit scores as the one-pass fit (largest difference {worst:e})");
    Ok(())
}

/// Fits `detector` on the shards (workers + driver) and on everything at
/// once, prints the largest relative difference of their scores on
/// `queries`, and returns it.
fn compare<D>(
    detector: &D,
    shards: &[Shard],
    features: &Array2<f32>,
    labels: &Array1<i64>,
    queries: &Array2<f32>,
) -> oodkit::Result<f32>
where
    D: FeatureDetector + Sync,
{
    let sharded = fit_on_workers(detector, shards)?;
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
        "{:<12} fitted on {} shards: largest relative score difference {worst:.1e}",
        detector.name(),
        shards.len()
    );
    Ok(worst)
}

/// The driver: one worker per shard for each pass, partial fits merged in
/// the shards' order.
fn fit_on_workers<D>(detector: &D, shards: &[Shard]) -> oodkit::Result<D::Fitted>
where
    D: FeatureDetector + Sync,
{
    let firsts = on_workers(shards, |shard| {
        let mut fitter = detector.fitter(WIDTH, None)?;
        fitter.update(&batch(shard))?;
        Ok(fitter)
    })?;
    let mut merged = merge(firsts)?;
    if merged.end_first_pass()? {
        // The second pass needs what the first found: each worker gets a
        // copy of the merged fitter.
        let seconds = on_workers(shards, |shard| {
            let mut fitter = merged.clone();
            fitter.update_second(&batch(shard))?;
            Ok(fitter)
        })?;
        merged = merge(seconds)?;
    }
    merged.finish()
}

/// `work` on every shard, each on its own thread, results in order.
fn on_workers<F, T>(shards: &[Shard], work: F) -> oodkit::Result<Vec<T>>
where
    F: Fn(&Shard) -> oodkit::Result<T> + Sync,
    T: Send,
{
    thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .map(|shard| scope.spawn(|| work(shard)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| oodkit::Error::custom("a worker panicked"))?
            })
            .collect()
    })
}

fn merge<F: LayerFitter>(fitters: Vec<F>) -> oodkit::Result<F> {
    let mut fitters = fitters.into_iter();
    let mut merged = fitters
        .next()
        .ok_or_else(|| oodkit::Error::custom("no shard"))?;
    for other in fitters {
        merged.merge(other)?;
    }
    Ok(merged)
}

fn batch<'a>((features, labels): &Shard<'a>) -> LayerBatch<'a> {
    LayerBatch {
        features: *features,
        labels: Some(*labels),
        logits: None,
    }
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
