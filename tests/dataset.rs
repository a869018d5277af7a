//! OodDataset construction, splits, merging and the prepared batch stream.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array1, Array4};
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::{Batch, Error};

/// `n` 1x2x3 images; every pixel of image i equals i, and its label is i % 5.
fn dataset(n: usize) -> OodDataset {
    let inputs = Array4::from_shape_fn((n, 1, 2, 3), |(i, _, _, _)| i as f32);
    let labels = Array1::from_iter((0..n as i64).map(|i| i % 5));
    OodDataset::from_arrays(inputs, labels).unwrap()
}

/// The sample index each row of a batch came from (its pixel value).
fn origins(batch: &Batch) -> Vec<usize> {
    batch
        .inputs
        .outer_iter()
        .map(|img| img[[0, 0, 0]] as usize)
        .collect()
}

fn all_batches(prepared: &oodkit::datasets::Prepared<'_>) -> Vec<Batch> {
    prepared.iter().collect::<Result<_, _>>().unwrap()
}

#[test]
fn from_arrays_rejects_mismatched_lengths_and_empty_data() {
    let err = OodDataset::from_arrays(Array4::zeros((3, 1, 2, 2)), Array1::zeros(2)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                left: 3,
                right: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let err = OodDataset::from_arrays(Array4::zeros((0, 1, 2, 2)), Array1::zeros(0)).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err:?}");
}

#[test]
fn accessors_describe_the_dataset() {
    let ds = dataset(12);
    assert_eq!(ds.len(), 12);
    assert!(!ds.is_empty());
    assert_eq!(ds.input_shape(), [1, 2, 3]);
    assert_eq!(ds.classes(), vec![0, 1, 2, 3, 4]);
    assert_eq!(ds.num_classes(), 5);
    assert!(ds.ood_labels().is_none());
    let sub = ds.subset(&[11, 0, 11]).unwrap();
    assert_eq!(sub.labels().to_vec(), vec![1, 0, 1]);
    assert_eq!(sub.inputs()[[0, 0, 1, 2]], 11.0);
    assert!(ds.subset(&[12]).is_err());
    let named = ds.clone().with_class_names(vec!["a".into(), "b".into()]);
    assert!(matches!(named, Err(Error::InvalidLabel { label: 2, .. })));
}

#[test]
fn split_by_class_keeps_order_and_labels() {
    let ds = dataset(20);
    let (ds_in, ds_out) = ds.split_by_class(&[1, 3]).unwrap();
    let in_ids: Vec<usize> = ds_in
        .inputs()
        .outer_iter()
        .map(|x| x[[0, 0, 0]] as usize)
        .collect();
    assert_eq!(in_ids, vec![1, 3, 6, 8, 11, 13, 16, 18]);
    assert_eq!(ds_in.labels().to_vec(), vec![1, 3, 1, 3, 1, 3, 1, 3]);
    assert_eq!(ds_out.len(), 12);
    assert!(ds_out.labels().iter().all(|l| ![1, 3].contains(l)));
    // Every class in: the OOD side is empty, and preparing it says so.
    let (all, none) = ds.split_by_class(&[0, 1, 2, 3, 4]).unwrap();
    assert_eq!((all.len(), none.len()), (20, 0));
    assert!(none.is_empty());
    assert!(matches!(
        none.prepare(&PrepareConfig::new(4)),
        Err(Error::Empty { .. })
    ));
}

