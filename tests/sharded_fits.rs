//! Fits on shards that merge: every feature detector fitted on four
//! shards of its fit features (`fit_shards`, and by hand through
//! `fitter` / `update` / `merge` as a cluster's workers would) scores as
//! the one-pass fit on all of them does; fitters that cannot be one fit
//! refuse to merge. Partial fits saved to files by each worker and loaded
//! where they merge give the same detector bit for bit; files that cannot
//! be a partial fit are refused.

mod common;

use std::path::Path;

use common::detector_file::rewrite;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, s};
use oodkit::Error;
use oodkit::detectors::{
    AnyDetector, Dice, Fdbd, FeatureDetector, FittedKnn, Gmm, GradNorm, Gram, Hnsw, Knn,
    LayerBatch, LayerFitter, Mahalanobis, Nci, NnGuide, PartialFit, PartialState, Persist,
    PrincipalDims, Residual, Rmds, ScoreFeatures, She, Vim, Vra,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const D: usize = 6;
const CLASSES: usize = 3;

/// `n` rows of `D` features around a centre per class (`i % CLASSES`),
/// with spreads that differ by dimension.
fn labelled(n: usize, seed: u64) -> (Array2<f32>, Array1<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Array1<i64> = (0..n).map(|i| (i % CLASSES) as i64).collect();
    let x = Array2::from_shape_fn((n, D), |(i, j)| {
        let centre = 2.0 * ((labels[i] as f32 + 1.0) * (j as f32 + 1.0)).sin();
        centre + (0.4 + 0.2 * j as f32) * (rng.random::<f32>() - 0.5) * 3.0
    });
    (x, labels)
}

/// A head `(CLASSES, D)` that classifies most of [`labelled`]'s rows.
fn head() -> (Array2<f32>, Array1<f32>) {
    let w = Array2::from_shape_fn((CLASSES, D), |(c, j)| {
        2.0 * ((c as f32 + 1.0) * (j as f32 + 1.0)).sin()
    });
    (w, Array1::from(vec![0.1, -0.2, 0.05]))
}

/// Four shards of uneven, even sizes (NNGuide keeps every second sample
/// counted from each shard's start: even sizes keep the one pass's bank).
const CUTS: [usize; 5] = [0, 38, 60, 122, 150];

fn shards<'a>(
    x: &'a Array2<f32>,
    labels: &'a Array1<i64>,
) -> Vec<(ArrayView2<'a, f32>, ArrayView1<'a, i64>)> {
    CUTS.windows(2)
        .map(|w| (x.slice(s![w[0]..w[1], ..]), labels.slice(s![w[0]..w[1]])))
        .collect()
}

/// The sharded fits (by `fit_shards` and by hand) score the queries as
/// the one-pass fit does, to `tolerance` relative.
fn agrees<F: FeatureDetector + Sync>(detector: F, tolerance: f32)
where
    F::Fitter: PartialState,
{
    let name = format!("{detector:?}");
    let (x, labels) = labelled(CUTS[4], 7);
    let queries = labelled(40, 8).0.mapv(|v| v * 1.3 - 0.2);
    let whole = detector.fit_features(x.view(), labels.view()).unwrap();
    let expected = whole.score_features(queries.view()).unwrap();
    let parts = shards(&x, &labels);

    let sharded = detector.fit_shards(&parts).unwrap();
    let by_hand = by_hand(&detector, &parts);
    // Through files, as workers on other machines: the same arithmetic as
    // by hand, so the same scores bit for bit.
    let dir = tempfile::tempdir().unwrap();
    let through_files = through_files(&detector, &parts, dir.path());
    assert_eq!(
        through_files.score_features(queries.view()).unwrap(),
        by_hand.score_features(queries.view()).unwrap(),
        "{name}: the fit through partial files differs from the one in memory"
    );
    for fitted in [sharded, by_hand, through_files] {
        let scores = fitted.score_features(queries.view()).unwrap();
        for (i, (a, b)) in scores.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= tolerance * b.abs().max(1.0),
                "{name}: query {i} scores {a} sharded, {b} in one pass"
            );
        }
    }
}

