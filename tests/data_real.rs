//! Loaders on the real files under `OODKIT_DATA_DIR` (e.g. `../shared/datasets`).
//! Ignored by a plain `cargo test`; `.ci/run` runs them with the directory set.

use std::path::PathBuf;

use oodkit::datasets::{Split, cifar10, mnist};

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("OODKIT_DATA_DIR")
        .map(PathBuf::from)
        .expect("these tests need OODKIT_DATA_DIR set to the data root (e.g. ../shared/datasets)");
    assert!(
        dir.is_dir(),
        "OODKIT_DATA_DIR={} is not a directory",
        dir.display()
    );
    dir
}

fn class_counts(labels: &[i64], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    counts
}

#[test]
#[ignore = "needs OODKIT_DATA_DIR"]
fn mnist_train_has_the_published_counts() {
    let ds = mnist::load(data_dir().join("mnist"), Split::Train).unwrap();
    assert_eq!(ds.len(), 60_000);
    assert_eq!(ds.input_shape(), [1, 28, 28]);
    assert_eq!(
        class_counts(ds.labels().as_slice().unwrap(), 10),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let max = ds.inputs().iter().cloned().fold(f32::MIN, f32::max);
    let min = ds.inputs().iter().cloned().fold(f32::MAX, f32::min);
    assert_eq!((min, max), (0.0, 255.0));
    let (ds_in, ds_out) = ds.split_by_class(&[0, 1, 2, 3, 4]).unwrap();
    assert_eq!(ds_in.len(), 30_596);
    assert_eq!(ds_out.len(), 60_000 - 30_596);
}

#[test]
#[ignore = "needs OODKIT_DATA_DIR"]
fn mnist_test_has_the_published_counts_and_split() {
    let ds = mnist::load(data_dir().join("mnist"), Split::Test).unwrap();
    assert_eq!(ds.len(), 10_000);
    assert_eq!(
        class_counts(ds.labels().as_slice().unwrap(), 10),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // The first test labels of MNIST are 7, 2, 1, 0, 4.
    assert_eq!(
        ds.labels().slice(ndarray::s![..5]).to_vec(),
        [7, 2, 1, 0, 4]
    );
    let (ds_in, ds_out) = ds.split_by_class(&[0, 1, 2, 3, 4]).unwrap();
    assert_eq!((ds_in.len(), ds_out.len()), (5139, 4861));
    assert!(ds_in.labels().iter().all(|&l| l <= 4));
    assert!(ds_out.labels().iter().all(|&l| l >= 5));
}

#[test]
#[ignore = "needs OODKIT_DATA_DIR"]
fn cifar10_test_set_has_1000_images_per_class() {
    let root = data_dir().join("cifar10");
    let ds = cifar10::load(&root, Split::Test).unwrap();
    assert_eq!(ds.len(), 10_000);
    assert_eq!(ds.input_shape(), [3, 32, 32]);
    assert_eq!(
        class_counts(ds.labels().as_slice().unwrap(), 10),
        [1000; 10]
    );
    let names = ds.class_names().unwrap();
    assert_eq!(names[0], "airplane");
    assert_eq!(names[9], "truck");
    // The folder holding cifar-10-batches-bin/ and that folder itself both work.
    let inner = cifar10::load(root.join(cifar10::FOLDER), Split::Test).unwrap();
    assert_eq!(inner.labels(), ds.labels());
    // The training batches are not in the shared copy: a clear error names the file.
    let err = cifar10::load(&root, Split::Train).unwrap_err().to_string();
    assert!(err.contains("data_batch_1.bin"), "{err}");
}

#[cfg(feature = "download")]
#[test]
#[ignore = "needs OODKIT_DATA_DIR"]
fn mnist_download_accepts_the_shared_copies_without_fetching() {
    // The shared .gz files were recompressed (their own md5 differs from the
    // published archives) but their content is the standard one: the
    // downloader must accept them as they are, with no network.
    let dir = data_dir().join("mnist");
    for file in oodkit::datasets::download::mnist_files() {
        let path = oodkit::datasets::download::fetch(&file, &dir).unwrap();
        assert_eq!(path, dir.join(&file.name));
    }
}

/// The notebook's flow on the real MNIST test set, up to the scores, with
/// an untrained toy convnet (training is another test's business): every
/// input scored once, in order, with its label.
#[cfg(feature = "burn")]
#[test]
#[ignore = "needs OODKIT_DATA_DIR"]
fn mnist_test_set_scores_through_the_toy_convnet_in_order() {
    use burn::tensor::Device;
    use oodkit::PrepareConfig;
    use oodkit::detectors::{Detector, Mls, ScoreLogits};
    use oodkit::model::{BurnModel, Model};
    use oodkit::nets::ToyConvnetConfig;

    let test = mnist::load(data_dir().join("mnist"), Split::Test).unwrap();
    let (ds_in, ds_out) = test.split_by_class(&[0, 1, 2, 3, 4]).unwrap();
    let config = PrepareConfig::new(128).preprocess(|mut b| {
        b.inputs /= 255.0;
        Ok(b)
    });
    let device = Device::flex();
    let model = BurnModel::new(
        ToyConvnetConfig::new(1, 28, 10).init(&device).unwrap(),
        &device,
    );
    let msp = Mls::msp().fit(&model, None).unwrap();
    let scored_in = msp.score(&ds_in.prepare(&config).unwrap()).unwrap();
    let scored_out = msp.score(&ds_out.prepare(&config).unwrap()).unwrap();
    assert_eq!((scored_in.len(), scored_out.len()), (5139, 4861));
    assert_eq!(scored_in.labels.as_ref(), Some(ds_in.labels()));
    assert_eq!(scored_out.labels.as_ref(), Some(ds_out.labels()));
    // The scores are the MSP of the logits, which are the model's on the
    // scaled images (checked on the last, partial batch: 4861 = 37 * 128 + 125).
    assert_eq!(
        msp.fitted().score_logits(scored_out.logits.view()).unwrap(),
        scored_out.scores
    );
    let tail = ds_out
        .inputs()
        .slice(ndarray::s![4736.., .., .., ..])
        .mapv(|p| p / 255.0);
    let direct = model.forward(tail.view()).unwrap();
    let diff = (&direct - &scored_out.logits.slice(ndarray::s![4736.., ..]))
        .iter()
        .fold(0.0_f32, |m, d| m.max(d.abs()));
    assert!(diff <= 1e-5, "max |difference| {diff}");
    assert!(
        scored_in
            .scores
            .iter()
            .chain(&scored_out.scores)
            .all(|&s| (-1.0..=-0.1).contains(&s))
    );
}
