//! NNGuide, nearest-neighbour guidance of the energy (Park et al., ICCV 2023).

use ndarray::{Array1, Array2, ArrayView2, Axis, s};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::PartialState;
use super::head::{Head, logsumexp};
use super::hnsw::{self, Graph, Hnsw, Metric};
use super::neighbours::{INDEX_BLOCK, KBest, QUERY_BLOCK, normalised};
use super::partial::check_count;
use super::stored::StoredState;
use super::traits::merge_check;
use super::{FeatureDetector, FeatureOptions, LayerBatch, LayerFitter, ScoreFeatures};
use crate::detectors::file::array;
use crate::detectors::registry::{
    Capability, Needs, Param, Registration, built_features, load_features, on_layers,
};
use crate::error::{Error, Result};
use crate::linalg::{gemm_into, lanes_dot};
use crate::model::{Model, last_layer_of};

/// NNGuide: a guide bank of in-distribution features, each L2-normalised
/// and scaled by its confidence (its energy, logsumexp of its logits);
/// an input's guidance is the mean inner product of its normalised
/// feature with its k most similar bank entries, and
/// score = −guidance × logsumexp(logits) (higher = more OOD).
///
/// Defaults as OpenOOD v1.5 (`configs/postprocessors/nnguide.yml`):
/// k = 100, a bank of 1% of the fit data. OpenOOD takes the first 1% of
/// its shuffled training loader; here the bank is every 100th fit sample
/// (evenly spaced, ⌊N·fraction⌋ of them), so a dataset sorted by class
/// still gives every class a place in the bank. A bank smaller than k is
/// an error (raise the fraction or lower k). The search is exact and
/// blocked, as [`Knn`](super::Knn)'s. Through a model the logits are the
/// model's; on precomputed features they are the head's, which
/// [`with_head`](Self::with_head) gives (fitting through a model keeps the
/// model's head when it has one, so the fitted state can also score
/// precomputed features). Labels are not used.
///
/// ```
/// use ndarray::{Array1, array};
/// use oodkit::detectors::{FeatureDetector, NnGuide, ScoreFeatures};
///
/// let head = (array![[1.0_f32, 0.0], [0.0, 1.0]], Array1::zeros(2));
/// let fit = array![[2.0_f32, 0.0], [0.0, 2.0]];
/// let guide = NnGuide::new(1, 1.0)?
///     .with_head(head.0, head.1)?
///     .fit_features(fit.view(), Array1::zeros(2).view())?;
/// // Bank: (1, 0)·E and (0, 1)·E, E = ln(e² + 1). The query (3, 0) is most
/// // like the first: guidance E, times its own energy ln(e³ + 1).
/// let s = guide.score_features(array![[3.0_f32, 0.0]].view())?;
/// let e = |x: f64| (x.exp() + 1.0).ln();
/// assert!((f64::from(s[0]) + e(2.0) * e(3.0)).abs() < 1e-4);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NnGuide {
    k: usize,
    fraction: f64,
    head: Option<Head>,
    approximate: Option<Hnsw>,
    options: FeatureOptions,
}

impl Default for NnGuide {
    /// k = 100, a bank of 1% of the fit data (OpenOOD's defaults).
    fn default() -> Self {
        NnGuide {
            k: 100,
            fraction: 0.01,
            head: None,
            approximate: None,
            options: FeatureOptions::default(),
        }
    }
}

impl NnGuide {
    /// NNGuide over the `k` most similar bank entries (k ≥ 1), the bank
    /// being this `fraction` of the fit data, in (0, 1].
    pub fn new(k: usize, fraction: f64) -> Result<Self> {
        if k == 0 {
            return Err(Error::invalid("k", k, "use at least one neighbour"));
        }
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::invalid(
                "bank_fraction",
                fraction,
                "the fraction of fit samples in the guide bank must be in (0, 1]",
            ));
        }
        Ok(NnGuide {
            k,
            fraction,
            ..NnGuide::default()
        })
    }

    /// The last layer's weights `(classes, D)` and bias `(classes,)`: the
    /// logits of precomputed features.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        self.head = Some(Head::new(weights, bias, "NNGuide")?);
        Ok(self)
    }

    /// The number of neighbours k.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The fraction of the fit data in the bank.
    pub fn bank_fraction(&self) -> f64 {
        self.fraction
    }

    /// Finds the most similar bank entries approximately, through an HNSW
    /// graph built at the end of the fit (the `ann` feature; see [`Hnsw`]
    /// and [`Knn::approximate`](super::Knn::approximate)), ranked by inner
    /// product: for banks of hundreds of thousands of entries. A query
    /// from which the graph reaches fewer than k entries is searched
    /// exactly.
    pub fn approximate(mut self, hnsw: Hnsw) -> Self {
        self.approximate = Some(hnsw);
        self
    }
}

