//! Scoring speed: MLS over 10 000 MNIST-shaped images through the toy
//! convnet (burn, Flex backend, batch 128), split into its parts (the forward
//! pass alone, the ndarray <-> burn hand-over, the detector math), and
//! `score_logits` alone on 10^6 x 10 logits.
//!
//! `cargo bench --bench scoring`

use std::hint::black_box;
use std::time::Duration;

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array1, Array2, Array4};
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{Detector, Mls, ScoreLogits};
use oodkit::model::{BurnModel, array_to_tensor, tensor_to_array};
use oodkit::nets::ToyConvnetConfig;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const IMAGES: usize = 10_000;
const BATCH: usize = 128;

fn mnist_shaped(n: usize) -> Array4<f32> {
    let mut rng = StdRng::seed_from_u64(0);
    Array4::from_shape_simple_fn((n, 1, 28, 28), || rng.random::<f32>())
}

fn pipeline(c: &mut Criterion) {
    let device = Device::flex();
    let module = ToyConvnetConfig::new(1, 28, 10).init(&device).unwrap();
    let inputs = mnist_shaped(IMAGES);
    let ds = OodDataset::from_arrays(inputs.clone(), Array1::zeros(IMAGES)).unwrap();
    let prepared = ds.prepare(&PrepareConfig::new(BATCH)).unwrap();
    let model = BurnModel::new(module, &device);
    let mls = Mls::new().fit(&model, None).unwrap();

    let mut group = c.benchmark_group("toy_convnet_10k");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(40));
    group.throughput(Throughput::Elements(IMAGES as u64));

    group.bench_function("mls_score", |b| {
        b.iter(|| black_box(mls.score(&prepared).unwrap().scores.len()))
    });

    // The forward pass alone, on tensors built beforehand.
    let tensors: Vec<Tensor<4>> = prepared
        .iter()
        .map(|batch| array_to_tensor(batch.unwrap().inputs, &device))
        .collect();
    let inference = model.module();
    group.bench_function("forward_only", |b| {
        b.iter(|| {
            for x in &tensors {
                black_box(tensor_to_array(inference.forward(x.clone())).unwrap());
            }
        })
    });

    // The hand-over alone: every batch into burn, and logits-sized tensors
    // back out.
    let batches: Vec<Array4<f32>> = prepared.iter().map(|b| b.unwrap().inputs).collect();
    group.bench_function("handover_only", |b| {
        b.iter_batched(
            || batches.clone(),
            |batches| {
                for x in batches {
                    let n = x.shape()[0];
                    black_box(array_to_tensor(x, &device));
                    let logits: Tensor<2> =
                        Tensor::from_data(TensorData::new(vec![0.5_f32; n * 10], [n, 10]), &device);
                    black_box(tensor_to_array(logits).unwrap());
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });

    // The detector math alone on the 10 000 x 10 logits.
    let logits = Array2::from_shape_fn((IMAGES, 10), |(i, j)| ((i * 7 + j * 3) % 17) as f32);
    group.bench_function("score_logits_only", |b| {
        b.iter(|| black_box(mls.fitted().score_logits(logits.view()).unwrap()))
    });
    group.finish();
}

fn score_logits(c: &mut Criterion) {
    let n = 1_000_000;
    let mut rng = StdRng::seed_from_u64(1);
    let logits = Array2::from_shape_simple_fn((n, 10), || rng.random::<f32>() * 20.0 - 10.0);
    let mut group = c.benchmark_group("score_logits_1e6x10");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("mls", |b| {
        b.iter(|| black_box(Mls::new().score_logits(logits.view()).unwrap()))
    });
    group.bench_function("msp", |b| {
        b.iter(|| black_box(Mls::msp().score_logits(logits.view()).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, score_logits, pipeline);
criterion_main!(benches);
