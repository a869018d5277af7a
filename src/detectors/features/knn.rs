//! Deep KNN (Sun et al., ICML 2022): distance to the k-th nearest
//! in-distribution feature, after L2 normalisation.

use ndarray::{Array1, Array2, ArrayView2, Axis, s};

use super::stored::StoredState;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::{Reader, Writer};
use crate::detectors::registry::{
    Capability, Needs, Param, Registration, built, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::linalg::gemm_into;
use crate::model::Model;
use serde_json::{Value, json};

/// Queries per block of the search.
pub(super) const QUERY_BLOCK: usize = 256;
/// Stored features per block of the search: a block of distances is
/// `QUERY_BLOCK × INDEX_BLOCK` floats (8 MiB), whatever the data's size.
pub(super) const INDEX_BLOCK: usize = 8192;

/// Deep KNN: each feature vector is L2-normalised (a zero vector stays
/// zero); the score is the **squared** Euclidean distance from the
/// normalised query to its k-th nearest normalised fit feature (higher =
/// more OOD). The Python toolkit (faiss) reports the squared distance too;
/// the ranking, hence every metric, is that of the plain distance.
///
/// The search is exact: blocks of queries against blocks of the stored
/// features by matrix products (‖q − x‖² = ‖q‖² + ‖x‖² − 2 q·x), keeping
/// only the k best per query, so memory beyond the stored features is
/// O(block²), never an N × M distance matrix. The fit features are the
/// index: memory O(N·D) in `f32`. Labels are not used.
///
/// ```
/// use ndarray::array;
/// use oodkit::detectors::{FeatureDetector, Knn, ScoreFeatures};
///
/// let fit = array![[1.0_f32, 0.0], [2.0, 0.0], [0.0, 1.0]];
/// let knn = Knn::new(2)?.fit_features(fit.view(), array![0_i64, 0, 1].view())?;
/// // (3, 0) normalises to (1, 0): its two nearest are (1, 0) twice, at 0.
/// // (1, 1) normalises to (0.71, 0.71): 2 − √2 to every fit point.
/// let scores = knn.score_features(array![[3.0_f32, 0.0], [1.0, 1.0]].view())?;
/// assert!(scores[0].abs() < 1e-6);
/// assert!((scores[1] - (2.0 - 2.0_f32.sqrt())).abs() < 1e-5);
/// assert!(Knn::new(0).is_err());
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// **Degenerate cases** (not errors): Identical fit features: every input
/// scores its squared distance to that one (normalised) point. Inputs of
/// norm 0 normalise to 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Knn {
    k: usize,
    options: FeatureOptions,
}

impl Default for Knn {
    /// k = 50, the paper's choice for CIFAR-10.
    fn default() -> Self {
        Knn {
            k: 50,
            options: FeatureOptions::default(),
        }
    }
}

impl Knn {
    /// Deep KNN with `k` ≥ 1 neighbours, on the penultimate layer.
    pub fn new(k: usize) -> Result<Self> {
        if k == 0 {
            return Err(Error::invalid("k", k, "must be at least 1"));
        }
        Ok(Knn {
            k,
            ..Knn::default()
        })
    }

    /// The number of neighbours k.
    pub fn k(&self) -> usize {
        self.k
    }
}

impl FeatureDetector for Knn {
    type Fitter = KnnFitter;
    type Fitted = KnnIndex;

    fn name(&self) -> &'static str {
        "KNN"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, _model: Option<&dyn Model>) -> Result<KnnFitter> {
        Ok(KnnFitter {
            k: self.k,
            dim: width,
            rows: Vec::new(),
        })
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }
}

/// Collects one layer's normalised fit features.
#[derive(Debug)]
pub struct KnnFitter {
    k: usize,
    dim: usize,
    rows: Vec<f32>,
}

/// `features` with each row scaled to unit L2 norm (zero rows stay zero).
pub(super) fn normalised(features: ArrayView2<f32>) -> Array2<f32> {
    let mut out = features.to_owned();
    for mut row in out.rows_mut() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row /= norm;
        }
    }
    out
}

impl LayerFitter for KnnFitter {
    type Fitted = KnnIndex;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        self.rows.extend(normalised(batch.features));
        Ok(())
    }

    fn finish(self) -> Result<KnnIndex> {
        let n = self.rows.len() / self.dim.max(1);
        if self.k > n {
            return Err(Error::invalid(
                "k",
                self.k,
                format!("exceeds the {n} fit samples: fit on more data or lower k"),
            ));
        }
        let features = Array2::from_shape_vec((n, self.dim), self.rows)?;
        let sq_norms = features.map_axis(Axis(1), |r| r.dot(&r));
        Ok(KnnIndex {
            k: self.k,
            features,
            sq_norms,
        })
    }
}

/// What KNN learns of a layer: the normalised fit features (the index the
/// search runs over) and their squared norms (1, or 0), with k.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnIndex {
    k: usize,
    features: Array2<f32>,
    sq_norms: Array1<f32>,
}

impl KnnIndex {
    /// The number of neighbours k.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The number of stored fit features.
    pub fn len(&self) -> usize {
        self.features.nrows()
    }

