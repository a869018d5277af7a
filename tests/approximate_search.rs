//! The approximate (HNSW) index of KNN and NNGuide: it finds the exact
//! neighbours of nearly every query on class-structured features, ranks
//! ID and OOD as the exact search does, scores a query the same alone or
//! in a batch, saves and loads bit for bit, and a file whose graph names a
//! node that is not there is an error, never a search through it.
#![cfg(feature = "ann")]

mod common;

use common::detector_file::rewrite;
use ndarray::{Array1, Array2, s};
use oodkit::Error;
use oodkit::detectors::{
    FeatureDetector, FittedFeatures, FittedKnn, FittedNnGuide, Hnsw, Knn, NnGuide, Persist,
    ScoreFeatures,
};
use oodkit::metrics::auroc;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const D: usize = 48;
const CLASSES: usize = 40;

/// `n` rows around `CLASSES` random centres (`ood`: other centres), with
/// Gaussian noise, through a ReLU: penultimate-layer-like features.
fn features(n: usize, seed: u64, ood: bool) -> Array2<f32> {
    let mut centres_rng = StdRng::seed_from_u64(if ood { 2 } else { 1 });
    let centres = Array2::from_shape_fn((CLASSES, D), |_| 1.5 * gaussian(&mut centres_rng));
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_fn((n, D), |(i, j)| {
        (centres[[i % CLASSES, j]] + gaussian(&mut rng)).max(0.0)
    })
}

fn gaussian(rng: &mut StdRng) -> f32 {
    let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// Graphs built on several threads differ from run to run (the order of
/// insertion does); on one, a test's figures are the same every run.
fn one_thread<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(work)
}

fn fitted(detector: Knn, x: &Array2<f32>) -> FittedKnn {
    one_thread(|| {
        detector
            .fit_features(x.view(), Array1::zeros(x.nrows()).view())
            .unwrap()
    })
}

#[test]
fn approximate_knn_finds_the_exact_kth_neighbour_of_nearly_every_query() {
    let fit = features(20_000, 3, false);
    let (id, ood) = (features(300, 4, false), features(300, 5, true));
    let exact = fitted(Knn::new(50).unwrap(), &fit);
    let approximate = fitted(Knn::new(50).unwrap().approximate(Hnsw::default()), &fit);
    assert_eq!(approximate.approximate(), Some(&Hnsw::default()));
    assert_eq!(exact.approximate(), None);
    let exactly =
        |a: &Array1<f32>, e: &Array1<f32>| a.iter().zip(e).filter(|(a, e)| a == e).count();
    for (queries, what) in [(&id, "ID"), (&ood, "OOD")] {
        let e = exact.score_features(queries.view()).unwrap();
        let a = approximate.score_features(queries.view()).unwrap();
        // The graph never finds a nearer k-th neighbour than there is, and
        // what it finds is near it.
        assert!(
            a.iter().zip(&e).all(|(a, e)| a >= e),
            "{what}: below the exact"
        );
        let above: Vec<f32> = a.iter().zip(&e).map(|(a, e)| (a - e) / e).collect();
        let worst = above.iter().copied().fold(0.0, f32::max);
        let mean = above.iter().sum::<f32>() / above.len() as f32;
        let (worst_bound, mean_bound) = if what == "ID" {
            (0.05, 0.002)
        } else {
            (0.2, 0.03)
        };
        assert!(
            worst < worst_bound && mean < mean_bound,
            "{what}: scores {mean} above the exact on average, {worst} at most"
        );
        if what == "ID" {
            // An ID query lies among the fit features: the graph finds its
            // 50 nearest nearly always. An OOD query is far from all of
            // them, its neighbours nearly equidistant: the graph finds
            // near ones, not always the 50 nearest.
            let same = exactly(&a, &e);
            assert!(same >= 280, "{same} of 300 ID queries scored exactly");
        }
    }
    // Recall@50: the share of each query's 50 nearest the graph returns.
    let recall = |queries: &Array2<f32>| {
        let (truth, _) = exact.neighbours(queries.view()).unwrap();
        let (found, distances) = approximate.neighbours(queries.view()).unwrap();
        assert!(
            distances
                .rows()
                .into_iter()
                .all(|d| d.windows(2).into_iter().all(|w| w[0] <= w[1]))
        );
        let hits: usize = truth
            .rows()
            .into_iter()
            .zip(found.rows())
            .map(|(t, f)| f.iter().filter(|v| t.iter().any(|u| u == *v)).count())
            .sum();
        hits as f64 / truth.len() as f64
    };
    let (id_recall, ood_recall) = (recall(&id), recall(&ood));
    assert!(id_recall >= 0.99, "recall@50 {id_recall} on ID queries");
    assert!(ood_recall >= 0.85, "recall@50 {ood_recall} on OOD queries");
    let e = auroc(
        exact.score_features(id.view()).unwrap().view(),
        exact.score_features(ood.view()).unwrap().view(),
    )
    .unwrap();
    let a = auroc(
        approximate.score_features(id.view()).unwrap().view(),
        approximate.score_features(ood.view()).unwrap().view(),
    )
    .unwrap();
    assert!((a - e).abs() <= 1e-3, "AUROC {a} approximate, {e} exact");

    // A wider search finds more of the OOD queries' true neighbours.
    let mut wide = approximate.clone();
    wide.set_ef_search(1000).unwrap();
    let e = exact.score_features(ood.view()).unwrap();
    let narrow = exactly(&approximate.score_features(ood.view()).unwrap(), &e);
    let wide = exactly(&wide.score_features(ood.view()).unwrap(), &e);
    assert!(
        wide > narrow + 100,
        "{wide} of 300 OOD queries scored exactly with ef_search 1000, {narrow} with 128"
    );
}

