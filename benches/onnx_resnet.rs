//! Inference throughput of a ResNet-20 exported to ONNX, run by tract
//! through `OnnxModel`, on CIFAR-shaped batches of 128 and 500: the same
//! network as the `resnet` bench, so the two say which path to pick.
//!
//! The graph comes from the PyTorch peer (`python
//! ../shared/peer/resnet20_torch_bench.py WEIGHTS 1 resnet20.onnx`):
//!
//! `OODKIT_RESNET20_ONNX=resnet20.onnx cargo bench --features onnx --bench onnx_resnet`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array4;
use oodkit::model::{Model, OnnxModel};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn onnx_resnet20(c: &mut Criterion) {
    let Some(path) = std::env::var_os("OODKIT_RESNET20_ONNX") else {
        eprintln!("OODKIT_RESNET20_ONNX is not set: no ONNX graph to measure");
        return;
    };
    let model = match OnnxModel::load(&path) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("{}: {e}", path.to_string_lossy());
            return;
        }
    };
    let mut rng = StdRng::seed_from_u64(0);
    let mut group = c.benchmark_group("resnet20_onnx_inference");
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

criterion_group!(benches, onnx_resnet20);
criterion_main!(benches);