impl FeatureDetector for NnGuide {
    type Fitter = NnGuideFitter;
    type Fitted = FittedNnGuide;

    fn name(&self) -> &'static str {
        "NNGuide"
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn fitter(&self, width: usize, model: Option<&dyn Model>) -> Result<NnGuideFitter> {
        let head = match (&self.head, model) {
            (Some(_), _) | (None, None) => Some(Head::resolve(
                self.head.as_ref(),
                None,
                width,
                "NNGuide",
                "NnGuide::new(..)?",
            )?),
            // The model's logits serve; its head only lets the state score
            // precomputed features later.
            (None, Some(model)) => last_layer_of(model, "NNGuide")
                .and_then(|(w, b)| Head::new(w, b, "NNGuide"))
                .ok()
                .filter(|h| h.width() == width),
        };
        Ok(NnGuideFitter {
            k: self.k,
            fraction: self.fraction,
            width,
            head,
            approximate: self.approximate,
            seen: 0,
            bank: Vec::new(),
        })
    }

    fn options(&self) -> &FeatureOptions {
        &self.options
    }

    fn options_mut(&mut self) -> &mut FeatureOptions {
        &mut self.options
    }

    /// The bank keeps ⌊n · fraction⌋ of n fit samples: fewer than k is an
    /// error before the fit data is read.
    fn check_fit_size(&self, fit_samples: usize) -> Result<()> {
        let bank = (fit_samples as f64 * self.fraction).floor() as usize;
        if bank < self.k {
            return Err(Error::invalid(
                "k",
                self.k,
                format!(
                    "exceeds the guide bank of {bank} samples ({} of {fit_samples} fit \
                     samples): raise bank_fraction to {:.4} or more, or lower k",
                    self.fraction,
                    (self.k as f64 / fit_samples.max(1) as f64).min(1.0)
                ),
            ));
        }
        Ok(())
    }
}

/// Keeps every (1/fraction)-th fit feature, normalised and scaled by its
/// energy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NnGuideFitter {
    k: usize,
    fraction: f64,
    width: usize,
    #[serde(flatten)]
    head: Option<Head>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approximate: Option<Hnsw>,
    seen: u64,
    #[serde(with = "array")]
    bank: Vec<f32>,
}

impl PartialState for NnGuideFitter {
    const DETECTORS: &'static [&'static str] = &["NNGuide"];

    fn detector(&self) -> &'static str {
        "NNGuide"
    }

    fn width(&self) -> usize {
        self.width
    }

    fn validate(&self) -> Result<()> {
        NnGuide::new(self.k, self.fraction)?;
        if let Some(hnsw) = &self.approximate {
            hnsw.validate()?;
        }
        if let Some(head) = &self.head {
            head.validate_with(self.width, "NNGuide's bank")?;
        }
        check_count(self.seen, "its bank")?;
        if self.width == 0
            || !self.bank.len().is_multiple_of(self.width)
            || (self.bank.len() / self.width) as u64 > self.seen
        {
            return Err(Error::custom(format!(
                "its bank of {} values is not rows of {} features from {} samples seen",
                self.bank.len(),
                self.width,
                self.seen
            )));
        }
        Ok(())
    }
}

impl LayerFitter for NnGuideFitter {
    type Fitted = FittedNnGuide;

    fn update(&mut self, batch: &LayerBatch) -> Result<()> {
        let logits = energies(self.head.as_ref(), batch)?;
        let unit = normalised(batch.features);
        for (row, energy) in unit.rows().into_iter().zip(logits) {
            // Sample i is kept when ⌊(i + 1)·fraction⌋ passes an integer.
            let i = self.seen as f64;
            self.seen += 1;
            if ((i + 1.0) * self.fraction).floor() > (i * self.fraction).floor() {
                self.bank.extend(row.iter().map(|&v| v * energy as f32));
            }
        }
        Ok(())
    }

    /// The banks concatenate. Each shard keeps its own every
    /// (1/fraction)-th sample, counted from its start: the bank is the one
    /// pass's when every shard but the last holds a multiple of 1/fraction
    /// samples, and a sample of the same rate otherwise.
    fn merge(&mut self, other: Self) -> Result<()> {
        merge_check("NNGuide", "k", &self.k, &other.k)?;
        merge_check("NNGuide", "bank fractions", &self.fraction, &other.fraction)?;
        merge_check("NNGuide", "feature widths", &self.width, &other.width)?;
        merge_check("NNGuide", "heads", &self.head, &other.head)?;
        merge_check(
            "NNGuide",
            "approximate indexes",
            &self.approximate,
            &other.approximate,
        )?;
        self.seen += other.seen;
        self.bank.extend(other.bank);
        Ok(())
    }

