//! Feature-map projections at the size the plots use by default: 4 000
//! points of the toy convnet's penultimate width (1 600), ten clusters.
//!
//! `cargo bench --bench projection`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::Array2;
use oodkit::plots::{pca, tsne};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn features(n: usize, d: usize) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(0);
    let centres = Array2::from_shape_simple_fn((10, d), || 4.0 * rng.random::<f32>());
    // Post-ReLU-like: non-negative, clustered.
    Array2::from_shape_fn((n, d), |(i, j)| {
        (centres[[i % 10, j]] + rng.random::<f32>() - 0.5).max(0.0)
    })
}

fn projections(c: &mut Criterion) {
    let x = features(4000, 1600);
    let mut group = c.benchmark_group("project_4000x1600");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(60));
    group.bench_function("pca_2", |b| b.iter(|| black_box(pca(x.view(), 2).unwrap())));
    group.bench_function("tsne_perplexity_30", |b| {
        b.iter(|| black_box(tsne(x.view(), 30.0).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, projections);
criterion_main!(benches);
