//! Feature detectors at scale: fit on 50 000 x 512 features of 10 classes,
//! then score 10 000 (`fit_features` / `score_features`, so only the
//! detectors' own work is timed).
//!
//! `cargo bench --bench feature_detectors`; peak memory of one detector:
//! `/usr/bin/time -v target/release/deps/feature_detectors-* --bench KNN`
//! (the data alone: `--bench none`).

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use ndarray::{Array1, Array2};

#[path = "common/class_features.rs"]
mod class_features;
use class_features::{class_features, normal};
use oodkit::detectors::{
    FeatureDetector, Gram, Knn, Mahalanobis, PrincipalDims, Rmds, ScoreFeatures, She, Vim,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const FIT: usize = 50_000;
const SCORED: usize = 10_000;
const DIM: usize = 512;
const CLASSES: usize = 10;

/// Set of this bench: 10 classes in 512 dimensions.
fn features(n: usize, seed: u64) -> (Array2<f32>, Array1<i64>) {
    class_features(n, DIM, CLASSES, seed)
}

fn feature_detectors(c: &mut Criterion) {
    let (fit, labels) = features(FIT, 1);
    let (scored, _) = features(SCORED, 2);
    let mut rng = StdRng::seed_from_u64(3);
    let weights = Array2::from_shape_simple_fn((CLASSES, DIM), || 0.05 * normal(&mut rng));
    let bias = Array1::from_shape_simple_fn(CLASSES, || 0.1 * normal(&mut rng));

    let mut group = c.benchmark_group("features_50000x512");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));

    let data = Data {
        fit: &fit,
        labels: &labels,
        scored: &scored,
    };
    bench(&mut group, &data, Mahalanobis::new());
    bench(&mut group, &data, Rmds::new());
    bench(&mut group, &data, Knn::new(50).unwrap());
    let vim = Vim::new(PrincipalDims::Explained(0.9))
        .unwrap()
        .with_head(weights, bias)
        .unwrap();
    bench(&mut group, &data, vim);
    bench(&mut group, &data, She::new());
    bench(&mut group, &data, Gram::default());
    group.finish();
}

/// The fit features, their labels and the features scored.
struct Data<'a> {
    fit: &'a Array2<f32>,
    labels: &'a Array1<i64>,
    scored: &'a Array2<f32>,
}

/// Benchmarks fitting `detector` on the fit features, and scoring.
fn bench<D: FeatureDetector>(group: &mut BenchmarkGroup<WallTime>, data: &Data, detector: D) {
    let name = detector.name();
    let fit = || {
        detector
            .fit_features(data.fit.view(), data.labels.view())
            .unwrap()
    };
    group.bench_function(format!("{name}/fit"), |b| b.iter(|| black_box(fit())));
    // Fitted only when this benchmark runs (not filtered out), so a filtered
    // run's peak memory is this detector's.
    let fitted = std::cell::OnceCell::new();
    group.bench_function(format!("{name}/score_10000"), |b| {
        let fitted = fitted.get_or_init(fit);
        b.iter(|| black_box(fitted.score_features(data.scored.view()).unwrap()))
    });
}

criterion_group!(benches, feature_detectors);
criterion_main!(benches);
