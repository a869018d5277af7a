//! Deep KNN (Sun et al., ICML 2022): distance to the k-th nearest
//! in-distribution feature, after L2 normalisation.

use std::borrow::Cow;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, s};
use rayon::prelude::*;

use super::neighbours::{INDEX_BLOCK, KBest, QUERY_BLOCK, normalise_into, normalised};
use super::stored::StoredState;
use super::traits::merge_check;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, Needs, Param, Registration, built, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::linalg::{gemm_into, lanes_dot as dot, lanes_squared_distance};
use crate::model::Model;
use serde::{Deserialize, Serialize};

/// Deep KNN: each feature vector is L2-normalised (a zero vector stays
/// zero); the score is the **squared** Euclidean distance from the
/// normalised query to its k-th nearest normalised fit feature (higher =
/// more OOD). The Python toolkit (faiss) reports the squared distance too;
/// the ranking, hence every metric, is that of the plain distance.
///
/// The search is exact: blocks of queries against blocks of the stored
/// features by matrix products (‖q − x‖² = ‖q‖² + ‖x‖² − 2 q·x), keeping
/// only the k best per query (and a few more), so memory beyond the stored
/// features is O(block²), never an N × M distance matrix; the k-th distance
/// is then summed directly over the candidates kept, so a query scores the
/// same alone or in any batch. Batches are cut into parts searched on every
/// core; up to 8 queries (a service scoring one input) read each stored
/// feature once, with the index cut into parts across the cores instead.
/// The fit features are the index: memory O(N·D) in `f32`. Labels are not
/// used.
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
    type Fitted = FittedKnn;

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
#[derive(Debug, Clone)]
pub struct KnnFitter {
    k: usize,
    dim: usize,
    rows: Vec<f32>,
}

impl LayerFitter for KnnFitter {
    type Fitted = FittedKnn;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        let start = self.rows.len();
        self.rows.resize(start + batch.features.len(), 0.0);
        normalise_into(batch.features, &mut self.rows[start..]);
        Ok(())
    }

    /// The stored rows concatenate.
    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("KNN", "k", &self.k, &other.k)?;
        merge_check("KNN", "feature widths", &self.dim, &other.dim)?;
        self.rows.extend(other.rows);
        Ok(())
    }

    fn finish(self) -> Result<FittedKnn> {
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
        Ok(FittedKnn {
            k: self.k,
            features,
            sq_norms,
        })
    }
}

/// What KNN learns of a layer: the normalised fit features (the index the
/// search runs over) and their squared norms (1, or 0), with k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedKnn {
    k: usize,
    #[serde(with = "array")]
    features: Array2<f32>,
    #[serde(with = "array")]
    sq_norms: Array1<f32>,
}

impl FittedKnn {
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

impl ScoreFeatures for FittedKnn {
    fn width(&self) -> usize {
        self.features.ncols()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let queries = normalised(batch.features);
        if queries.nrows() <= FEW_QUERIES {
            return Ok(self.score_few(queries.view()));
        }
        let norms: Cow<[f32]> = match self.sq_norms.as_slice() {
            Some(norms) => Cow::Borrowed(norms),
            None => Cow::Owned(self.sq_norms.to_vec()),
        };
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
            let mut best: Vec<KBest> = (0..q_block.nrows())
                .map(|_| KBest::new(self.candidates()))
                .collect();
            for (start, x_block) in self
                .features
                .axis_chunks_iter(Axis(0), INDEX_BLOCK)
                .enumerate()
                .map(|(b, x)| (b * INDEX_BLOCK, x))
            {
                let x_norms = &norms[start..start + x_block.nrows()];
                let mut dots = products.slice_mut(s![..q_block.nrows(), ..x_block.nrows()]);
                gemm_into(dots.view_mut(), false, q_block, x_block, true);
                for ((row, &qn), kbest) in dots.rows().into_iter().zip(&q_norms).zip(&mut best) {
                    match row.as_slice() {
                        Some(row) => kbest.offer_distances(qn, row, x_norms, start),
                        None => {
                            for (j, (&dot, &xn)) in row.iter().zip(x_norms).enumerate() {
                                kbest.offer(qn + xn - 2.0 * dot, start + j);
                            }
                        }
                    }
                }
            }
            for ((o, kbest), q) in out.iter_mut().zip(best).zip(q_block.rows()) {
                *o = self.kth_exact(q, kbest.indices());
            }
        }
        Ok(scores)
    }
}

