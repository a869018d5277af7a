//! The approximate (HNSW) KNN index against the exact search, on the sets
//! of `scripts/scale/make_sets.py` (`b`: 200 000 x 2 048, `c`: 1 000 000 x
//! 512; the folder in `OODKIT_SCALE_DIR`, the sets in `ANN_SETS`, default
//! `b,c`). One JSON object per line:
//!
//! - `build`: the graph's build time (the fit of `Knn::approximate`), the
//!   saved file's size and its load time;
//! - `recall`: recall@50 of the graph's neighbours against the exact ones
//!   (`FittedKnn::neighbours`), on 200 ID and 200 OOD queries;
//! - `auroc`: the AUROC of every ID and OOD row, exact and approximate;
//! - `one_query`: p50 / p99 of one-row calls, exact and approximate.
//!
//! `ANN_PHASE=load ANN_SETS=c` only loads the saved file and scores one
//! row: run it under `/usr/bin/time -v` for the peak memory of a load.
//! `ANN_PHASE=sweep` loads the saved file and measures recall, ΔAUROC and
//! one-query time at each `ef_search` of `ANN_EF_LIST` (default
//! `64,128,256,512,1024`), without building again.
//! `ANN_M`, `ANN_EF_CONSTRUCTION`, `ANN_EF_SEARCH` set the index (16, 128,
//! 256 by default, `Hnsw::default()`). The saved files stay in the set's folder.
//!
//! ```sh
//! OODKIT_SCALE_DIR=/tmp/oodkit-scale cargo bench --bench approximate
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2, concatenate, s};
use oodkit::datasets::npy::read_matrix;
use oodkit::detectors::{FeatureDetector, FittedKnn, Hnsw, Knn, Persist, ScoreFeatures};
use oodkit::metrics::auroc;

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Failure> {
    let Some(dir) = std::env::var_os("OODKIT_SCALE_DIR").map(PathBuf::from) else {
        eprintln!(
            "approximate: set OODKIT_SCALE_DIR to a folder made by scripts/scale/make_sets.py"
        );
        return Ok(());
    };
    let env = |name: &str, default: usize| -> Result<usize, Failure> {
        Ok(std::env::var(name).map_or(Ok(default), |v| v.parse())?)
    };
    let hnsw = Hnsw::new(
        env("ANN_M", 16)?,
        env("ANN_EF_CONSTRUCTION", 128)?,
        env("ANN_EF_SEARCH", 256)?,
    )?;
    let phase = std::env::var("ANN_PHASE").unwrap_or_default();
    for set in std::env::var("ANN_SETS")
        .unwrap_or_else(|_| "b,c".into())
        .split(',')
    {
        let folder = dir.join(set);
        let file = folder.join(format!("knn_hnsw{}.oodkit", hnsw.connectivity()));
        if phase == "load" {
            load_only(set, &folder, &file)?;
        } else if phase == "sweep" {
            sweep(set, &folder, &file)?;
        } else {
            compare(set, &folder, &file, hnsw)?;
        }
    }
    Ok(())
}

fn emit(set: &str, row: &str, fields: &str) {
    println!(
        "{{\"set\": \"{set}\", \"row\": \"{row}\", \"threads\": {}, {fields}}}",
        rayon::current_num_threads()
    );
}

fn load_only(set: &str, folder: &Path, file: &Path) -> Result<(), Failure> {
    let start = Instant::now();
    let knn = FittedKnn::load(file)?;
    let seconds = start.elapsed().as_secs_f64();
    let id = read_matrix(folder.join("id.npy"))?;
    let score = knn.score_features(id.slice(s![..1, ..]))?;
    emit(
        set,
        "load",
        &format!(
            "\"seconds\": {seconds}, \"bytes\": {}, \"score\": {}",
            std::fs::metadata(file)?.len(),
            score[0]
        ),
    );
    Ok(())
}

fn sweep(set: &str, folder: &Path, file: &Path) -> Result<(), Failure> {
    let mut approximate = FittedKnn::load(file)?;
    let fit = read_matrix(folder.join("fit.npy"))?;
    let exact = Knn::new(50)?.fit_features(fit.view(), Array1::zeros(fit.nrows()).view())?;
    drop(fit);
    let id = read_matrix(folder.join("id.npy"))?;
    let ood = read_matrix(folder.join("ood.npy"))?;
    let sample = concatenate![
        ndarray::Axis(0),
        id.slice(s![..200, ..]),
        ood.slice(s![..200, ..])
    ];
    let (truth, _) = exact.neighbours(sample.view())?;
    let (a, b) = (
        exact.score_features(id.view())?,
        exact.score_features(ood.view())?,
    );
    let exact_auroc = auroc(a.view(), b.view())?;
    let (e50, _) = one_query(&exact, &id, 100)?;
    let list = std::env::var("ANN_EF_LIST").unwrap_or_else(|_| "64,128,256,512,1024".into());
    for ef in list.split(',') {
        approximate.set_ef_search(ef.trim().parse()?)?;
        let (found, _) = approximate.neighbours(sample.view())?;
        let id_recall = recall(
            &truth.slice(s![..200, ..]).to_owned(),
            &found.slice(s![..200, ..]).to_owned(),
        );
        let ood_recall = recall(
            &truth.slice(s![200.., ..]).to_owned(),
            &found.slice(s![200.., ..]).to_owned(),
        );
        let (a, b) = (
            approximate.score_features(id.view())?,
            approximate.score_features(ood.view())?,
        );
        let delta = (auroc(a.view(), b.view())? - exact_auroc).abs();
        let (a50, a99) = one_query(&approximate, &id, 500)?;
        emit(
            set,
            "sweep",
            &format!(
                "\"ef_search\": {ef}, \"recall_id\": {id_recall}, \"recall_ood\": {ood_recall}, \
                 \"delta_auroc\": {delta}, \"exact_auroc\": {exact_auroc}, \"p50\": {a50}, \"p99\": {a99}, \
                 \"exact_p50\": {e50}, \"speedup_p50\": {}",
                e50 / a50
            ),
        );
    }
    Ok(())
}

