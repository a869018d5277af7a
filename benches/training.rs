//! Training and inference speed of the toy convnet (burn, Flex, batch 128 of
//! MNIST-shaped images), as the crate builds it and, back to back, written
//! with burn's plain layers in the reference order (ReLU, then burn's
//! max-pool): the ratio is what the crate's formulation gains.
//!
//! `cargo bench --bench training`

use std::hint::black_box;
use std::time::Duration;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use oodkit::model::BurnClassifier;
use oodkit::nets::ToyConvnetConfig;

const BATCH: usize = 128;

/// The toy convnet in burn's plain layers, in the reference order.
#[derive(Module, Debug)]
struct PlainConvnet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    relu: Relu,
    linear: Linear,
}

impl BurnClassifier for PlainConvnet {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.relu.forward(self.conv1.forward(x)));
        let x = self.pool.forward(self.relu.forward(self.conv2.forward(x)));
        self.linear.forward(x.flatten(1, 3))
    }
}

fn plain(device: &Device) -> PlainConvnet {
    PlainConvnet {
        conv1: Conv2dConfig::new([1, 32], [3, 3]).init(device),
        conv2: Conv2dConfig::new([32, 64], [3, 3]).init(device),
        pool: MaxPool2dConfig::new([2, 2]).init(),
        relu: Relu,
        linear: LinearConfig::new(1600, 10).init(device),
    }
}

/// One Adam step on a fixed batch, as the trainer takes it.
fn train_step<M: BurnClassifier>(c: &mut Criterion, name: &str, module: M) {
    let device = Device::flex().autodiff();
    let mut model = module.fork(&device).train();
    let mut optimizer = AdamConfig::new().with_epsilon(1e-7).init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let x = Tensor::<4>::random([BATCH, 1, 28, 28], Distribution::Default, &device);
    let labels: Vec<i64> = (0..BATCH as i64).map(|i| i % 5).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [BATCH]), &device);
    let mut group = c.benchmark_group("toy_convnet_batch128");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("train_step/{name}"), |b| {
        b.iter(|| {
            let loss = loss_fn.forward(model.logits(x.clone()), y.clone());
            black_box(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(1e-3, model.clone(), grads);
        })
    });
}

fn inference<M: BurnClassifier>(c: &mut Criterion, name: &str, module: M) {
    let device = Device::flex();
    let model = module.valid();
    let x = Tensor::<4>::random([BATCH, 1, 28, 28], Distribution::Default, &device);
    let mut group = c.benchmark_group("toy_convnet_batch128");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("inference/{name}"), |b| {
        b.iter(|| black_box(model.logits(x.clone()).into_data()))
    });
}

fn toy_convnet(c: &mut Criterion) {
    let device = Device::flex();
    let oodkit_net = || ToyConvnetConfig::new(1, 28, 10).init(&device).unwrap();
    inference(c, "oodkit", oodkit_net());
    inference(c, "plain_layers", plain(&device));
    train_step(c, "oodkit", oodkit_net());
    train_step(c, "plain_layers", plain(&device));
}

criterion_group!(benches, toy_convnet);
criterion_main!(benches);
