//! Deep KNN (Sun et al., ICML 2022): distance to the k-th nearest
//! in-distribution feature, after L2 normalisation.

use std::borrow::Cow;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, s};
use rayon::prelude::*;

use super::PartialState;
use super::hnsw::{self, Graph, Hnsw, Metric};
use super::neighbours::{INDEX_BLOCK, KBest, QUERY_BLOCK, normalise_into, normalised};
use super::stored::StoredState;
use super::traits::{check_width, merge_check};
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, Needs, Param, Registration, built_features, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::linalg::{
    gemm_into, lanes_dot as dot, lanes_squared_distance, with_sequential_products,
};
use crate::model::{Model, check_finite};
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
    approximate: Option<Hnsw>,
    options: FeatureOptions,
}

impl Default for Knn {
    /// k = 50, the paper's choice for CIFAR-10.
    fn default() -> Self {
        Knn {
            k: 50,
            approximate: None,
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

    /// Searches the fit features approximately, through an HNSW graph
    /// built at the end of the fit (the `ann` feature; see [`Hnsw`]):
    /// for indexes of hundreds of thousands of rows and more, where one
    /// query through the exact search reads the whole index. The graph
    /// saves with the detector and is checked when it loads. A query's
    /// candidates are ranked by their exact distances, so its score is the
    /// exact k-th distance whenever the graph finds the k nearest; in a
    /// graph that reaches fewer than k features from a query, that query
    /// is searched exactly.
    ///
    /// ```
    /// # #[cfg(feature = "ann")] {
    /// use ndarray::{Array1, Array2};
    /// use oodkit::detectors::{FeatureDetector, Hnsw, Knn, ScoreFeatures};
    ///
    /// let fit = Array2::from_shape_fn((2000, 16), |(i, j)| ((i * 31 + j * 17) % 97) as f32);
    /// let labels = Array1::zeros(2000);
    /// let exact = Knn::new(10)?.fit_features(fit.view(), labels.view())?;
    /// let approximate = Knn::new(10)?
    ///     .approximate(Hnsw::default())
    ///     .fit_features(fit.view(), labels.view())?;
    /// let queries = fit.slice(ndarray::s![..50, ..]);
    /// let (a, e) = (approximate.score_features(queries)?, exact.score_features(queries)?);
    /// // A graph finds the true neighbours of nearly every query.
    /// let same = a.iter().zip(&e).filter(|(a, e)| a == e).count();
    /// assert!(same >= 45, "{same} of 50");
    /// # }
    /// # Ok::<(), oodkit::Error>(())
    /// ```
    pub fn approximate(mut self, hnsw: Hnsw) -> Self {
        self.approximate = Some(hnsw);
        self
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
            approximate: self.approximate,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnnFitter {
    k: usize,
    dim: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approximate: Option<Hnsw>,
    #[serde(with = "array")]
    rows: Vec<f32>,
}

impl PartialState for KnnFitter {
    const DETECTORS: &'static [&'static str] = &["KNN"];

    fn detector(&self) -> &'static str {
        "KNN"
    }

    fn width(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        Knn::new(self.k)?;
        if let Some(hnsw) = &self.approximate {
            hnsw.validate()?;
        }
        if self.dim == 0 || !self.rows.len().is_multiple_of(self.dim) {
            return Err(Error::custom(format!(
                "its {} stored values are not rows of {} features",
                self.rows.len(),
                self.dim
            )));
        }
        Ok(())
    }
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
        merge_check(
            "KNN",
            "approximate indexes",
            &self.approximate,
            &other.approximate,
        )?;
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
        let graph = match &self.approximate {
            Some(hnsw) => Some(Graph::build(features.view(), hnsw, Metric::SquaredL2)?),
            None => None,
        };
        Ok(FittedKnn {
            k: self.k,
            features,
            sq_norms,
            approximate: self.approximate,
            graph,
        })
    }
}

/// What KNN learns of a layer: the normalised fit features (the index the
/// search runs over) and their squared norms (1, or 0), with k; with an
/// approximate index, its parameters and graph (arrays `hnsw_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredKnn")]
pub struct FittedKnn {
    k: usize,
    #[serde(with = "array")]
    features: Array2<f32>,
    #[serde(with = "array")]
    sq_norms: Array1<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approximate: Option<Hnsw>,
    #[serde(flatten)]
    graph: Option<Graph>,
}

/// A KNN state as a file holds it: a graph that does not read back is an
/// error, never an exact search in its place.
#[derive(Deserialize)]
struct StoredKnn {
    k: usize,
    #[serde(with = "array")]
    features: Array2<f32>,
    #[serde(with = "array")]
    sq_norms: Array1<f32>,
    #[serde(default)]
    approximate: Option<Hnsw>,
    #[serde(flatten)]
    graph: Option<Graph>,
}

impl TryFrom<StoredKnn> for FittedKnn {
    type Error = Error;

