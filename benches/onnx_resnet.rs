//! Inference throughput of a network exported to ONNX, run by tract
//! (`OnnxModel`) and, with the `onnxruntime` feature, by ONNX Runtime
//! (`OnnxRuntimeModel`, every core), on random batches.
//!
//! By default a CIFAR ResNet-20 (3x32x32, batches of 128 and 500: the same
//! network as the `resnet` bench, so the two say which path to pick); the
//! graph comes from the PyTorch peer (`python
//! ../shared/peer/resnet20_torch_bench.py WEIGHTS 1 resnet20.onnx`) or from
//! `scripts/own_model/torch_throughput.py`, which also exports ResNet-50:
//!
//! `OODKIT_RESNET20_ONNX=resnet20.onnx cargo bench --features onnxruntime --bench onnx_resnet`
//!
//! Another graph: `OODKIT_ONNX_INPUT=3x224x224 OODKIT_ONNX_BATCHES=16,64`;
//! `OODKIT_ONNX_ENGINES=onnxruntime` measures one engine.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array4;
use oodkit::model::{Model, OnnxModel};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A comma-separated list of numbers from `var`, or `default`.
fn numbers(var: &str, separator: char, default: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(text) => text
            .split(separator)
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn onnx_resnet(c: &mut Criterion) {
    let Some(path) = std::env::var_os("OODKIT_RESNET20_ONNX") else {
        eprintln!("OODKIT_RESNET20_ONNX is not set: no ONNX graph to measure");
        return;
    };
    let input = numbers("OODKIT_ONNX_INPUT", 'x', &[3, 32, 32]);
    let batches = numbers("OODKIT_ONNX_BATCHES", ',', &[128, 500]);
    let engines =
        std::env::var("OODKIT_ONNX_ENGINES").unwrap_or_else(|_| "tract,onnxruntime".into());
    let [channels, height, width] = input[..] else {
        eprintln!("OODKIT_ONNX_INPUT: expected CxHxW, e.g. 3x224x224");
        return;
    };
    let mut models: Vec<(&str, Box<dyn Model>)> = Vec::new();
    if engines.contains("tract") {
        match OnnxModel::load(&path) {
            Ok(model) => models.push(("tract", Box::new(model))),
            Err(e) => eprintln!("{}: {e}", path.to_string_lossy()),
        }
    }
    #[cfg(feature = "onnxruntime")]
    if engines.contains("onnxruntime") {
        match oodkit::model::OnnxRuntimeModel::load(&path) {
            Ok(model) => models.push(("onnxruntime", Box::new(model))),
            Err(e) => eprintln!("{}: {e}", path.to_string_lossy()),
        }
    }
    let mut rng = StdRng::seed_from_u64(0);
    let mut group = c.benchmark_group("onnx_inference");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(20));
    for batch in batches {
        let inputs =
            Array4::from_shape_simple_fn((batch, channels, height, width), || rng.random::<f32>());
        group.throughput(Throughput::Elements(batch as u64));
        for (engine, model) in &models {
            group.bench_function(format!("{engine}/batch_{batch}"), |b| {
                b.iter(|| black_box(model.forward_owned(inputs.clone()).unwrap()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, onnx_resnet);
criterion_main!(benches);
