//! Fits on shards that merge: every feature detector fitted on four
//! shards of its fit features (`fit_shards`, and by hand through
//! `fitter` / `update` / `merge` as a cluster's workers would) scores as
//! the one-pass fit on all of them does; fitters that cannot be one fit
//! refuse to merge.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, s};
use oodkit::detectors::{
    Dice, Fdbd, FeatureDetector, Gmm, GradNorm, Gram, Knn, LayerBatch, LayerFitter, Mahalanobis,
    Nci, NnGuide, PrincipalDims, Residual, Rmds, ScoreFeatures, She, Vim, Vra,
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
fn agrees<F: FeatureDetector + Sync>(detector: F, tolerance: f32) {
    let name = format!("{detector:?}");
    let (x, labels) = labelled(CUTS[4], 7);
    let queries = labelled(40, 8).0.mapv(|v| v * 1.3 - 0.2);
    let whole = detector.fit_features(x.view(), labels.view()).unwrap();
    let expected = whole.score_features(queries.view()).unwrap();
    let parts = shards(&x, &labels);

    let sharded = detector.fit_shards(&parts).unwrap();
    let by_hand = by_hand(&detector, &parts);
    for fitted in [sharded, by_hand] {
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

#[test]
fn every_feature_detector_fitted_on_four_shards_scores_as_one_pass() {
    let (w, b) = head();
    // Sums and banks: the same arithmetic up to the order of additions.
    agrees(Knn::new(5).unwrap(), 0.0);
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