    fn try_from(stored: StoredKnn) -> Result<Self> {
        hnsw::check_stored("KNN", stored.approximate.as_ref(), stored.graph.as_ref())?;
        Ok(FittedKnn {
            k: stored.k,
            features: stored.features,
            sq_norms: stored.sq_norms,
            approximate: stored.approximate,
            graph: stored.graph,
        })
    }
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

    /// The approximate index's parameters, when it has one.
    pub fn approximate(&self) -> Option<&Hnsw> {
        self.approximate.as_ref()
    }

    /// Searches the approximate index with `ef_search` candidates per
    /// query from now on (more: more of the true neighbours found, slower).
    /// An error when the detector has no approximate index or `ef_search`
    /// is out of range.
    pub fn set_ef_search(&mut self, ef_search: usize) -> Result<()> {
        match &mut self.approximate {
            Some(hnsw) => {
                *hnsw = hnsw.with_ef_search(ef_search)?;
                Ok(())
            }
            None => Err(Error::invalid(
                "ef_search",
                ef_search,
                "this KNN searches exactly: fit it with an approximate index (Knn::approximate) \
                 to tune one",
            )),
        }
    }

    /// The k nearest stored features of each row of `features` (L2
    /// normalised first, as the fit features were), nearest first: their
    /// rows in the order they were fitted, and their squared distances —
    /// the evidence behind each score, which is the last distance of its
    /// row. Found by the search the detector scores with (exact, or its
    /// approximate index). Errors on a width other than the fit features'
    /// or a value that is not finite.
    ///
    /// ```
    /// use ndarray::array;
    /// use oodkit::detectors::{FeatureDetector, Knn, ScoreFeatures};
    ///
    /// let fit = array![[1.0_f32, 0.0], [0.0, 1.0], [1.0, 1.0]];
    /// let knn = Knn::new(2)?.fit_features(fit.view(), array![0_i64, 0, 0].view())?;
    /// let (rows, distances) = knn.neighbours(array![[2.0_f32, 0.1]].view())?;
    /// assert_eq!(rows.row(0).to_vec(), vec![0, 2]); // (1, 0), then (1, 1)
    /// let scores = knn.score_features(array![[2.0_f32, 0.1]].view())?;
    /// assert_eq!(distances[[0, 1]], scores[0]);
    /// # Ok::<(), oodkit::Error>(())
    /// ```
    pub fn neighbours(&self, features: ArrayView2<f32>) -> Result<(Array2<usize>, Array2<f32>)> {
        check_width(self.width(), features, "features to search")?;
        check_finite(features, "features to search")?;
        let n = features.nrows();
        let mut rows = Array2::zeros((n, self.k));
        let mut distances = Array2::zeros((n, self.k));
        let parts: Vec<Vec<Vec<(f32, usize)>>> = (0..n)
            .step_by(QUERY_BLOCK)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|start| {
                let part = features.slice(s![start..(start + QUERY_BLOCK).min(n), ..]);
                with_sequential_products(|| self.nearest(normalised(part).view()))
            })
            .collect();
        for (i, mut found) in parts.into_iter().flatten().enumerate() {
            found.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (j, (d, row)) in found.into_iter().take(self.k).enumerate() {
                rows[[i, j]] = row;
                distances[[i, j]] = d;
            }
        }
        Ok((rows, distances))
    }