/// Up to this many queries (a service scoring one input), the search reads
/// each stored feature once and takes its dot product with every query
/// directly: no packing of the index for a matrix product, whose cost one
/// query does not repay. The index's parts are searched on every core.
const FEW_QUERIES: usize = 8;

/// Stored features per part of a few-query search: below twice this, one
/// thread searches them all.
const FEW_PART: usize = 8192;

impl FittedKnn {
    /// The k-th smallest squared distance of each of a few `queries`
    /// (normalised) to the stored features.
    fn score_few(&self, queries: ArrayView2<f32>) -> Array1<f32> {
        let q_norms: Vec<f32> = queries.rows().into_iter().map(|q| dot(q, q)).collect();
        let n = self.features.nrows();
        let parts = rayon::current_num_threads().min(n / FEW_PART).max(1);
        let rows = n.div_ceil(parts);
        let search = |part: usize| {
            let range = part * rows..((part + 1) * rows).min(n);
            let mut best: Vec<KBest> = q_norms
                .iter()
                .map(|_| KBest::new(self.candidates()))
                .collect();
            for (j, (x, &xn)) in self
                .features
                .slice(s![range.clone(), ..])
                .rows()
                .into_iter()
                .zip(self.sq_norms.slice(s![range.clone()]))
                .enumerate()
            {
                for ((kbest, q), &qn) in best.iter_mut().zip(queries.rows()).zip(&q_norms) {
                    kbest.offer(qn + xn - 2.0 * dot(q, x), range.start + j);
                }
            }
            best
        };
        let mut parts: Vec<Vec<KBest>> = if parts == 1 {
            vec![search(0)]
        } else {
            (0..parts).into_par_iter().map(search).collect()
        };
        let mut best = parts.swap_remove(0);
        for other in parts {
            for (kbest, more) in best.iter_mut().zip(other) {
                kbest.absorb(more);
            }
        }
        best.into_iter()
            .zip(queries.rows())
            .map(|(kbest, q)| self.kth_exact(q, kbest.indices()))
            .collect()
    }

    /// How many candidates a search keeps per query: k, and a few more so
    /// that a near-tie at the k-th place (within f32 rounding of the
    /// expanded distance) is settled by [`Self::kth_exact`].
    fn candidates(&self) -> usize {
        (self.k + RERANK_MARGIN).min(self.features.nrows())
    }

    /// The k-th smallest of the squared distances from `query` to the
    /// `candidates`, each summed directly (Σ (q − x)², no cancellation,
    /// one fixed order of additions): the search ranks by the
    /// expanded ‖q‖² + ‖x‖² − 2 q·x, whose rounding depends on how the
    /// products were blocked, so without this a query's score would change
    /// in its last bits with the size of the batch it came in.
    fn kth_exact(&self, query: ArrayView1<f32>, candidates: Vec<usize>) -> f32 {
        let mut distances: Vec<f32> = candidates
            .into_iter()
            .map(|i| lanes_squared_distance(query, self.features.row(i)))
            .collect();
        let k = self.k.min(distances.len()).max(1) - 1;
        let (_, kth, _) = distances.select_nth_unstable_by(k, f32::total_cmp);
        *kth
    }
}

/// Candidates kept beyond k for the exact re-ranking.
const RERANK_MARGIN: usize = 8;

impl StoredState for FittedKnn {
    const KINDS: &'static [&'static str] = &["KNN"];

    fn state_kind(&self) -> &'static str {
        "KNN"
    }

    fn validate(&self) -> Result<()> {
        let n = self.features.nrows();
        if self.sq_norms.len() != n {
            return Err(Error::custom(format!(
                "the arrays' shapes do not agree: features {:?}, sq_norms ({})",
                self.features.shape(),
                self.sq_norms.len()
            )));
        }
        if self.k == 0 || self.k > n {
            return Err(Error::custom(format!(
                "KNN's k = {} with {n} stored features",
                self.k
            )));
        }
        Ok(())
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
    load_features::<FittedKnn>,
);
