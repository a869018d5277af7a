//! Inference throughput of the CIFAR ResNet-20 (burn, Flex backend) on
//! CIFAR-shaped batches of 128 and 500, through `BurnModel` (ndarray in,
//! logits out), as the detectors run it. Random weights: the speed does
//! not depend on them.
//!
//! `cargo bench --bench resnet`

use std::hint::black_box;
use std::time::Duration;

use burn::tensor::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array4;
use oodkit::model::{BurnModel, Model};
use oodkit::nets::CifarResNetConfig;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn resnet20(c: &mut Criterion) {
    let device = Device::flex();
    let model = BurnModel::new(
        CifarResNetConfig::new(20, 10).init(&device).unwrap(),
        &device,
    );
    let mut rng = StdRng::seed_from_u64(0);
    let mut group = c.benchmark_group("resnet20_inference");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(20));
    for batch in [128, 500] {
        let inputs = Array4::from_shape_simple_fn((batch, 3, 32, 32), || rng.random::<f32>());
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| black_box(model.forward_owned(inputs.clone()).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, resnet20);
criterion_main!(benches);