/// What a cluster's driver does: each worker fits its shard's first pass,
/// the driver merges them in order, ends the first pass, and (when there
/// is a second) the workers run it on clones of the merged fitter, which
/// merge again.
fn batch<'a>((features, labels): &(ArrayView2<'a, f32>, ArrayView1<'a, i64>)) -> LayerBatch<'a> {
    LayerBatch {
        features: *features,
        labels: Some(*labels),
        logits: None,
    }
}

fn by_hand<F: FeatureDetector>(
    detector: &F,
    parts: &[(ArrayView2<f32>, ArrayView1<i64>)],
) -> F::Fitted {
    let mut workers = parts.iter().map(|part| {
        let mut fitter = detector.fitter(D, None).unwrap();
        fitter.update(&batch(part)).unwrap();
        fitter
    });
    let mut merged = workers.next().unwrap();
    for other in workers {
        merged.merge(other).unwrap();
    }
    if merged.end_first_pass().unwrap() {
        let mut seconds = parts.iter().map(|part| {
            let mut fitter = merged.clone();
            fitter.update_second(&batch(part)).unwrap();
            fitter
        });
        let mut second = seconds.next().unwrap();
        for other in seconds {
            second.merge(other).unwrap();
        }
        merged = second;
    }
    merged.finish().unwrap()
}

/// What workers on other machines do: each saves its shard's partial fit
/// to a file; the driver loads and merges them and, for a second pass,
/// saves the merged fit for every worker to load, update and save again.
fn through_files<F>(
    detector: &F,
    parts: &[(ArrayView2<f32>, ArrayView1<i64>)],
    dir: &Path,
) -> F::Fitted
where
    F: FeatureDetector,
    F::Fitter: PartialState,
{
    let path = |pass: &str, k: usize| dir.join(format!("{pass}-{k}.oodkit"));
    for (k, (features, labels)) in parts.iter().enumerate() {
        let partial = detector.partial_fit(*features, *labels).unwrap();
        partial.save(path("first", k)).unwrap();
    }
    let merge = |pass: &str| {
        let mut merged = PartialFit::<F>::load(path(pass, 0)).unwrap();
        for k in 1..parts.len() {
            merged
                .merge(PartialFit::load(path(pass, k)).unwrap())
                .unwrap();
        }
        merged
    };
    let mut merged = merge("first");
    if merged.end_first_pass().unwrap() {
        merged.save(dir.join("merged.oodkit")).unwrap();
        for (k, (features, labels)) in parts.iter().enumerate() {
            let mut copy = PartialFit::<F>::load(dir.join("merged.oodkit")).unwrap();
            assert!(copy.in_second_pass());
            copy.update(*features, *labels).unwrap();
            copy.save(path("second", k)).unwrap();
        }
        merged = merge("second");
    }
    merged.finish().unwrap()
}

#[test]
fn every_feature_detector_fitted_on_four_shards_scores_as_one_pass() {
    let (w, b) = head();
    // Sums and banks: the same arithmetic up to the order of additions.
    agrees(Knn::new(5).unwrap(), 0.0);
    // Graphs built on one thread are the same run to run.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| agrees(Knn::new(5).unwrap().approximate(Hnsw::default()), 0.0));
    agrees(She::new(), 1e-6);
    agrees(Gram::new(1..=3, 0.1).unwrap(), 0.0);
    agrees(Vra::default().with_head(w.clone(), b.clone()).unwrap(), 0.0);
    agrees(
        GradNorm::new().with_head(w.clone(), b.clone()).unwrap(),
        0.0,
    );
    agrees(
        NnGuide::new(3, 0.5)
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap(),
        0.0,
    );
    agrees(
        Dice::new(0.7)
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap(),
        1e-6,
    );
    agrees(
        Fdbd::default().with_head(w.clone(), b.clone()).unwrap(),
        1e-6,
    );
    agrees(
        Nci::new(0.01)
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap(),
        1e-6,
    );
    // Moments merged pairwise (Chan et al.), then inverted or decomposed.
    agrees(Mahalanobis::new(), 1e-6);
    agrees(Rmds::new(), 1e-6);
    agrees(Gmm::new(1e-3).unwrap(), 1e-6);
    let dims = PrincipalDims::Count(2);
    agrees(
        Residual::new(dims)
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap(),
        1e-6,
    );
    agrees(Vim::new(dims).unwrap().with_head(w, b).unwrap(), 1e-6);
}

