//! Issue 35's side-by-side table, oodkit's side: the same rows as
//! `scripts/scale/peers.py`, on the files of `scripts/scale/make_sets.py`
//! (the directory in `OODKIT_SCALE_DIR`; without it this bench prints how
//! to make them and ends). Each row runs in a rayon pool of each thread
//! count of `SCALE_THREADS` (default `1,2`; the products' threads are the
//! pool's too), so the table reads both the figure and the thread scaling.
//! One JSON object per line on stdout, like the peers'.
//!
//! ```sh
//! python scripts/scale/make_sets.py /tmp/scale
//! OODKIT_SCALE_DIR=/tmp/scale cargo bench --bench scale
//! ```
//! `scripts/scale/run.sh` runs both sides and prints the table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2, s};
use oodkit::datasets::npy::{read_labels, read_matrix, read_vector};
use oodkit::detectors::{
    Energy, FeatureDetector, FittedTemperatureScaling, Knn, Mahalanobis, PrincipalDims,
    ScoreFeatures, ScoreLogits, Vim,
};
use oodkit::metrics::{auroc, fpr_at_tpr};

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Failure> {
    let Some(dir) = std::env::var_os("OODKIT_SCALE_DIR").map(PathBuf::from) else {
        eprintln!(
            "scale: set OODKIT_SCALE_DIR to a folder made by scripts/scale/make_sets.py \
             (scripts/scale/run.sh does both)"
        );
        return Ok(());
    };
    let rows = std::env::var("SCALE_ROWS").unwrap_or_else(|_| "a,b,logits,scores".into());
    let threads: Vec<usize> = std::env::var("SCALE_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .map(|t| t.trim().parse())
        .collect::<Result<_, _>>()?;
    let repeats: usize = std::env::var("SCALE_REPEATS")
        .unwrap_or_else(|_| "3".into())
        .parse()?;
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
        pool.install(|| -> Result<(), Failure> {
            let bench = Bench {
                threads: t,
                repeats,
            };
            for (name, dims) in [("a", 256), ("b", 1000)] {
                if rows.split(',').any(|r| r == name) {
                    bench.class_set(&dir.join(name), name, dims)?;
                }
            }
            if rows.split(',').any(|r| r == "logits") {
                bench.logits(&dir.join("logits.npy"))?;
            }
            if rows.split(',').any(|r| r == "scores") {
                bench.metrics(&dir)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

struct Bench {
    threads: usize,
    repeats: usize,
}

/// One of make_sets.py's class-structured sets.
struct Set {
    fit: Array2<f32>,
    labels: Array1<i64>,
    id: Array2<f32>,
    ood: Array2<f32>,
    head_w: Array2<f32>,
    head_b: Array1<f32>,
}

impl Bench {
    fn emit(&self, row: &str, seconds: f64, extra: &str) {
        println!(
            "{{\"row\": \"{row}\", \"tool\": \"oodkit\", \"threads\": {}, \"seconds\": {seconds}{extra}}}",
            self.threads
        );
    }

    /// The median wall time of `repeats` runs of `work`, and its last result.
    fn timed<T>(
        &self,
        repeats: usize,
        mut work: impl FnMut() -> oodkit::Result<T>,
    ) -> oodkit::Result<(f64, T)> {
        let mut times = Vec::new();
        let mut out = None;
        for _ in 0..repeats.max(1) {
            let start = Instant::now();
            out = Some(work()?);
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let out = out.ok_or_else(|| oodkit::Error::custom("no run"))?;
        Ok((times[times.len() / 2], out))
    }

    /// p50 and p99 of single-row calls of `fitted` on the first `count`
    /// rows of `queries` (after 20 unmeasured ones), emitted as `row`.
    fn one_query_row(
        &self,
        row: &str,
        fitted: &impl ScoreFeatures,
        queries: &Array2<f32>,
        count: usize,
    ) -> Result<(), Failure> {
        for i in 0..20 {
            fitted.score_features(queries.slice(s![i..=i, ..]))?;
        }
        let mut times: Vec<Duration> = Vec::new();
        for i in 0..count.min(queries.nrows()) {
            let start = Instant::now();
            std::hint::black_box(fitted.score_features(queries.slice(s![i..=i, ..]))?);
            times.push(start.elapsed());
        }
        times.sort();
        let at = |q: f64| times[((q * times.len() as f64) as usize).min(times.len() - 1)];
        let (p50, p99) = (at(0.5).as_secs_f64(), at(0.99).as_secs_f64());
        self.emit(row, p50, &format!(", \"p99\": {p99}"));
        Ok(())
    }

    fn class_set(&self, dir: &Path, name: &str, dims: usize) -> Result<(), Failure> {
        let set = Set {
            fit: read_matrix(dir.join("fit.npy"))?,
            labels: read_labels(dir.join("fit_labels.npy"))?,
            id: read_matrix(dir.join("id.npy"))?,
            ood: read_matrix(dir.join("ood.npy"))?,
            head_w: read_matrix(dir.join("head_w.npy"))?,
            head_b: read_vector(dir.join("head_b.npy"))?,
        };
        // The big set's exact searches take tens of seconds: once.
        let repeats = if name == "a" { self.repeats } else { 1 };

        let only = std::env::var("SCALE_ONLY").unwrap_or_default();
        let wanted = |what: &str| only.is_empty() || only.split(',').any(|o| o == what);
        if wanted("knn") {
            self.knn(&set, name, repeats)?;
        }
        if wanted("maha") {
            self.mahalanobis(&set, name, repeats)?;
        }
        if wanted("vim") {
            self.vim(&set, name, dims)?;
        }
        Ok(())
    }

    fn knn(&self, set: &Set, name: &str, repeats: usize) -> Result<(), Failure> {
        let knn = Knn::new(50)?;
        let (t, fitted) = self.timed(repeats, || {
            knn.fit_features(set.fit.view(), set.labels.view())
        })?;
        self.emit(&format!("knn_fit_{name}"), t, "");
        self.score_row(&format!("knn_score_{name}"), &fitted, set, repeats)?;
        self.one_query_row(&format!("knn_one_{name}"), &fitted, &set.id, 200)?;
        Ok(())
    }

    fn mahalanobis(&self, set: &Set, name: &str, repeats: usize) -> Result<(), Failure> {
        let mahalanobis = Mahalanobis::new();
        let (t, fitted) = self.timed(repeats, || {
            mahalanobis.fit_features(set.fit.view(), set.labels.view())
        })?;
        self.emit(&format!("maha_fit_{name}"), t, "");
        self.score_row(&format!("maha_score_{name}"), &fitted, set, self.repeats)?;
        if name == "a" {
            self.one_query_row(&format!("maha_one_{name}"), &fitted, &set.id, 500)?;
        }
        Ok(())
    }

    fn vim(&self, set: &Set, name: &str, dims: usize) -> Result<(), Failure> {
        let vim = Vim::new(PrincipalDims::Count(dims))?
            .with_head(set.head_w.clone(), set.head_b.clone())?;
        let (t, fitted) = self.timed(1, || vim.fit_features(set.fit.view(), set.labels.view()))?;
        self.emit(&format!("vim_fit_{name}"), t, "");
        self.score_row(&format!("vim_score_{name}"), &fitted, set, self.repeats)?;
        if name == "a" {
            self.one_query_row(&format!("vim_one_{name}"), &fitted, &set.id, 500)?;
        }
        Ok(())
    }

    /// Scores the ID and OOD rows (one call each), with the AUROC.
    fn score_row(
        &self,
        row: &str,
        fitted: &impl ScoreFeatures,
        set: &Set,
        repeats: usize,
    ) -> Result<(), Failure> {
        let (t, (a, b)) = self.timed(repeats, || {
            Ok((
                fitted.score_features(set.id.view())?,
                fitted.score_features(set.ood.view())?,
            ))
        })?;
        let area = auroc(a.view(), b.view())?;
        self.emit(row, t, &format!(", \"auroc\": {area}"));
        Ok(())
    }

    fn logits(&self, path: &Path) -> Result<(), Failure> {
        let logits = read_matrix(path)?;
        let (t, _) = self.timed(self.repeats, || {
            Energy::default().score_logits(logits.view())
        })?;
        self.emit("energy_1e6", t, "");
        // MSP is temperature scaling at T = 1.
        let msp = FittedTemperatureScaling::new(1.0)?;
        let (t, _) = self.timed(self.repeats, || msp.score_logits(logits.view()))?;
        self.emit("msp_1e6", t, "");
        Ok(())
    }

    fn metrics(&self, dir: &Path) -> Result<(), Failure> {
        let a = read_vector(dir.join("scores_id.npy"))?;
        let b = read_vector(dir.join("scores_ood.npy"))?;
        let (t, _) = self.timed(self.repeats, || {
            Ok((
                auroc(a.view(), b.view())?,
                fpr_at_tpr(a.view(), b.view(), 0.95)?,
            ))
        })?;
        self.emit("metrics_1e7", t, "");
        Ok(())
    }
}