    /// Each of `queries` (normalised): candidates with their squared
    /// distances summed directly (Σ (q − x)², no cancellation, one fixed
    /// order of additions), among which are its k nearest. The exact
    /// search ranks by the expanded ‖q‖² + ‖x‖² − 2 q·x, whose rounding
    /// depends on how the products were blocked: it keeps a few candidates
    /// more and their direct distances settle the order, so a query scores
    /// the same alone or in any batch. The graph's search sums them
    /// directly already; a query from which it reaches fewer than k
    /// features is searched exactly.
    fn nearest(&self, queries: ArrayView2<f32>) -> Vec<Vec<(f32, usize)>> {
        let direct = |q: ArrayView1<f32>, candidates: Vec<usize>| -> Vec<(f32, usize)> {
            candidates
                .into_iter()
                .map(|i| (lanes_squared_distance(q, self.features.row(i)), i))
                .collect()
        };
        let (Some(graph), Some(hnsw)) = (&self.graph, &self.approximate) else {
            return self
                .exact_candidates(queries)
                .into_iter()
                .zip(queries.rows())
                .map(|(c, q)| direct(q, c))
                .collect();
        };
        let ef = hnsw.ef_search().max(self.candidates());
        let one = |q: ArrayView1<f32>| {
            let found = graph.search(self.features.view(), q, ef, Metric::SquaredL2);
            if found.len() >= self.k {
                return found;
            }
            let exact = self.exact_candidates(q.insert_axis(Axis(0)));
            direct(q, exact.into_iter().next().unwrap_or_default())
        };
        if queries.nrows() <= FEW_QUERIES {
            return queries.rows().into_iter().map(one).collect();
        }
        (0..queries.nrows())
            .into_par_iter()
            .with_min_len(16)
            .map(|i| one(queries.row(i)))
            .collect()
    }

    /// The k-th smallest distance of `found`.
    fn kth(&self, mut found: Vec<(f32, usize)>) -> f32 {
        let k = self.k.min(found.len()).max(1) - 1;
        found
            .select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0))
            .1
            .0
    }
}

impl ScoreFeatures for FittedKnn {
    fn width(&self) -> usize {
        self.features.ncols()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let queries = normalised(batch.features);
        Ok(self
            .nearest(queries.view())
            .into_iter()
            .map(|found| self.kth(found))
            .collect())
    }
}

impl FittedKnn {
    /// The indices of the k nearest stored features of each of `queries`
    /// (normalised), and a few more (see [`Self::nearest`]), by the exact
    /// search.
    fn exact_candidates(&self, queries: ArrayView2<f32>) -> Vec<Vec<usize>> {
        if queries.nrows() <= FEW_QUERIES {
            return self.few_candidates(queries);
        }
        let norms: Cow<[f32]> = match self.sq_norms.as_slice() {
            Some(norms) => Cow::Borrowed(norms),
            None => Cow::Owned(self.sq_norms.to_vec()),
        };
        let mut candidates = Vec::with_capacity(queries.nrows());
        // Sized to the work: one query needs one row of products, not a
        // whole block (8 MB).
        let mut products = Array2::<f32>::zeros((
            queries.nrows().min(QUERY_BLOCK),
            self.features.nrows().min(INDEX_BLOCK),
        ));
        for q_block in queries.axis_chunks_iter(Axis(0), QUERY_BLOCK) {
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
                    // The products' rows are contiguous (a slice of a
                    // standard-layout array).
                    let row = row.as_slice().unwrap_or_default();
                    kbest.offer_distances(qn, row, x_norms, start);
                }
            }
            candidates.extend(best.into_iter().map(KBest::indices));
        }
        candidates
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
    /// The candidates of each of a few `queries` (normalised), by the
    /// exact search.
    fn few_candidates(&self, queries: ArrayView2<f32>) -> Vec<Vec<usize>> {
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
        best.into_iter().map(KBest::indices).collect()
    }

    /// How many candidates a search keeps per query: k, and a few more so
    /// that a near-tie at the k-th place (within f32 rounding of the
    /// expanded distance) is settled by [`Self::kth_exact`].
    fn candidates(&self) -> usize {
        (self.k + RERANK_MARGIN).min(self.features.nrows())
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
        if let Some(graph) = &self.graph {
            graph.validate(n)?;
        }
        Ok(())
    }
}

/// KNN in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "KNN",
    "knn",
    "squared distance to the k-th nearest normalised fit feature, KNN (features)",
    &[
        Param {
            name: "k",
            doc: "the neighbour whose distance is the score [default: 50]",
        },
        hnsw::PARAMS[0],
        hnsw::PARAMS[1],
        hnsw::PARAMS[2],
    ],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features],
    },
    |p| {
        let knn = Knn::new(p.count("k")?.unwrap_or(50))?;
        let knn = match hnsw::from_params(p)? {
            Some(hnsw) => knn.approximate(hnsw),
            None => knn,
        };
        built_features(on_layers(knn, p)?)
    },
    load_features::<FittedKnn>,
);