#[test]
fn fitters_that_cannot_be_one_fit_refuse_to_merge() {
    let (x, labels) = labelled(30, 3);
    let batch = LayerBatch {
        features: x.view(),
        labels: Some(labels.view()),
        logits: None,
    };
    let fitted = |detector: &Knn, width: usize| {
        let mut fitter = detector.fitter(width, None).unwrap();
        if width == D {
            fitter.update(&batch).unwrap();
        }
        fitter
    };
    // Another k, another width.
    let mut three = fitted(&Knn::new(3).unwrap(), D);
    let err = three.merge(fitted(&Knn::new(4).unwrap(), D)).unwrap_err();
    assert!(err.to_string().contains("k differ (3 and 4)"), "{err}");
    let err = three
        .merge(fitted(&Knn::new(3).unwrap(), D + 1))
        .unwrap_err();
    assert!(err.to_string().contains("feature widths differ"), "{err}");
    // Mahalanobis with RMDS.
    let mut mahalanobis = Mahalanobis::new().fitter(D, None).unwrap();
    let err = mahalanobis
        .merge(Rmds::new().fitter(D, None).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("cannot merge"), "{err}");

    // ViM: a fitter past its first pass with one that is not, and second
    // passes from different first passes.
    let (w, b) = head();
    let vim = Vim::new(PrincipalDims::Count(2))
        .unwrap()
        .with_head(w, b)
        .unwrap();
    let first = |rows: std::ops::Range<usize>| {
        let mut fitter = vim.fitter(D, None).unwrap();
        fitter
            .update(&LayerBatch {
                features: x.slice(s![rows.clone(), ..]),
                labels: Some(labels.slice(s![rows])),
                logits: None,
            })
            .unwrap();
        fitter
    };
    let mut ended = first(0..30);
    assert!(ended.end_first_pass().unwrap());
    let err = ended.clone().merge(first(0..30)).unwrap_err();
    assert!(err.to_string().contains("ended its first pass"), "{err}");
    let mut other = first(0..15);
    other.end_first_pass().unwrap();
    let err = ended.merge(other).unwrap_err();
    assert!(err.to_string().contains("different first passes"), "{err}");
}

#[test]
fn bad_shards_are_refused() {
    let (x, labels) = labelled(20, 4);
    let knn = Knn::new(2).unwrap();
    let err = knn.fit_shards(&[]).unwrap_err();
    assert!(err.to_string().contains("at least one shard"), "{err}");
    let empty = x.slice(s![..0, ..]);
    let err = knn
        .fit_shards(&[(x.view(), labels.view()), (empty, labels.slice(s![..0]))])
        .unwrap_err();
    assert!(err.to_string().contains("shard 1"), "{err}");
    let narrow = x.slice(s![.., ..3]);
    let err = knn
        .fit_shards(&[(x.view(), labels.view()), (narrow, labels.view())])
        .unwrap_err();
    assert!(err.to_string().contains("shard 1"), "{err}");
    let mut bad = x.clone();
    bad[[3, 1]] = f32::NAN;
    let err = knn
        .fit_shards(&[(x.view(), labels.view()), (bad.view(), labels.view())])
        .unwrap_err();
    assert!(err.to_string().contains("shard 1"), "{err}");
    // A short label vector.
    let err = knn
        .fit_shards(&[(x.view(), labels.slice(s![..10]))])
        .unwrap_err();
    assert!(err.to_string().contains("shard 0"), "{err}");
}

