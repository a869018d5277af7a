//! Approximate nearest neighbours for KNN's index and NNGuide's bank: an
//! HNSW graph (Malkov & Yashunin, 2018) over the stored features.
//!
//! The graph is built by [USearch](https://github.com/unum-cloud/USearch)
//! (the `ann` feature): its construction is the hard part (concurrent
//! inserts, the neighbour-selection heuristic, SIMD distances) and it is
//! one of the fastest, most used HNSW builders, kept by its authors with
//! frequent releases. Its adjacency lists are then copied out into four
//! `u32` arrays saved beside the features the detector already stores, and
//! the search runs over those arrays here: a saved graph is checked id by
//! id when it loads (a file never reaches C++ code), it needs no second
//! copy of the vectors (USearch keeps its own while it builds, dropped
//! after), and a file scores the same in a build without the `ann` feature.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::detectors::file::array;
use crate::detectors::registry::{Param, Params};
use crate::error::{Error, Result};

/// Parameters of an approximate (HNSW) index, for [`Knn::approximate`](super::Knn::approximate)
/// and [`NnGuide::approximate`](super::NnGuide::approximate).
///
/// - `connectivity` (M): links per node on the upper levels, twice that on
///   the base level; more links, better recall, a larger graph and a
///   slower build. 16 by default (4 to 64).
/// - `ef_construction`: the candidates each insertion weighs; 128 by
///   default (at least `connectivity`, at most 4 096).
/// - `ef_search`: the candidates each query keeps (at least k plus a few
///   are always kept); the recall / speed trade-off of scoring, changeable
///   on a fitted detector. 256 by default (1 to 65 536): on 1 000 000
///   hard 512-dimensional rows it finds 95% of the 50 nearest, 23 times
///   faster than the exact search (BENCHMARKS.md).
///
/// ```
/// use oodkit::detectors::Hnsw;
///
/// let hnsw = Hnsw::new(16, 128, 200)?;
/// assert_eq!(hnsw.ef_search(), 200);
/// assert!(Hnsw::new(1, 128, 64).is_err()); // too few links
/// assert!(Hnsw::new(16, 8, 64).is_err());  // ef_construction below M
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hnsw {
    connectivity: usize,
    ef_construction: usize,
    ef_search: usize,
}

impl Default for Hnsw {
    fn default() -> Self {
        Hnsw {
            connectivity: 16,
            ef_construction: 128,
            ef_search: 256,
        }
    }
}

impl Hnsw {
    /// An index with `connectivity` links per node, `ef_construction`
    /// candidates per insertion and `ef_search` per query.
    pub fn new(connectivity: usize, ef_construction: usize, ef_search: usize) -> Result<Self> {
        let hnsw = Hnsw {
            connectivity,
            ef_construction,
            ef_search,
        };
        hnsw.validate()?;
        Ok(hnsw)
    }

    /// The same index searched with `ef_search` candidates per query.
    pub fn with_ef_search(self, ef_search: usize) -> Result<Self> {
        Hnsw::new(self.connectivity, self.ef_construction, ef_search)
    }

    /// Links per node (M).
    pub fn connectivity(&self) -> usize {
        self.connectivity
    }

    /// Candidates weighed per insertion.
    pub fn ef_construction(&self) -> usize {
        self.ef_construction
    }

    /// Candidates kept per query.
    pub fn ef_search(&self) -> usize {
        self.ef_search
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(4..=64).contains(&self.connectivity) {
            return Err(Error::invalid(
                "connectivity",
                self.connectivity,
                "must be 4 to 64 links per node (16 is usual)",
            ));
        }
        if !(self.connectivity..=4096).contains(&self.ef_construction) {
            return Err(Error::invalid(
                "ef_construction",
                self.ef_construction,
                format!(
                    "must be {} (the connectivity) to 4096 (128 is usual)",
                    self.connectivity
                ),
            ));
        }
        if !(1..=65_536).contains(&self.ef_search) {
            return Err(Error::invalid(
                "ef_search",
                self.ef_search,
                "must be 1 to 65536 (256 is usual; more finds more of the true neighbours, \
                 slower)",
            ));
        }
        Ok(())
    }
}

/// The registry's parameters of an approximate index (KNN, NNGuide).
pub(crate) const PARAMS: [Param; 3] = [
    Param {
        name: "hnsw",
        doc: "search an approximate HNSW graph with this many links per node (4 to 64; 16 is \
              usual) instead of every stored feature [default: exact search]",
    },
    Param {
        name: "ef_construction",
        doc: "with hnsw: the candidates each insertion weighs [default: 128]",
    },
    Param {
        name: "ef_search",
        doc: "with hnsw: the candidates each query keeps, more finding more of the true \
              neighbours [default: 256]",
    },
];