fn compare(set: &str, folder: &Path, file: &Path, hnsw: Hnsw) -> Result<(), Failure> {
    let fit = read_matrix(folder.join("fit.npy"))?;
    let id = read_matrix(folder.join("id.npy"))?;
    let ood = read_matrix(folder.join("ood.npy"))?;
    let labels = Array1::zeros(fit.nrows());

    let start = Instant::now();
    let approximate = Knn::new(50)?
        .approximate(hnsw)
        .fit_features(fit.view(), labels.view())?;
    let build = start.elapsed().as_secs_f64();
    approximate.save(file)?;
    let start = Instant::now();
    let loaded = FittedKnn::load(file)?;
    let load = start.elapsed().as_secs_f64();
    if loaded != approximate {
        return Err("the saved index loads back different".into());
    }
    drop(loaded);
    emit(
        set,
        "build",
        &format!(
            "\"rows\": {}, \"dims\": {}, \"m\": {}, \"ef_construction\": {}, \"ef_search\": {}, \
             \"seconds\": {build}, \"bytes\": {}, \"load_seconds\": {load}",
            fit.nrows(),
            fit.ncols(),
            hnsw.connectivity(),
            hnsw.ef_construction(),
            hnsw.ef_search(),
            std::fs::metadata(file)?.len()
        ),
    );
    let start = Instant::now();
    let exact = Knn::new(50)?.fit_features(fit.view(), labels.view())?;
    let exact_fit = start.elapsed().as_secs_f64();
    drop(fit);

    let sample = concatenate![
        ndarray::Axis(0),
        id.slice(s![..200, ..]),
        ood.slice(s![..200, ..])
    ];
    let (truth, _) = exact.neighbours(sample.view())?;
    for (what, range) in [("id", 0..200), ("ood", 200..400)] {
        let (found, _) = approximate.neighbours(sample.slice(s![range.clone(), ..]))?;
        emit(
            set,
            "recall",
            &format!(
                "\"queries\": \"{what}\", \"recall_at_50\": {}",
                recall(&truth.slice(s![range, ..]).to_owned(), &found)
            ),
        );
    }

    let areas = |knn: &FittedKnn| -> Result<(f64, f64), Failure> {
        let start = Instant::now();
        let (a, b) = (
            knn.score_features(id.view())?,
            knn.score_features(ood.view())?,
        );
        Ok((auroc(a.view(), b.view())?, start.elapsed().as_secs_f64()))
    };
    let (exact_auroc, exact_seconds) = areas(&exact)?;
    let (approximate_auroc, approximate_seconds) = areas(&approximate)?;
    emit(
        set,
        "auroc",
        &format!(
            "\"exact\": {exact_auroc}, \"approximate\": {approximate_auroc}, \"delta\": {}, \
             \"exact_seconds\": {exact_seconds}, \"approximate_seconds\": {approximate_seconds}, \
             \"exact_fit_seconds\": {exact_fit}",
            (approximate_auroc - exact_auroc).abs()
        ),
    );

    let (e50, e99) = one_query(&exact, &id, 100)?;
    let (a50, a99) = one_query(&approximate, &id, 1000)?;
    emit(
        set,
        "one_query",
        &format!(
            "\"exact_p50\": {e50}, \"exact_p99\": {e99}, \"approximate_p50\": {a50}, \
             \"approximate_p99\": {a99}, \"speedup_p50\": {}",
            e50 / a50
        ),
    );
    Ok(())
}

/// The share of each row of `truth` that its row of `found` holds.
fn recall(truth: &Array2<usize>, found: &Array2<usize>) -> f64 {
    let hits: usize = truth
        .rows()
        .into_iter()
        .zip(found.rows())
        .map(|(t, f)| f.iter().filter(|v| t.iter().any(|u| u == *v)).count())
        .sum();
    hits as f64 / truth.len() as f64
}

/// p50 and p99 (seconds) of one-row calls on the first `count` rows of
/// `queries` (cycled), after 10 unmeasured ones.
fn one_query(knn: &FittedKnn, queries: &Array2<f32>, count: usize) -> Result<(f64, f64), Failure> {
    for i in 0..10 {
        knn.score_features(queries.slice(s![i..=i, ..]))?;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(count);
    for i in 0..count {
        let i = i % queries.nrows();
        let start = Instant::now();
        std::hint::black_box(knn.score_features(queries.slice(s![i..=i, ..]))?);
        times.push(start.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((q * times.len() as f64) as usize).min(times.len() - 1)].as_secs_f64();
    Ok((at(0.5), at(0.99)))
}