#[test]
fn split_naming_an_absent_class_is_an_error() {
    let ds = dataset(10);
    let err = ds.split_by_class(&[0, 7]).unwrap_err();
    assert!(
        matches!(err, Error::InvalidLabel { label: 7, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("[0, 1, 2, 3, 4]"), "{err}");
}

#[test]
fn split_by_classes_drops_the_rest_and_rejects_overlap() {
    let ds = dataset(10);
    let (ds_in, ds_out) = ds.split_by_classes(&[0], &[4, 2]).unwrap();
    assert_eq!(ds_in.labels().to_vec(), vec![0, 0]);
    assert_eq!(ds_out.labels().to_vec(), vec![2, 4, 2, 4]);
    let err = ds.split_by_classes(&[0, 2], &[2]).unwrap_err();
    assert!(
        matches!(err, Error::InvalidLabel { label: 2, .. }),
        "{err:?}"
    );
    assert!(ds.split_by_classes(&[0], &[9]).is_err());
}

#[test]
fn add_out_data_concatenates_with_ood_labels() {
    let (ds_in, ds_out) = dataset(10).split_by_class(&[0, 1]).unwrap();
    let both = ds_in.add_out_data(&ds_out).unwrap();
    assert_eq!(both.len(), 10);
    assert_eq!(both.labels().to_vec(), vec![0, 1, 0, 1, 2, 3, 4, 2, 3, 4]);
    assert_eq!(
        both.ood_labels().unwrap().to_vec(),
        vec![0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    );
    let custom = ds_in.add_out_data_with(&ds_out, 1, 0).unwrap();
    assert_eq!(custom.ood_labels().unwrap()[0], 1);
    assert_eq!(custom.ood_labels().unwrap()[9], 0);

    let other = OodDataset::from_arrays(Array4::zeros((2, 3, 2, 3)), Array1::zeros(2)).unwrap();
    let err = ds_in.add_out_data(&other).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("[1, 2, 3]") && err.to_string().contains("[3, 2, 3]"));
}

#[test]
fn prepare_batches_in_order_keeping_the_last_partial_batch() {
    let ds = dataset(10);
    let prepared = ds.prepare(&PrepareConfig::new(4)).unwrap();
    assert_eq!(prepared.num_batches(), 3);
    assert_eq!(prepared.iter().len(), 3);
    let batches = all_batches(&prepared);
    let sizes: Vec<usize> = batches.iter().map(Batch::len).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    let order: Vec<usize> = batches.iter().flat_map(origins).collect();
    assert_eq!(order, (0..10).collect::<Vec<_>>());
    assert_eq!(batches[2].labels.as_ref().unwrap().to_vec(), vec![3, 4]);
    assert!(batches[0].ood_labels.is_none());
    let unlabelled = ds
        .prepare(&PrepareConfig::new(4).with_labels(false))
        .unwrap();
    assert!(all_batches(&unlabelled).iter().all(|b| b.labels.is_none()));
}

#[test]
fn shuffling_is_a_permutation_per_pass_deterministic_per_seed_and_keeps_pairs() {
    let n = 103;
    let (ds_in, ds_out) = dataset(n).split_by_class(&[0, 1, 2]).unwrap();
    let ds = ds_in.add_out_data(&ds_out).unwrap();
    let config = PrepareConfig::new(10).shuffle(7).with_ood_labels(true);
    let a = ds.prepare(&config).unwrap();
    let b = ds.prepare(&config).unwrap();

    let mut passes = Vec::new();
    for _ in 0..3 {
        let (pa, pb) = (all_batches(&a), all_batches(&b));
        assert_eq!(pa, pb, "same seed, same pass: same batches");
        let mut order = Vec::new();
        for batch in &pa {
            let ids = origins(batch);
            // Labels and OOD labels still belong to the image they came with.
            let labels = batch.labels.as_ref().unwrap();
            let ood = batch.ood_labels.as_ref().unwrap();
            for (k, &orig) in ids.iter().enumerate() {
                let pos = (0..ds.len())
                    .find(|&j| ds.inputs()[[j, 0, 0, 0]] as usize == orig)
                    .unwrap();
                assert_eq!(labels[k], ds.labels()[pos]);
                assert_eq!(ood[k], ds.ood_labels().unwrap()[pos]);
                assert_eq!(ood[k], u8::from(labels[k] >= 3));
            }
            order.extend(ids);
        }
        let set: BTreeSet<usize> = order.iter().copied().collect();
        assert_eq!(set.len(), n, "each sample exactly once per pass");
        let unshuffled: Vec<usize> = (0..n).map(|row| order_of(&ds, row)).collect();
        assert_ne!(order, unshuffled, "shuffled, not in dataset order");
        passes.push(order);
    }
    assert_ne!(passes[0], passes[1], "a new permutation at each pass");
    assert_ne!(passes[1], passes[2]);
    // `pass(k)` reproduces the k-th pass regardless of what ran before.
    let replay: Vec<usize> = a
        .pass(1)
        .map(|b| origins(&b.unwrap()))
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(replay, passes[1]);
    // Another seed, another order.
    let c = ds.prepare(&PrepareConfig::new(10).shuffle(8)).unwrap();
    let other: Vec<usize> = all_batches(&c).iter().flat_map(origins).collect();
    assert_ne!(other, passes[0]);
}

/// The original index stored at row `i` of `ds`.
fn order_of(ds: &OodDataset, i: usize) -> usize {
    ds.inputs()[[i, 0, 0, 0]] as usize
}

#[test]
fn batches_are_built_lazily_one_at_a_time() {
    let ds = dataset(50);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let config = PrepareConfig::new(8).preprocess(move |b| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(b)
    });
    let prepared = ds.prepare(&config).unwrap();
    let mut iter = prepared.iter();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing built before iteration"
    );
    iter.next().unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    iter.next().unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn preprocess_applies_and_its_errors_propagate() {
    let ds = dataset(6);
    let scaled = ds
        .prepare(&PrepareConfig::new(6).preprocess(|mut b| {
            b.inputs /= 2.0;
            Ok(b)
        }))
        .unwrap();
    let batch = scaled.iter().next().unwrap().unwrap();
    assert_eq!(batch.inputs[[5, 0, 1, 1]], 2.5);

    let failing = ds
        .prepare(&PrepareConfig::new(4).preprocess(|_| Err(Error::custom("bad pixel"))))
        .unwrap();
    let err = failing.iter().next().unwrap().unwrap_err();
    assert_eq!(err.to_string(), "bad pixel");

    // A preprocess that drops rows (here keeping the labels, which would
    // misalign them): inputs before vs after.
    let dropping = ds
        .prepare(&PrepareConfig::new(4).preprocess(|mut b| {
            b.inputs = b.inputs.slice_move(ndarray::s![..1, .., .., ..]);
            Ok(b)
        }))
        .unwrap();
    let err = dropping.iter().next().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                left: 4,
                right: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn prepare_rejects_bad_configs() {
    let ds = dataset(5);
    let err = ds.prepare(&PrepareConfig::new(0)).unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidParameter {
            name: "batch_size",
            ..
        }
    ));
    let err = ds
        .prepare(&PrepareConfig::new(2).with_ood_labels(true))
        .unwrap_err();
    assert!(matches!(err, Error::MissingInput { .. }), "{err}");
    assert!(err.to_string().contains("no OOD labels"), "{err}");
}