/// The approximate index `params` ask for, if any.
pub(crate) fn from_params(params: &Params) -> Result<Option<Hnsw>> {
    let default = Hnsw::default();
    let ef_construction = params.count("ef_construction")?;
    let ef_search = params.count("ef_search")?;
    match params.count("hnsw")? {
        Some(connectivity) if !(4..=64).contains(&connectivity) => Err(Error::invalid(
            "hnsw",
            connectivity,
            "the links per node of the approximate index must be 4 to 64 (16 is usual)",
        )),
        Some(connectivity) => Hnsw::new(
            connectivity,
            ef_construction.unwrap_or(default.ef_construction),
            ef_search.unwrap_or(default.ef_search),
        )
        .map(Some),
        None if ef_construction.is_some() || ef_search.is_some() => Err(Error::invalid(
            "ef_search",
            format!("{ef_construction:?} / {ef_search:?} (ef_construction / ef_search)"),
            "tunes an approximate index: give hnsw (the links per node, e.g. 16) too",
        )),
        None => Ok(None),
    }
}

/// Checks what a file holds of an approximate index for `kind`: its
/// parameters and its graph both or neither (serde reads a flattened graph
/// that does not decode as none, so the parameters say whether one was
/// written), the parameters in range.
pub(crate) fn check_stored(kind: &str, hnsw: Option<&Hnsw>, graph: Option<&Graph>) -> Result<()> {
    match (hnsw, graph) {
        (Some(hnsw), Some(_)) => hnsw.validate(),
        (None, None) => Ok(()),
        (Some(_), None) => Err(Error::custom(format!(
            "{kind}'s approximate index has parameters but no readable graph (the arrays \
             hnsw_*)"
        ))),
        (None, Some(_)) => Err(Error::custom(format!(
            "{kind}'s file holds an HNSW graph but no parameters of an approximate index"
        ))),
    }
}

/// What the graph's search ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// Squared Euclidean distance (KNN).
    SquaredL2,
    /// The negated inner product (NNGuide's most similar bank entries).
    NegativeDot,
}

impl Metric {
    fn of(self, a: ArrayView1<f32>, b: ArrayView1<f32>) -> f32 {
        match self {
            Metric::SquaredL2 => crate::linalg::lanes_squared_distance(a, b),
            Metric::NegativeDot => -crate::linalg::lanes_dot(a, b),
        }
    }
}

/// An empty slot of a node's links.
const NONE: u32 = u32::MAX;

/// An HNSW graph over `N` stored rows, as saved: the base level's links,
/// one row per node padded with `u32::MAX`; the nodes on the upper levels
/// (ascending) with, for each, its rows of links, one per level above the
/// base (`hnsw_upper_start` says where each node's begin); and the entry
/// node, one of the highest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Graph {
    hnsw_entry: u32,
    #[serde(with = "array")]
    hnsw_base: Array2<u32>,
    #[serde(with = "array")]
    hnsw_upper_nodes: Array1<u32>,
    #[serde(with = "array")]
    hnsw_upper_start: Array1<u32>,
    #[serde(with = "array")]
    hnsw_upper: Array2<u32>,
}

impl Graph {
    /// The level of `node` (0: the base level only).
    fn level(&self, node: u32) -> usize {
        match self
            .hnsw_upper_nodes
            .as_slice()
            .map(|n| n.binary_search(&node))
        {
            Some(Ok(p)) => (self.hnsw_upper_start[p + 1] - self.hnsw_upper_start[p]) as usize,
            _ => 0,
        }
    }

