//! Serving latency: one MNIST-shaped image end to end through the toy
//! convnet (burn, Flex backend) to a calibrated verdict, with MLS and with
//! KNN (k = 50) on the penultimate features of 30 596 fit images (the
//! size of the MNIST 0-4 training set), each call timed on its own; the
//! p50 and p99 of all timed calls are printed after each benchmark.
//! Then one query of precomputed features through KNN (k = 50),
//! Mahalanobis and ViM fitted on 50 000 x 512 features of 100 classes (the
//! scale issue's set (a)): the detectors' own latency, without a network.
//!
//! `cargo bench --bench serving` (`-- one_query` for the second part)

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::Array2;
use ndarray::{Array1, Array4, Axis};
use oodkit::Batch;
use oodkit::calibration::Calibrated;
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{
    Detector, FeatureDetector, FittedDetector, Knn, Mahalanobis, Mls, PrincipalDims, ScoreFeatures,
    Scorer, Vim,
};
use oodkit::model::BurnModel;
use oodkit::nets::ToyConvnetConfig;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[path = "common/class_features.rs"]
mod class_features;

const FIT_IMAGES: usize = 30_596;

fn images(n: usize, seed: u64) -> Array4<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array4::from_shape_simple_fn((n, 1, 28, 28), || rng.random::<f32>())
}

/// The p50 and p99 of `timed` (sorted here), printed after `name`.
fn report(name: &str, what: &str, timed: &mut [Duration]) {
    timed.sort();
    if let Some(last) = timed.len().checked_sub(1) {
        let at = |q: f64| timed[((q * timed.len() as f64) as usize).min(last)];
        println!(
            "{name}: {} {what}, p50 {:.3} ms, p99 {:.3} ms",
            timed.len(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3
        );
    }
}

/// Times `run` on `inputs` (the `i`-th made by `input(i)` untimed), one
/// call per sample, cycling through `count` samples; prints the p50 / p99
/// of every timed call after `name`.
fn bench_each<I>(
    c: &mut Criterion,
    name: &str,
    what: &str,
    count: usize,
    mut input: impl FnMut(usize) -> I,
    mut run: impl FnMut(I),
) {
    let mut timed: Vec<Duration> = Vec::new();
    let mut next = 0;
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let sample = input(next % count);
                next += 1;
                let start = Instant::now();
                run(sample);
                let elapsed = start.elapsed();
                timed.push(elapsed);
                total += elapsed;
            }
            total
        })
    });
    report(name, what, &mut timed);
}

/// Times `scorer.verdict_batch` on single images, one call per sample.
fn bench_verdicts<F: FittedDetector>(
    c: &mut Criterion,
    name: &str,
    scorer: &Scorer<'_, Calibrated<F>>,
    queries: &Array4<f32>,
) {
    bench_each(
        c,
        name,
        "single-image verdicts",
        queries.shape()[0],
        |i| {
            queries
                .index_axis(Axis(0), i)
                .insert_axis(Axis(0))
                .to_owned()
        },
        |image| {
            black_box(scorer.verdict_batch(Batch::new(image)).unwrap());
        },
    );
}

fn serving(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let module = ToyConvnetConfig::new(1, 28, 10).init(&device).unwrap();
    let model = BurnModel::new(module, &device);
    let config = PrepareConfig::new(128);
    let fit = OodDataset::from_arrays(images(FIT_IMAGES, 1), Array1::zeros(FIT_IMAGES)).unwrap();
    let calibration = OodDataset::from_arrays(images(1_000, 2), Array1::zeros(1_000)).unwrap();
    let calibration = calibration.prepare(&config).unwrap();
    let queries = images(500, 3);

    let mls = Mls::new()
        .fit(&model, None)
        .unwrap()
        .calibrate(&calibration, 0.05)
        .unwrap();
    bench_verdicts(c, "verdict_one_image/mls", &mls, &queries);

    let knn = Knn::new(50)
        .unwrap()
        .fit(&model, Some(&fit.prepare(&config).unwrap()))
        .unwrap()
        .calibrate(&calibration, 0.05)
        .unwrap();
    bench_verdicts(c, "verdict_one_image/knn_30596", &knn, &queries);
}

/// Set (a) of the scale issue: 100 classes in 512 dimensions.
fn set_a(n: usize, seed: u64) -> (Array2<f32>, Array1<i64>) {
    class_features::class_features(n, 512, 100, seed)
}

/// Times `fitted.score_features` on one row at a time.
fn bench_one_query(
    c: &mut Criterion,
    name: &str,
    fitted: &dyn ScoreFeatures,
    queries: &Array2<f32>,
) {
    bench_each(
        c,
        name,
        "single-query scores",
        queries.nrows(),
        |i| queries.slice(ndarray::s![i..i + 1, ..]),
        |row| {
            black_box(fitted.score_features(row).unwrap());
        },
    );
}

fn one_query(c: &mut Criterion) {
    let (fit, labels) = set_a(50_000, 1);
    let (queries, _) = set_a(500, 2);
    let knn = Knn::new(50)
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    bench_one_query(c, "one_query_50000x512/knn", &knn, &queries);
    let mahalanobis = Mahalanobis::new()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    bench_one_query(c, "one_query_50000x512/mahalanobis", &mahalanobis, &queries);
    let mut rng = StdRng::seed_from_u64(3);
    let weights = Array2::from_shape_simple_fn((100, 512), || 0.05 * (rng.random::<f32>() - 0.5));
    let bias = Array1::from_shape_simple_fn(100, || 0.1 * (rng.random::<f32>() - 0.5));
    let vim = Vim::new(PrincipalDims::Explained(0.9))
        .unwrap()
        .with_head(weights, bias)
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    bench_one_query(c, "one_query_50000x512/vim", &vim, &queries);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(15));
    targets = serving, one_query
}
criterion_main!(benches);
