//! `bench_metrics(["auroc", "fpr95tpr", "aupr_in", "aupr_out"])` end to end
//! at 10^4 .. 10^7 scores (half ID, half OOD), with and without ties.
//!
//! Run: `cargo bench --bench metrics`; scikit-learn on data of the same
//! shape: `scripts/bench_sklearn.sh` (see BENCHMARKS.md).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use oodkit::metrics::bench_metrics;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// ID scores uniform on [0, 1), OOD on [0.3, 1.3); with `ties`, rounded to
/// 1/1000 (about 1 300 distinct values), as `scripts/bench_sklearn.py` does.
fn scores(n: usize, shift: f32, ties: bool, rng: &mut StdRng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let x = rng.random::<f32>() + shift;
            if ties {
                (x * 1000.0).round() / 1000.0
            } else {
                x
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let metrics = ["auroc", "fpr95tpr", "aupr_in", "aupr_out"];
    let mut group = c.benchmark_group("bench_metrics");
    for ties in [false, true] {
        for exp in 4..=7u32 {
            let n = 10usize.pow(exp);
            let mut rng = StdRng::seed_from_u64(u64::from(exp));
            let s_in = scores(n / 2, 0.0, ties, &mut rng);
            let s_out = scores(n / 2, 0.3, ties, &mut rng);
            group.throughput(Throughput::Elements(n as u64));
            if exp >= 6 {
                group
                    .sample_size(10)
                    .measurement_time(Duration::from_secs(8));
            } else {
                group
                    .sample_size(50)
                    .measurement_time(Duration::from_secs(3));
            }
            let label = if ties { "ties" } else { "no_ties" };
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter(|| bench_metrics(black_box(&s_in), black_box(&s_out), &metrics).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