    /// Whether no feature is stored (never, once fitted).
    pub fn is_empty(&self) -> bool {
        self.features.nrows() == 0
    }
}

impl ScoreFeatures for KnnIndex {
    fn width(&self) -> usize {
        self.features.ncols()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let queries = normalised(batch.features);
        let mut scores = Array1::zeros(queries.nrows());
        // Sized to the work: one query needs one row of products, not a
        // whole block (8 MB).
        let mut products = Array2::<f32>::zeros((
            queries.nrows().min(QUERY_BLOCK),
            self.features.nrows().min(INDEX_BLOCK),
        ));
        for (q_block, mut out) in queries
            .axis_chunks_iter(Axis(0), QUERY_BLOCK)
            .zip(scores.axis_chunks_iter_mut(Axis(0), QUERY_BLOCK))
        {
            let q_norms = q_block.map_axis(Axis(1), |r| r.dot(&r));
            let mut best: Vec<KBest> = (0..q_block.nrows()).map(|_| KBest::new(self.k)).collect();
            for (start, x_block) in self
                .features
                .axis_chunks_iter(Axis(0), INDEX_BLOCK)
                .enumerate()
                .map(|(b, x)| (b * INDEX_BLOCK, x))
            {
                let x_norms = self.sq_norms.slice(s![start..start + x_block.nrows()]);
                let mut dots = products.slice_mut(s![..q_block.nrows(), ..x_block.nrows()]);
                gemm_into(dots.view_mut(), false, q_block, x_block, true);
                for ((row, &qn), kbest) in dots.rows().into_iter().zip(&q_norms).zip(&mut best) {
                    for (&dot, &xn) in row.iter().zip(&x_norms) {
                        kbest.offer(qn + xn - 2.0 * dot);
                    }
                }
            }
            for (o, kbest) in out.iter_mut().zip(best) {
                *o = kbest.kth().max(0.0);
            }
        }
        Ok(scores)
    }
}

/// The k smallest values offered so far (unordered), with a bound that
/// skips most candidates once k have been seen.
pub(super) struct KBest {
    k: usize,
    values: Vec<f32>,
    bound: f32,
}

impl KBest {
    pub(super) fn new(k: usize) -> Self {
        KBest {
            k,
            values: Vec::with_capacity(2 * k),
            bound: f32::INFINITY,
        }
    }

    pub(super) fn offer(&mut self, value: f32) {
        if value >= self.bound {
            return;
        }
        self.values.push(value);
        if self.values.len() == 2 * self.k {
            self.compact();
        }
    }

    /// Keeps the k smallest; the largest of them bounds later offers.
    fn compact(&mut self) {
        if self.values.len() > self.k {
            self.values
                .select_nth_unstable_by(self.k - 1, f32::total_cmp);
            self.values.truncate(self.k);
        }
        if self.values.len() == self.k {
            self.bound = self
                .values
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
        }
    }

    /// The mean of the k smallest values offered (of all, with fewer).
    pub(super) fn mean(mut self) -> f64 {
        self.compact();
        let n = self.values.len().max(1) as f64;
        self.values.iter().map(|&v| f64::from(v)).sum::<f64>() / n
    }

    /// The k-th smallest value offered.
    pub(super) fn kth(mut self) -> f32 {
        self.compact();
        self.values
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
    }
}

impl StoredState for KnnIndex {
    const KINDS: &'static [&'static str] = &["KNN"];

    fn state_kind(&self) -> &'static str {
        "KNN"
    }

    fn write_state(&self, file: &mut Writer, prefix: &str) -> Result<Value> {
        file.array(&format!("{prefix}features"), self.features.view());
        file.array(&format!("{prefix}sq_norms"), self.sq_norms.view());
        Ok(json!({ "k": self.k }))
    }

    fn read_state(
        file: &Reader,
        prefix: &str,
        params: &Value,
        width: usize,
        _kind: &str,
    ) -> Result<Self> {
        let features: Array2<f32> =
            file.array(&format!("{prefix}features"), &[None, Some(width)])?;
        let n = features.nrows();
        let sq_norms = file.array(&format!("{prefix}sq_norms"), &[Some(n)])?;
        let k = file.count(params, "k")?;
        if k == 0 || k > n {
            return Err(file.corrupt(format!("KNN's k = {k} with {n} stored features")));
        }
        Ok(KnnIndex {
            k,
            features,
            sq_norms,
        })
    }
}

/// KNN in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "KNN",
    "knn",
    "squared distance to the k-th nearest normalised fit feature, KNN (features)",
    &[Param {
        name: "k",
        doc: "the neighbour whose distance is the score [default: 50]",
    }],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features],
    },
    |p| built(on_layers(Knn::new(p.count("k")?.unwrap_or(50))?, p)?),
    load_features::<KnnIndex>,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbest_keeps_the_k_smallest() {
        let mut best = KBest::new(3);
        for v in [9.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 0.5, 5.0] {
            best.offer(v);
        }
        assert_eq!(best.kth(), 2.0);
        let mut one = KBest::new(1);
        for v in [4.0, 4.0, 3.0] {
            one.offer(v);
        }
        assert_eq!(one.kth(), 3.0);
    }
}