/// A partial fit of `detector` on the first 40 rows, saved at `path`.
fn saved_partial<F>(detector: &F, path: &Path)
where
    F: FeatureDetector,
    F::Fitter: PartialState,
{
    let (x, labels) = labelled(40, 5);
    let partial = detector.partial_fit(x.view(), labels.view()).unwrap();
    partial.save(path).unwrap();
}

#[test]
fn a_partial_fit_file_is_not_a_detector_and_names_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.oodkit");
    saved_partial(&Mahalanobis::new(), &path);
    let info = oodkit::detectors::file::describe(&path).unwrap();
    assert_eq!(info.kind, "partial fit");
    assert_eq!(info.metadata["partial"]["detector"], "Mahalanobis");
    // Not a fitted detector, by any loader.
    let err = AnyDetector::load(&path).unwrap_err();
    assert!(matches!(err, Error::WrongFile { .. }), "{err}");
    assert!(
        err.to_string().contains("partial fit of Mahalanobis"),
        "{err}"
    );
    assert!(err.to_string().contains("merge the partial fits"), "{err}");
    let err = FittedKnn::load(&path).unwrap_err();
    assert!(matches!(err, Error::WrongFile { .. }), "{err}");
    // Not another detector's partial fit.
    let err = PartialFit::<Knn>::load(&path).unwrap_err();
    assert!(err.to_string().contains("partial fit of KNN"), "{err}");
    assert!(
        err.to_string().contains("partial fit of Mahalanobis"),
        "{err}"
    );
    // RMDS shares the fitter: it loads as what it is, and refuses to merge
    // with Mahalanobis.
    let rmds = dir.path().join("rmds.oodkit");
    saved_partial(&Rmds::new(), &rmds);
    let mut mahalanobis = PartialFit::<Mahalanobis>::load(&path).unwrap();
    let err = mahalanobis
        .merge(PartialFit::load(&rmds).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("cannot merge"), "{err}");
}

#[test]
fn partial_fits_in_different_passes_or_widths_refuse_to_merge() {
    let (w, b) = head();
    let vim = Vim::new(PrincipalDims::Count(2))
        .unwrap()
        .with_head(w, b)
        .unwrap();
    let (x, labels) = labelled(40, 6);
    let first = vim.partial_fit(x.view(), labels.view()).unwrap();
    // ViM cannot finish without its second pass.
    let err = first.clone().finish().unwrap_err();
    assert!(err.to_string().contains("second pass"), "{err}");
    let mut ended = first.clone();
    assert!(ended.end_first_pass().unwrap());
    let err = ended.end_first_pass().unwrap_err();
    assert!(err.to_string().contains("already ended"), "{err}");
    let err = ended.clone().merge(first).unwrap_err();
    assert!(err.to_string().contains("ended its first pass"), "{err}");
    // A second pass fed rows of another width.
    let err = ended
        .update(x.slice(s![.., ..3]), labels.view())
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let knn = Knn::new(2).unwrap();
    let mut six = knn.partial_fit(x.view(), labels.view()).unwrap();
    let three = knn
        .partial_fit(x.slice(s![.., ..3]), labels.view())
        .unwrap();
    let err = six.merge(three).unwrap_err();
    assert!(err.to_string().contains("6 and of 3 columns"), "{err}");
    // An empty shard's fit merges as nothing.
    let mut merged = PartialFit::new(&knn, D).unwrap();
    merged.merge(six).unwrap();
    let fitted = merged.finish().unwrap();
    assert_eq!(fitted.len(), 40);
    assert!(PartialFit::new(&knn, 0).is_err());
}

/// Rewrites the partial fit at `path` into `bad` with `edit`, checksums
/// matching, and returns why `PartialFit::<F>::load` refuses it.
fn refused<F>(
    path: &Path,
    bad: &Path,
    edit: impl FnOnce(&mut serde_json::Value, &mut common::detector_file::Arrays),
) -> String
where
    F: FeatureDetector,
    F::Fitter: PartialState,
{
    let bytes = std::fs::read(path).unwrap();
    rewrite(bad, &bytes, edit);
    let err = PartialFit::<F>::load(bad).unwrap_err();
    assert!(
        matches!(err, Error::CorruptFile { .. } | Error::WrongFile { .. }),
        "{err}"
    );
    err.to_string()
}