    fn finish(self) -> Result<FittedNnGuide> {
        let n = self.bank.len() / self.width.max(1);
        if n < self.k {
            return Err(Error::invalid(
                "k",
                self.k,
                format!(
                    "exceeds the guide bank of {n} samples ({} of {} fit samples): raise the \
                     bank fraction or lower k",
                    self.fraction, self.seen
                ),
            ));
        }
        let bank = Array2::from_shape_vec((n, self.width), self.bank)?;
        let graph = match &self.approximate {
            Some(hnsw) => Some(Graph::build(bank.view(), hnsw, Metric::NegativeDot)?),
            None => None,
        };
        Ok(FittedNnGuide {
            k: self.k,
            bank,
            head: self.head,
            approximate: self.approximate,
            graph,
        })
    }
}

/// Each row's energy, logsumexp of its logits: the model's, else the head's.
fn energies(head: Option<&Head>, batch: &LayerBatch) -> Result<Vec<f64>> {
    let logits = match (batch.logits, head) {
        (Some(logits), _) => logits.into(),
        (None, Some(head)) => head.logits_of(batch),
        (None, None) => {
            return Err(Error::Unsupported {
                what: "NNGuide on precomputed features without the last layer".into(),
                hint: "give it the head: NnGuide::new(..)?.with_head(weights, bias), or score \
                       through the model"
                    .into(),
            });
        }
    };
    Ok(logits.rows().into_iter().map(logsumexp).collect())
}

/// What NNGuide learns of a layer: the guide bank (normalised fit features
/// scaled by their energy), k, and the head when known.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "StoredNnGuide")]
pub struct FittedNnGuide {
    k: usize,
    bank: Array2<f32>,
    head: Option<Head>,
    approximate: Option<Hnsw>,
    graph: Option<Graph>,
}

/// In files: `k`, `has_head`, the bank and the head's arrays when there is
/// one (a guide fitted through a model scores its logits instead).
#[derive(Serialize)]
struct NnGuideFields<'a> {
    k: usize,
    #[serde(with = "array")]
    bank: &'a Array2<f32>,
    has_head: bool,
    #[serde(flatten)]
    head: Option<&'a Head>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approximate: Option<&'a Hnsw>,
    #[serde(flatten)]
    graph: Option<&'a Graph>,
}

impl Serialize for FittedNnGuide {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        NnGuideFields {
            k: self.k,
            bank: &self.bank,
            has_head: self.head.is_some(),
            head: self.head.as_ref(),
            approximate: self.approximate.as_ref(),
            graph: self.graph.as_ref(),
        }
        .serialize(serializer)
    }
}

#[derive(Deserialize)]
struct StoredNnGuide {
    k: usize,
    #[serde(with = "array")]
    bank: Array2<f32>,
    has_head: bool,
    #[serde(flatten)]
    head: Option<Head>,
    #[serde(default)]
    approximate: Option<Hnsw>,
    #[serde(flatten)]
    graph: Option<Graph>,
}

impl TryFrom<StoredNnGuide> for FittedNnGuide {
    type Error = Error;

    fn try_from(stored: StoredNnGuide) -> Result<Self> {
        // serde reads a flattened head that does not decode as none: the
        // flag says whether one was written.
        if stored.has_head != stored.head.is_some() {
            return Err(Error::custom(format!(
                "NNGuide's \"has_head\" is {} but the file {} a readable last layer",
                stored.has_head,
                if stored.head.is_some() {
                    "holds"
                } else {
                    "lacks"
                }
            )));
        }
        hnsw::check_stored(
            "NNGuide",
            stored.approximate.as_ref(),
            stored.graph.as_ref(),
        )?;
        Ok(FittedNnGuide {
            k: stored.k,
            bank: stored.bank,
            head: stored.head,
            approximate: stored.approximate,
            graph: stored.graph,
        })
    }
}

impl FittedNnGuide {
    /// The number of neighbours k.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The number of bank entries.
    pub fn len(&self) -> usize {
        self.bank.nrows()
    }

    /// Whether the bank is empty (never, once fitted).
    pub fn is_empty(&self) -> bool {
        self.bank.nrows() == 0
    }

    /// The approximate index's parameters, when it has one.
    pub fn approximate(&self) -> Option<&Hnsw> {
        self.approximate.as_ref()
    }

