//! The CIFAR ResNets: shapes and parameter counts, the option-A shortcut by
//! hand, the safetensors loader on files the tests write (a forward pass
//! worked out by hand, errors naming the tensor), and the pretrained
//! weights' accuracy on the shared CIFAR-10 test set (ignored without
//! `OODKIT_DATA_DIR`).
#![cfg(feature = "burn")]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{Array1, Array2, Array4};
use oodkit::Error;
use oodkit::datasets::transforms::imagenet_preprocess;
use oodkit::datasets::{PrepareConfig, Split, cifar10};
use oodkit::model::{BurnModel, FeatureModel, LastLayer, Model, evaluate};
use oodkit::nets::{CifarResNet, CifarResNetConfig, option_a_shortcut};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

mod common;

#[test]
fn parameter_counts_are_pytorchs_and_shapes_follow_the_stages() {
    let device = Device::flex();
    // PyTorch's counts for akamaster's checkpoints (MODEL_NOTES.md).
    for (depth, count) in [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018)] {
        let net = CifarResNetConfig::new(depth, 10).init(&device).unwrap();
        assert_eq!(net.num_parameters(), count, "ResNet-{depth}");
    }
    assert!(CifarResNetConfig::new(18, 10).init(&device).is_err());
    let model = BurnModel::new(
        CifarResNetConfig::new(20, 10).init(&device).unwrap(),
        &device,
    );
    let out = model
        .forward_features(
            Array4::zeros((3, 3, 32, 32)).view(),
            &[0.into(), 1.into(), (-2).into()],
        )
        .unwrap();
    let widths: Vec<_> = out.features.iter().map(|f| f.shape().to_vec()).collect();
    assert_eq!(widths, vec![vec![3, 16], vec![3, 32], vec![3, 64]]);
    assert_eq!(out.logits.shape(), &[3, 10]);
    assert_eq!(model.head_parameters().unwrap().0.shape(), &[10, 64]);
}

#[test]
fn option_a_keeps_every_other_pixel_between_zero_channels() {
    let device = Device::flex();
    let values: Vec<f32> = (0..2 * 4 * 4).map(|v| v as f32).collect();
    let x = Tensor::<4>::from_data(TensorData::new(values, [1, 2, 4, 4]), &device);
    let out = option_a_shortcut(x, 8); // 2 zero channels on each side
    assert_eq!(out.dims(), [1, 6, 2, 2]);
    let out: Vec<f32> = out.to_data().try_to_vec().unwrap();
    let mut expected = vec![0.0; 8];
    for c in 0..2 {
        for (i, j) in [(0, 0), (0, 2), (2, 0), (2, 2)] {
            expected.push((c * 16 + i * 4 + j) as f32);
        }
    }
    expected.extend([0.0; 8]);
    assert_eq!(out, expected);
}

/// A state dict of ResNet-`depth`: every tensor named as PyTorch names it,
/// with `fill(name, len)` giving its values.
fn state_dict(
    depth: usize,
    fill: &dyn Fn(&str, usize) -> Vec<f32>,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let n = (depth - 2) / 6;
    let mut tensors = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let len = shape.iter().product();
        let values = fill(&name, len);
        tensors.push((name, shape, values));
    };
    let bn = |add: &mut dyn FnMut(String, Vec<usize>), prefix: &str, size: usize| {
        for part in ["weight", "bias", "running_mean", "running_var"] {
            add(format!("{prefix}.{part}"), vec![size]);
        }
    };
    add("conv1.weight".into(), vec![16, 3, 3, 3]);
    bn(&mut add, "bn1", 16);
    let mut input = 16;
    for (s, planes) in [16, 32, 64].into_iter().enumerate() {
        for i in 0..n {
            let prefix = format!("layer{}.{i}", s + 1);
            add(format!("{prefix}.conv1.weight"), vec![planes, input, 3, 3]);
            add(format!("{prefix}.conv2.weight"), vec![planes, planes, 3, 3]);
            bn(&mut add, &format!("{prefix}.bn1"), planes);
            bn(&mut add, &format!("{prefix}.bn2"), planes);
            input = planes;
        }
    }
    add("linear.weight".into(), vec![10, 64]);
    add("linear.bias".into(), vec![10]);
    tensors
}

fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (
                name.clone(),
                TensorView::new(dtype, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Zero convolutions, BatchNorms that add 0.5 (γ = 1, β = 0.5, mean 0,
/// variance 1), a known head: the output does not depend on the input and
/// follows the shortcuts channel by channel.
fn hand_worked(name: &str, len: usize) -> Vec<f32> {
    if name.ends_with("conv1.weight") || name.ends_with("conv2.weight") {
        vec![0.0; len]
    } else if name.ends_with(".bias") && name.starts_with("linear") {
        (0..len).map(|k| k as f32 * 0.1).collect()
    } else if name == "linear.weight" {
        (0..len).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect()
    } else if name.ends_with(".bias") {
        vec![0.5; len]
    } else if name.ends_with("running_mean") {
        vec![0.0; len]
    } else {
        vec![1.0; len] // BN weight and running_var
    }
}

/// The logits of the hand-worked ResNet-20, channel by channel.
fn hand_worked_logits() -> Vec<f32> {
    let mut v = vec![0.5_f32; 16]; // stem: relu(bn(0)) = β
    for planes in [16, 32, 64] {
        for block in 0..3 {
            let shortcut = if block == 0 && planes != v.len() {
                let pad = vec![0.0; planes / 4];
                [pad.clone(), v.clone(), pad].concat()
            } else {
                v.clone()
            };
            v = shortcut.iter().map(|s| (0.5 + s).max(0.0)).collect();
        }
    }
    let w: Vec<f32> = hand_worked("linear.weight", 640);
    (0..10)
        .map(|k| k as f32 * 0.1 + (0..64).map(|j| w[k * 64 + j] * v[j]).sum::<f32>())
        .collect()
}

#[test]
fn safetensors_weights_load_into_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let tensors = state_dict(20, &hand_worked);
    let path = dir.path().join("resnet20.safetensors");
    write(&path, &tensors, Dtype::F32);
    let net = CifarResNet::from_safetensors(&path, 20, &device).unwrap();
    let model = BurnModel::new(net, &device);
    let logits = model
        .forward(Array4::from_elem((2, 3, 32, 32), 0.3).view())
        .unwrap();
    let expected = hand_worked_logits();
    for row in logits.rows() {
        for (f, e) in row.iter().zip(&expected) {
            assert!((f - e).abs() < 1e-5, "{row} vs {expected:?}");
        }
    }
    let (w, b) = model.head_parameters().unwrap();
    assert_eq!(
        w,
        Array2::from_shape_vec((10, 64), hand_worked("linear.weight", 640)).unwrap()
    );
    assert_eq!(b, Array1::from(hand_worked("linear.bias", 10)));

    // nn.DataParallel's "module." prefix and extra tensors are accepted.
    let mut prefixed: Vec<_> = tensors
        .iter()
        .map(|(n, s, v)| (format!("module.{n}"), s.clone(), v.clone()))
        .collect();
    prefixed.push(("module.bn1.num_batches_tracked".into(), vec![1], vec![0.0]));
    let path = dir.path().join("prefixed.safetensors");
    write(&path, &prefixed, Dtype::F32);
    let again = BurnModel::new(
        CifarResNet::from_safetensors(&path, 20, &device).unwrap(),
        &device,
    );
    assert_eq!(
        again
            .forward(Array4::zeros((1, 3, 32, 32)).view())
            .unwrap()
            .row(0),
        logits.row(0)
    );
}

#[test]
fn a_bad_state_dict_is_an_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let load = |name: &str, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype| {
        let path = dir.path().join(name);
        write(&path, tensors, dtype);
        CifarResNet::from_safetensors(&path, 20, &device)
            .unwrap_err()
            .to_string()
    };
    let full = state_dict(20, &|_, len| vec![0.1; len]);

    let missing: Vec<_> = full
        .iter()
        .filter(|t| t.0 != "layer2.1.bn2.running_var")
        .cloned()
        .collect();
    let err = load("missing.safetensors", &missing, Dtype::F32);
    assert!(
        err.contains("`layer2.1.bn2.running_var` is missing"),
        "{err}"
    );

    let mut misshaped = full.clone();
    let t = misshaped
        .iter_mut()
        .find(|t| t.0 == "layer3.0.conv1.weight")
        .unwrap();
    t.1 = vec![64, 16, 3, 3];
    t.2 = vec![0.1; 64 * 16 * 9];
    let err = load("misshaped.safetensors", &misshaped, Dtype::F32);
    assert!(
        err.contains("`layer3.0.conv1.weight` has shape [64, 16, 3, 3], expected [64, 32, 3, 3]"),
        "{err}"
    );

    // A ResNet-20 file read as ResNet-32 lacks the fourth block.
    let path = dir.path().join("depth.safetensors");
    write(&path, &full, Dtype::F32);
    let err = CifarResNet::from_safetensors(&path, 32, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`layer1.3.conv1.weight` is missing"), "{err}");

    // Not f32 (the same bytes, declared as i32).
    let err = load("int.safetensors", &full, Dtype::I32);
    assert!(err.contains("expected F32"), "{err}");

    // Not a safetensors file; no file.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file at all").unwrap();
    let err = CifarResNet::from_safetensors(&junk, 20, &device).unwrap_err();
    assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
    let err = CifarResNet::from_safetensors(dir.path().join("none"), 20, &device).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
}

fn data_dir() -> PathBuf {
    std::env::var_os("OODKIT_DATA_DIR")
        .map(PathBuf::from)
        .expect("this test needs OODKIT_DATA_DIR set to the data root (e.g. ../shared/datasets)")
}

/// The weights file of `depth` under the data root.
fn weights(depth: usize) -> PathBuf {
    let dir = data_dir().join("weights/akamaster_resnet_cifar10");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&format!("resnet{depth}-")) && name.ends_with(".safetensors")
        })
        .unwrap()
}

