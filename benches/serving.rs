//! Serving latency: one MNIST-shaped image end to end through the toy
//! convnet (burn, Flex backend) to a calibrated verdict, with MLS and with
//! KNN (k = 50) on the penultimate features of 30 596 fit images (the
//! size of the MNIST 0-4 training set), each call timed on its own; the
//! p50 and p99 of all timed calls are printed after each benchmark.
//!
//! `cargo bench --bench serving`

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array1, Array4, Axis};
use oodkit::Batch;
use oodkit::calibration::Calibrated;
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{Detector, FittedDetector, Knn, Mls, Scorer};
use oodkit::model::BurnModel;
use oodkit::nets::ToyConvnetConfig;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const FIT_IMAGES: usize = 30_596;

fn images(n: usize, seed: u64) -> Array4<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array4::from_shape_simple_fn((n, 1, 28, 28), || rng.random::<f32>())
}

/// Times `scorer.verdict_batch` on single images, one call per sample.
fn bench_verdicts<F: FittedDetector>(
    c: &mut Criterion,
    name: &str,
    scorer: &Scorer<'_, Calibrated<F>>,
    queries: &Array4<f32>,
) {
    let mut timed: Vec<Duration> = Vec::new();
    let mut next = 0;
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let image = queries
                    .index_axis(Axis(0), next % queries.shape()[0])
                    .insert_axis(Axis(0))
                    .to_owned();
                next += 1;
                let start = Instant::now();
                black_box(scorer.verdict_batch(Batch::new(image)).unwrap());
                let elapsed = start.elapsed();
                timed.push(elapsed);
                total += elapsed;
            }
            total
        })
    });
    timed.sort();
    if !timed.is_empty() {
        let at = |q: f64| timed[((q * timed.len() as f64) as usize).min(timed.len() - 1)];
        println!(
            "{name}: {} single-image verdicts, p50 {:.3} ms, p99 {:.3} ms",
            timed.len(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3
        );
    }
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(15));
    targets = serving
}
criterion_main!(benches);