#[test]
fn approximate_knn_round_trips_and_scores_a_query_alone_as_in_a_batch() {
    let fit = features(3_000, 6, false);
    let queries = features(40, 7, true);
    let knn = fitted(
        Knn::new(10)
            .unwrap()
            .approximate(Hnsw::new(8, 64, 32).unwrap()),
        &fit,
    );
    let batch = knn.score_features(queries.view()).unwrap();
    for i in [0, 17, 39] {
        let alone = knn.score_features(queries.slice(s![i..i + 1, ..])).unwrap();
        assert_eq!(alone[0].to_bits(), batch[i].to_bits(), "query {i}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("knn.oodkit");
    knn.save(&path).unwrap();
    let loaded = FittedKnn::load(&path).unwrap();
    assert_eq!(loaded, knn);
    assert_eq!(loaded.score_features(queries.view()).unwrap(), batch);
    assert_eq!(loaded.approximate(), Some(&Hnsw::new(8, 64, 32).unwrap()));

    let guide = NnGuide::new(5, 0.5)
        .unwrap()
        .with_head(
            Array2::eye(D).slice(s![..4, ..]).to_owned(),
            Array1::zeros(4),
        )
        .unwrap()
        .approximate(Hnsw::default())
        .fit_features(fit.view(), Array1::zeros(fit.nrows()).view())
        .unwrap();
    let path = dir.path().join("nnguide.oodkit");
    guide.save(&path).unwrap();
    let loaded = FittedNnGuide::load(&path).unwrap();
    assert_eq!(loaded, guide);
    assert_eq!(
        loaded.score_features(queries.view()).unwrap(),
        guide.score_features(queries.view()).unwrap()
    );
}

#[test]
fn a_graph_over_a_handful_of_rows_saves_loads_and_scores_exactly() {
    // Few rows: the graph may have no upper level at all (empty arrays in
    // the file), and every row is reachable, so the scores are the exact.
    let fit = features(6, 12, false);
    let queries = features(4, 13, true);
    let exact = fitted(Knn::new(3).unwrap(), &fit);
    let knn = fitted(Knn::new(3).unwrap().approximate(Hnsw::default()), &fit);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.oodkit");
    knn.save(&path).unwrap();
    let loaded = FittedKnn::load(&path).unwrap();
    assert_eq!(loaded, knn);
    assert_eq!(
        loaded.score_features(queries.view()).unwrap(),
        exact.score_features(queries.view()).unwrap()
    );
}

#[test]
fn approximate_nnguide_ranks_id_and_ood_as_the_exact_guidance() {
    let fit = features(12_000, 8, false);
    let (id, ood) = (features(200, 9, false), features(200, 10, true));
    let head = (
        Array2::from_shape_fn((CLASSES, D), |(c, j)| ((c * 7 + j * 3) % 11) as f32 / 11.0),
        Array1::zeros(CLASSES),
    );
    let guide = |approximate: Option<Hnsw>| {
        let g = NnGuide::new(20, 0.5)
            .unwrap()
            .with_head(head.0.clone(), head.1.clone())
            .unwrap();
        let g = match approximate {
            Some(hnsw) => g.approximate(hnsw),
            None => g,
        };
        one_thread(|| {
            g.fit_features(fit.view(), Array1::zeros(fit.nrows()).view())
                .unwrap()
        })
    };
    let exact = guide(None);
    let area = |g: &FittedNnGuide| {
        auroc(
            g.score_features(id.view()).unwrap().view(),
            g.score_features(ood.view()).unwrap().view(),
        )
        .unwrap()
    };
    // The largest inner products are harder to find by a graph than the
    // nearest points: a wider search serves them.
    let approximate = guide(Some(Hnsw::new(16, 128, 512).unwrap()));
    let (e, a) = (area(&exact), area(&approximate));
    assert!((a - e).abs() <= 1e-3, "AUROC {a} approximate, {e} exact");
    let (e, a) = (
        exact.score_features(ood.view()).unwrap(),
        approximate.score_features(ood.view()).unwrap(),
    );
    // The guidance is a mean of products: one missed neighbour moves it a
    // little, never past the exact (which averages the largest).
    let close = a
        .iter()
        .zip(&e)
        .filter(|(a, e)| ((*a - *e) / *e).abs() < 1e-3)
        .count();
    assert!(
        close >= 170,
        "{close} of 200 within 1e-3 of the exact guidance"
    );
}

#[test]
fn a_graph_that_does_not_hold_together_does_not_load() {
    let fit = features(2_000, 10, false);
    let knn = fitted(Knn::new(5).unwrap().approximate(Hnsw::default()), &fit);
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("knn.oodkit");
    knn.save(&saved).unwrap();
    let bytes = std::fs::read(&saved).unwrap();
    let path = dir.path().join("edited.oodkit");
    let refused = |what: &str| {
        let err = FittedFeatures::<FittedKnn>::load(&path)
            .map(|_| ())
            .or_else(|_| FittedKnn::load(&path).map(|_| ()))
            .unwrap_err();
        assert!(matches!(err, Error::CorruptFile { .. }), "{what}: {err}");
        err.to_string()
    };
    let set_u32 = |data: &mut Vec<u8>, at: usize, v: u32| {
        data[4 * at..4 * at + 4].copy_from_slice(&v.to_le_bytes());
    };

    // A base link to a node beyond the stored features.
    rewrite(&path, &bytes, |_, arrays| {
        let (_, _, _, data) = arrays
            .iter_mut()
            .find(|a| a.0.ends_with("hnsw_base"))
            .unwrap();
        set_u32(data, 3, 2_000 + 5);
    });
    assert!(refused("base link").contains("beyond the stored features"));

    // An upper link to a node that is only on the base level.
    let base_only = (0..2_000_u32)
        .find(|v| !knn_upper_nodes(&bytes).contains(v))
        .unwrap();
    rewrite(&path, &bytes, |_, arrays| {
        let (_, _, _, data) = arrays
            .iter_mut()
            .find(|a| a.0.ends_with("hnsw_upper"))
            .unwrap();
        set_u32(data, 0, base_only);
    });
    assert!(refused("upper link").contains("not on that level"));

    // An entry that is not one of the highest nodes.
    rewrite(&path, &bytes, |header, _| {
        header["detector"]["states"][0]["hnsw_entry"] = base_only.into();
    });
    assert!(refused("entry").contains("enters at node"));

    // Parameters without their graph, a graph without parameters.
    rewrite(&path, &bytes, |_, arrays| {
        arrays.retain(|a| !a.0.contains("hnsw_"));
    });
    refused("no graph");
    rewrite(&path, &bytes, |header, _| {
        header["detector"]["states"][0]
            .as_object_mut()
            .unwrap()
            .remove("approximate");
    });
    refused("no parameters");

    // Parameters a constructor refuses.
    rewrite(&path, &bytes, |header, _| {
        header["detector"]["states"][0]["approximate"]["ef_search"] = 0.into();
    });
    assert!(refused("ef_search 0").contains("ef_search"));
}

#[test]
fn a_graph_cut_apart_falls_back_to_the_exact_search() {
    // Every link removed: from the entry the graph reaches one row, fewer
    // than k, so each query is searched exactly instead.
    let fit = features(500, 14, false);
    let queries = features(20, 15, true);
    let labels = Array1::zeros(fit.nrows());
    let head = (
        Array2::from_shape_fn((CLASSES, D), |(c, j)| ((c * 5 + j) % 7) as f32 / 7.0),
        Array1::zeros(CLASSES),
    );
    let guide = NnGuide::new(5, 1.0)
        .unwrap()
        .with_head(head.0, head.1)
        .unwrap();
    let exact_guide = guide.fit_features(fit.view(), labels.view()).unwrap();
    let guide = one_thread(|| {
        guide
            .approximate(Hnsw::default())
            .fit_features(fit.view(), labels.view())
            .unwrap()
    });
    let exact_knn = fitted(Knn::new(5).unwrap(), &fit);
    let knn = fitted(Knn::new(5).unwrap().approximate(Hnsw::default()), &fit);
    let dir = tempfile::tempdir().unwrap();
    let cut = |arrays: &mut common::detector_file::Arrays| {
        for (name, _, _, data) in arrays.iter_mut() {
            if name.ends_with("hnsw_base") || name.ends_with("hnsw_upper") {
                data.fill(0xff);
            }
        }
    };
    let (saved, edited) = (
        dir.path().join("saved.oodkit"),
        dir.path().join("cut.oodkit"),
    );

    knn.save(&saved).unwrap();
    rewrite(&edited, &std::fs::read(&saved).unwrap(), |_, arrays| {
        cut(arrays)
    });
    let cut_knn = FittedKnn::load(&edited).unwrap();
    assert_eq!(
        cut_knn.score_features(queries.view()).unwrap(),
        exact_knn.score_features(queries.view()).unwrap()
    );

    guide.save(&saved).unwrap();
    rewrite(&edited, &std::fs::read(&saved).unwrap(), |_, arrays| {
        cut(arrays)
    });
    let cut_guide = FittedNnGuide::load(&edited).unwrap();
    let (a, e) = (
        cut_guide.score_features(queries.view()).unwrap(),
        exact_guide.score_features(queries.view()).unwrap(),
    );
    for (a, e) in a.iter().zip(&e) {
        assert!((a - e).abs() <= 1e-5 * e.abs(), "{a} cut graph, {e} exact");
    }
}

/// The upper nodes of the graph in a saved KNN file.
fn knn_upper_nodes(bytes: &[u8]) -> Vec<u32> {
    let tensors = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let view = tensors.tensor("layer.0.hnsw_upper_nodes").unwrap();
    view.data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn parameters_out_of_range_are_errors_that_say_what_to_give() {
    for (m, efc, ef) in [
        (3, 128, 64),
        (65, 128, 64),
        (16, 8, 64),
        (16, 5000, 64),
        (16, 128, 0),
    ] {
        let err = Hnsw::new(m, efc, ef).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { .. }), "{err}");
    }
    let fit = features(500, 11, false);
    let mut exact = fitted(Knn::new(5).unwrap(), &fit);
    let err = exact.set_ef_search(64).unwrap_err();
    assert!(err.to_string().contains("searches exactly"), "{err}");
    let mut approximate = fitted(Knn::new(5).unwrap().approximate(Hnsw::default()), &fit);
    assert!(approximate.set_ef_search(0).is_err());
    assert_eq!(approximate.approximate(), Some(&Hnsw::default()));
}