/// The reference PyTorch forward pass's accuracies on the shared
/// (JPEG-derived) CIFAR-10 test set, from its README.
#[test]
#[ignore = "needs OODKIT_DATA_DIR (the shared CIFAR-10 test set and weights)"]
fn pretrained_resnets_reproduce_the_reference_accuracies() {
    let device = Device::flex();
    let test = cifar10::load(data_dir().join("cifar10"), Split::Test).unwrap();
    let batches = test
        .prepare(&PrepareConfig::new(500).preprocess(imagenet_preprocess))
        .unwrap();
    for (depth, reference) in [(20, 0.8103), (32, 0.8256), (44, 0.8267), (56, 0.8320)] {
        let net = CifarResNet::from_safetensors(weights(depth), depth, &device).unwrap();
        let accuracy = evaluate(&BurnModel::new(net, &device), &batches).unwrap();
        println!("ResNet-{depth}: accuracy {accuracy:.4} (reference {reference})");
        assert!(
            (accuracy - reference).abs() < 5e-5,
            "ResNet-{depth}: {accuracy} vs {reference}"
        );
    }
}

/// Cut at 200 offsets across the header and 40 in the body, 150 bits
/// flipped: an error or a network of finite weights, never a panic.
#[test]
fn cut_or_flipped_weight_files_are_errors_or_finite_networks() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let path = dir.path().join("resnet20.safetensors");
    write(&path, &state_dict(20, &hand_worked), Dtype::F32);
    let good = std::fs::read(&path).unwrap();
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut rng = common::Xorshift(0x9e37_79b9_7f4a_7c15_u64);
    let mut below = |n: usize| rng.below(n);
    let mut mutants: Vec<Vec<u8>> = (0..200)
        .map(|i| good[..i * header / 200].to_vec())
        .collect();
    for _ in 0..40 {
        mutants.push(good[..header + below(good.len() - header)].to_vec());
    }
    for _ in 0..150 {
        let mut flipped = good.clone();
        let at = below(flipped.len());
        flipped[at] ^= 1 << below(8);
        mutants.push(flipped);
    }
    let zeros = Array4::zeros((1, 3, 32, 32));
    for (i, bytes) in mutants.iter().enumerate() {
        std::fs::write(&path, bytes).unwrap();
        if let Ok(net) = CifarResNet::from_safetensors(&path, 20, &device) {
            assert_eq!(bytes.len(), good.len(), "mutant {i}: a cut file loaded");
            let logits = BurnModel::new(net, &device).forward(zeros.view()).unwrap();
            assert!(logits.iter().all(|v| v.is_finite()), "mutant {i}");
        }
    }
}