    /// The links of `node` on `level` (the node is on it).
    fn links(&self, node: u32, level: usize) -> ArrayView1<'_, u32> {
        if level == 0 {
            return self.hnsw_base.row(node as usize);
        }
        let p = self
            .hnsw_upper_nodes
            .as_slice()
            .and_then(|n| n.binary_search(&node).ok())
            .unwrap_or_default();
        self.hnsw_upper
            .row(self.hnsw_upper_start[p] as usize + level - 1)
    }

    /// Errors unless the graph is one over `n` rows whose every link names
    /// a node on the level it links on: what a file may hold and a build
    /// never makes.
    pub(crate) fn validate(&self, n: usize) -> Result<()> {
        let bad = |what: String| Err(Error::custom(format!("the HNSW graph {what}")));
        if self.hnsw_base.nrows() != n || self.hnsw_base.ncols() == 0 {
            return bad(format!(
                "has base links of shape {:?} for {n} stored features",
                self.hnsw_base.shape()
            ));
        }
        let Some(nodes) = self.hnsw_upper_nodes.as_slice() else {
            return bad("has upper nodes that are not contiguous".into());
        };
        if nodes.windows(2).any(|w| w[0] >= w[1]) || nodes.last().is_some_and(|&v| v as usize >= n)
        {
            return bad("lists its upper nodes out of order or beyond the stored features".into());
        }
        let start = &self.hnsw_upper_start;
        if start.len() != nodes.len() + 1
            || start[0] != 0
            || start.iter().zip(start.iter().skip(1)).any(|(a, b)| a >= b)
            || start[nodes.len()] as usize != self.hnsw_upper.nrows()
        {
            return bad(format!(
                "has upper level offsets ({} of them) that do not match its {} upper nodes and \
                 {} rows of upper links",
                start.len(),
                nodes.len(),
                self.hnsw_upper.nrows()
            ));
        }
        if self.hnsw_base.iter().any(|&v| v != NONE && v as usize >= n) {
            return bad("links a node beyond the stored features".into());
        }
        for (p, &node) in nodes.iter().enumerate() {
            for level in 1..=(start[p + 1] - start[p]) as usize {
                let links = self.links(node, level);
                if links
                    .iter()
                    .any(|&v| v != NONE && (v as usize >= n || self.level(v) < level))
                {
                    return bad(format!(
                        "links node {node} on level {level} to a node not on that level"
                    ));
                }
            }
        }
        let top = nodes
            .iter()
            .map(|&v| self.level(v))
            .max()
            .unwrap_or_default();
        if self.hnsw_entry as usize >= n || self.level(self.hnsw_entry) != top {
            return bad(format!(
                "enters at node {}, not one of its highest ({top} levels)",
                self.hnsw_entry
            ));
        }
        Ok(())
    }

    /// The `ef` best of `rows` for `query` by `metric` as the graph finds
    /// them, each with its row: (value, row), unordered.
    pub(crate) fn search(
        &self,
        rows: ArrayView2<f32>,
        query: ArrayView1<f32>,
        ef: usize,
        metric: Metric,
    ) -> Vec<(f32, usize)> {
        let value = |node: u32| metric.of(query, rows.row(node as usize));
        let mut node = self.hnsw_entry;
        let mut best = value(node);
        // Greedy descent through the upper levels.
        for level in (1..=self.level(node)).rev() {
            loop {
                let mut moved = false;
                for &v in self.links(node, level).iter().filter(|&&v| v != NONE) {
                    let d = value(v);
                    if d < best {
                        best = d;
                        node = v;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch {
                visited,
                candidates,
                found,
            } = &mut *scratch;
            visited.start(rows.nrows());
            candidates.clear();
            found.clear();
            visited.insert(node);
            candidates.push(Reverse(Entry(best, node)));
            found.push(Entry(best, node));
            while let Some(Reverse(Entry(d, v))) = candidates.pop() {
                if found.len() >= ef && found.peek().is_some_and(|w| d > w.0) {
                    break;
                }
                for &u in self.hnsw_base.row(v as usize).iter() {
                    if u == NONE || !visited.insert(u) {
                        continue;
                    }
                    let du = value(u);
                    if found.len() < ef || found.peek().is_some_and(|w| du < w.0) {
                        candidates.push(Reverse(Entry(du, u)));
                        found.push(Entry(du, u));
                        if found.len() > ef {
                            found.pop();
                        }
                    }
                }
            }
            found.drain().map(|e| (e.0, e.1 as usize)).collect()
        })
    }

    /// Builds the graph of `rows` (`ann` feature), by USearch.
    #[cfg(feature = "ann")]
    pub(crate) fn build(rows: ArrayView2<f32>, hnsw: &Hnsw, metric: Metric) -> Result<Self> {
        use ndarray::CowArray;
        use rayon::prelude::*;
        use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

        let (n, width) = rows.dim();
        if n == 0 || width == 0 || n >= NONE as usize {
            return Err(Error::invalid(
                "stored features",
                format!("{n} x {width}"),
                "an approximate index needs 1 to 4 294 967 294 rows of at least one feature",
            ));
        }
        let failed =
            |what: &str, e: String| Error::backend(format!("building the HNSW index: {what}: {e}"));
        // The inner product is not a distance, and an HNSW graph built on
        // it finds the largest products poorly when norms differ (as
        // NNGuide's energy-scaled rows do). One more coordinate,
        // √(R² − ‖x‖²) with R the largest norm, makes every row's norm R,
        // so that ‖q − x‖² = ‖q‖² + R² − 2 q·x ranks as −q·x: the graph is
        // built for the Euclidean distance on those rows and searched by
        // −q·x on the rows themselves (Bachrach et al., RecSys 2014).
        let (rows, dimensions) = match metric {
            Metric::SquaredL2 => (rows.as_standard_layout(), width),
            Metric::NegativeDot => {
                let norms: Vec<f32> = rows.rows().into_iter().map(|r| r.dot(&r)).collect();
                let top = norms.iter().copied().fold(0.0, f32::max);
                let mut lifted = Array2::zeros((n, width + 1));
                lifted.slice_mut(ndarray::s![.., ..width]).assign(&rows);
                for (i, norm) in norms.into_iter().enumerate() {
                    lifted[[i, width]] = (top - norm).max(0.0).sqrt();
                }
                (CowArray::from(lifted), width + 1)
            }
        };
        let options = IndexOptions {
            dimensions,
            metric: MetricKind::L2sq,
            quantization: ScalarKind::F32,
            connectivity: hnsw.connectivity,
            expansion_add: hnsw.ef_construction,
            expansion_search: hnsw.ef_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(|e| failed("creating it", e.to_string()))?;
        index
            .reserve_capacity_and_threads(n, rayon::current_num_threads())
            .map_err(|e| failed("reserving its memory", e.to_string()))?;
        let flat = rows.as_slice().unwrap_or_default();
        flat.par_chunks(dimensions)
            .enumerate()
            .try_for_each(|(i, row)| index.add(i as u64, row))
            .map_err(|e| failed("adding a feature", e.to_string()))?;
        drop(rows);
        let levels: Vec<usize> = (0..n as u64).map(|i| index.level_of_key(i)).collect();
        let links = |node: usize, level: usize| -> Vec<u32> {
            index
                .neighbors(node as u64, level)
                .map(|v| v as u32)
                .collect()
        };
        let base: Vec<Vec<u32>> = (0..n).into_par_iter().map(|i| links(i, 0)).collect();
        let hnsw_base = padded(&base);
        drop(base);
        let nodes: Vec<u32> = (0..n)
            .filter(|&i| levels[i] > 0)
            .map(|i| i as u32)
            .collect();
        let mut start = vec![0_u32];
        let mut upper: Vec<Vec<u32>> = Vec::new();
        for &node in &nodes {
            for level in 1..=levels[node as usize] {
                upper.push(links(node as usize, level));
            }
            start.push(upper.len() as u32);
        }
        let hnsw_upper = padded(&upper);
        let top = levels.iter().copied().max().unwrap_or(0);
        let entry = levels.iter().position(|&l| l == top).unwrap_or(0) as u32;
        let graph = Graph {
            hnsw_entry: entry,
            hnsw_base,
            hnsw_upper_nodes: Array1::from(nodes),
            hnsw_upper_start: Array1::from(start),
            hnsw_upper,
        };
        graph.validate(n)?;
        Ok(graph)
    }

    /// Without the `ann` feature: an error saying how to get it.
    #[cfg(not(feature = "ann"))]
    pub(crate) fn build(_rows: ArrayView2<f32>, _hnsw: &Hnsw, _metric: Metric) -> Result<Self> {
        Err(Error::invalid(
            "approximate index",
            "HNSW",
            "this oodkit was built without its \"ann\" feature (the graph builder): enable it \
             (cargo feature \"ann\", part of \"cli\"), or fit the exact index",
        ))
    }
}

/// `lists` as the rows of an array as wide as the longest (at least one),
/// the rest of each row `u32::MAX`.
#[cfg(feature = "ann")]
fn padded(lists: &[Vec<u32>]) -> Array2<u32> {
    let width = lists.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut out = Array2::from_elem((lists.len(), width), NONE);
    for (mut row, links) in out.rows_mut().into_iter().zip(lists) {
        for (slot, &v) in row.iter_mut().zip(links) {
            *slot = v;
        }
    }
    out
}

/// A search's reusable memory, one per thread: no allocation per query
/// once warm.
struct Scratch {
    visited: Visited,
    candidates: BinaryHeap<Reverse<Entry>>,
    found: BinaryHeap<Entry>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        visited: Visited::default(),
        candidates: BinaryHeap::new(),
        found: BinaryHeap::new(),
    });
}

/// The nodes a search has reached: a stamp per node, so that starting a
/// search is one increment, not a clear of `N` flags.
#[derive(Default)]
struct Visited {
    stamps: Vec<u32>,
    now: u32,
}

impl Visited {
    fn start(&mut self, n: usize) {
        if self.stamps.len() != n {
            self.stamps = vec![0; n];
            self.now = 0;
        }
        self.now = self.now.wrapping_add(1);
        if self.now == 0 {
            self.stamps.fill(0);
            self.now = 1;
        }
    }

    /// Marks `node`; false when it was already marked.
    fn insert(&mut self, node: u32) -> bool {
        let stamp = &mut self.stamps[node as usize];
        let new = *stamp != self.now;
        *stamp = self.now;
        new
    }
}

/// A node and its value, ordered by value (then node, for ties).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry(f32, u32);

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}