fn array<'a>(
    arrays: &'a mut common::detector_file::Arrays,
    name: &str,
) -> &'a mut (String, safetensors::Dtype, Vec<usize>, Vec<u8>) {
    arrays
        .iter_mut()
        .find(|a| a.0 == name)
        .unwrap_or_else(|| panic!("no array {name}"))
}

#[test]
fn partial_fit_files_that_cannot_be_one_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bad) = (
        dir.path().join("part.oodkit"),
        dir.path().join("bad.oodkit"),
    );

    // KNN: rows that are not rows of the width; a width of 0; k of 0.
    saved_partial(&Knn::new(3).unwrap(), &path);
    let why = refused::<Knn>(&path, &bad, |_, arrays| {
        let rows = array(arrays, "fitter.rows");
        rows.2 = vec![rows.2[0] - 1];
        rows.3.truncate(rows.3.len() - 4);
    });
    assert!(why.contains("not rows of 6 features"), "{why}");
    let why = refused::<Knn>(&path, &bad, |header, _| {
        header["partial"]["state"]["k"] = 0.into();
    });
    assert!(why.contains("k"), "{why}");
    let why = refused::<Knn>(&path, &bad, |header, _| {
        header["partial"]["width"] = 7.into();
    });
    assert!(why.contains("on 7 columns"), "{why}");

    // Moments: classes out of order, a count missing, counts past any data.
    saved_partial(&Mahalanobis::new(), &path);
    let why = refused::<Mahalanobis>(&path, &bad, |header, _| {
        header["partial"]["state"]["class_labels"] = serde_json::json!([2, 1, 0]);
    });
    assert!(why.contains("ascending"), "{why}");
    let why = refused::<Mahalanobis>(&path, &bad, |header, _| {
        header["partial"]["state"]["class_counts"] = serde_json::json!([13, 13]);
    });
    assert!(why.contains("class counts has 2 entries where 3"), "{why}");
    let why = refused::<Mahalanobis>(&path, &bad, |header, _| {
        header["partial"]["state"]["class_counts"] = serde_json::json!([u64::MAX, 13, 14]);
    });
    assert!(why.contains("more than any fit holds"), "{why}");
    let why = refused::<Mahalanobis>(&path, &bad, |_, arrays| {
        let within = array(arrays, "fitter.within");
        within.2 = vec![3, 12];
    });
    assert!(why.contains("scatter"), "{why}");
    // RMDS's overall moments must count what the classes count.
    saved_partial(&Rmds::new(), &path);
    let why = refused::<Rmds>(&path, &bad, |header, _| {
        header["partial"]["state"]["total_count"] = 41.into();
    });
    assert!(why.contains("count 41 samples"), "{why}");

    // SHE keeps no more samples than it saw.
    saved_partial(&She::new(), &path);
    let why = refused::<She>(&path, &bad, |header, _| {
        header["partial"]["state"]["class_kept"] = serde_json::json!([14, 14, 14]);
    });
    assert!(why.contains("keeps 14 of 13"), "{why}");

    // ViM: a residual basis without the second pass's sums.
    let (w, b) = head();
    let vim = Vim::new(PrincipalDims::Count(2))
        .unwrap()
        .with_head(w, b)
        .unwrap();
    let (x, labels) = labelled(40, 5);
    let mut ended = vim.partial_fit(x.view(), labels.view()).unwrap();
    ended.end_first_pass().unwrap();
    ended.save(&path).unwrap();
    let why = refused::<Vim>(&path, &bad, |header, _| {
        header["partial"]["state"]
            .as_object_mut()
            .unwrap()
            .remove("second_pass_sums");
    });
    assert!(why.contains("second pass is incomplete"), "{why}");
    // The intact file loads, in its second pass.
    assert!(PartialFit::<Vim>::load(&path).unwrap().in_second_pass());
}