    /// The mean inner product of each of `queries` (normalised) with its k
    /// most similar bank entries as the graph finds them, in parallel.
    fn guidance_approximate(
        &self,
        graph: &Graph,
        hnsw: &Hnsw,
        queries: ArrayView2<f32>,
    ) -> Vec<f64> {
        let ef = hnsw.ef_search().max(self.k);
        (0..queries.nrows())
            .into_par_iter()
            .with_min_len(16)
            .map(|i| {
                let q = queries.row(i);
                let mut found = graph.search(self.bank.view(), q, ef, Metric::NegativeDot);
                if found.len() < self.k {
                    // The graph reaches fewer than k entries from this
                    // query (a graph cut apart): search it exactly.
                    found = self
                        .bank
                        .rows()
                        .into_iter()
                        .enumerate()
                        .map(|(j, row)| (-lanes_dot(q, row), j))
                        .collect();
                }
                let k = self.k.min(found.len()).max(1);
                if found.len() > k {
                    found.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
                }
                -found[..k.min(found.len())]
                    .iter()
                    .map(|&(v, _)| f64::from(v))
                    .sum::<f64>()
                    / k as f64
            })
            .collect()
    }
}

impl ScoreFeatures for FittedNnGuide {
    fn width(&self) -> usize {
        self.bank.ncols()
    }

    fn score_layer(&self, batch: &LayerBatch) -> Result<Array1<f32>> {
        let energy = energies(self.head.as_ref(), batch)?;
        let queries = normalised(batch.features);
        if let (Some(graph), Some(hnsw)) = (&self.graph, &self.approximate) {
            let guidance = self.guidance_approximate(graph, hnsw, queries.view());
            return Ok(guidance
                .into_iter()
                .zip(energy)
                .map(|(g, e)| (-g * e) as f32)
                .collect());
        }
        let mut scores = Array1::zeros(queries.nrows());
        let mut products = Array2::<f32>::zeros((
            queries.nrows().min(QUERY_BLOCK),
            self.bank.nrows().min(INDEX_BLOCK),
        ));
        for (b, (q_block, mut out)) in queries
            .axis_chunks_iter(Axis(0), QUERY_BLOCK)
            .zip(scores.axis_chunks_iter_mut(Axis(0), QUERY_BLOCK))
            .enumerate()
        {
            // The k largest products are the k smallest of their negations.
            let mut best: Vec<KBest> = (0..q_block.nrows()).map(|_| KBest::new(self.k)).collect();
            for (b, x_block) in self.bank.axis_chunks_iter(Axis(0), INDEX_BLOCK).enumerate() {
                let mut dots = products.slice_mut(s![..q_block.nrows(), ..x_block.nrows()]);
                gemm_into(dots.view_mut(), false, q_block, x_block, true);
                for (row, kbest) in dots.rows().into_iter().zip(&mut best) {
                    for (i, &dot) in row.iter().enumerate() {
                        kbest.offer(-dot, b * INDEX_BLOCK + i);
                    }
                }
            }
            let start = b * QUERY_BLOCK;
            for ((o, kbest), e) in out.iter_mut().zip(best).zip(&energy[start..]) {
                let guidance = -kbest.mean();
                *o = (-guidance * e) as f32;
            }
        }
        Ok(scores)
    }
}

impl StoredState for FittedNnGuide {
    const KINDS: &'static [&'static str] = &["NNGuide"];

    fn state_kind(&self) -> &'static str {
        "NNGuide"
    }

    fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > self.bank.nrows() {
            return Err(Error::custom(format!(
                "NNGuide's k = {} with {} bank entries",
                self.k,
                self.bank.nrows()
            )));
        }
        match &self.head {
            Some(head) if head.width() != self.bank.ncols() => Err(Error::custom(format!(
                "NNGuide's last layer takes {} features, its bank holds {}",
                head.width(),
                self.bank.ncols()
            ))),
            Some(head) => head.validate(),
            None => Ok(()),
        }?;
        match &self.graph {
            Some(graph) => graph.validate(self.bank.nrows()),
            None => Ok(()),
        }
    }
}

/// NNGuide in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "NNGuide",
    "nnguide",
    "NNGuide: energy guided by the k most similar of a bank of the fit features (features)",
    &[
        Param {
            name: "k",
            doc: "the neighbours averaged [default: 100]",
        },
        Param {
            name: "bank_fraction",
            doc: "the share of the fit features in the bank, in (0, 1] [default: 0.01]",
        },
        hnsw::PARAMS[0],
        hnsw::PARAMS[1],
        hnsw::PARAMS[2],
    ],
    Needs {
        fit_data: true,
        labels: false,
        capabilities: &[Capability::Features, Capability::LastLayer],
    },
    |p| {
        let default = NnGuide::default();
        let guide = NnGuide::new(
            p.count("k")?.unwrap_or(default.k()),
            p.number("bank_fraction")?
                .unwrap_or(default.bank_fraction()),
        )?;
        let guide = match hnsw::from_params(p)? {
            Some(hnsw) => guide.approximate(hnsw),
            None => guide,
        };
        built_features(on_layers(guide, p)?)
    },
    load_features::<FittedNnGuide>,
);
