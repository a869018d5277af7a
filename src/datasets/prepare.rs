//! [`OodDataset::prepare`]: a lazy, re-iterable stream of batches.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::Axis;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::OodDataset;
use crate::batch::Batch;
use crate::error::{Error, Result};

/// A per-batch preprocessing function, e.g. scaling pixels to `[0, 1]`.
pub type PreprocessFn = Arc<dyn Fn(Batch) -> Result<Batch> + Send + Sync>;

/// How to turn a dataset into batches: batch size, preprocessing, shuffling
/// and which labels to carry.
///
/// ```
/// use oodkit::datasets::PrepareConfig;
///
/// let config = PrepareConfig::new(128)
///     .shuffle(42)
///     .preprocess(|mut batch| {
///         batch.inputs /= 255.0;
///         Ok(batch)
///     })
///     .with_ood_labels(false);
/// assert_eq!(config.batch_size(), 128);
/// ```
#[derive(Clone)]
pub struct PrepareConfig {
    batch_size: usize,
    preprocess: Option<PreprocessFn>,
    shuffle: Option<u64>,
    with_labels: bool,
    with_ood_labels: bool,
}

impl fmt::Debug for PrepareConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrepareConfig")
            .field("batch_size", &self.batch_size)
            .field("preprocess", &self.preprocess.as_ref().map(|_| "Fn(Batch)"))
            .field("shuffle", &self.shuffle)
            .field("with_labels", &self.with_labels)
            .field("with_ood_labels", &self.with_ood_labels)
            .finish()
    }
}

impl PrepareConfig {
    /// Batches of `batch_size` samples (the last one may be smaller), in
    /// dataset order, with class labels and without OOD labels.
    pub fn new(batch_size: usize) -> Self {
        PrepareConfig {
            batch_size,
            preprocess: None,
            shuffle: None,
            with_labels: true,
            with_ood_labels: false,
        }
    }

    /// Shuffle with this seed: each pass over the batches draws a new
    /// permutation, and the same seed gives the same sequence of permutations.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// Apply `f` to every batch as it is built.
    pub fn preprocess<F>(mut self, f: F) -> Self
    where
        F: Fn(Batch) -> Result<Batch> + Send + Sync + 'static,
    {
        self.preprocess = Some(Arc::new(f));
        self
    }

    /// Whether batches carry class labels (default `true`).
    pub fn with_labels(mut self, yes: bool) -> Self {
        self.with_labels = yes;
        self
    }

    /// Whether batches carry OOD labels (default `false`); the dataset must
    /// have them.
    pub fn with_ood_labels(mut self, yes: bool) -> Self {
        self.with_ood_labels = yes;
        self
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The shuffle seed, if shuffling.
    pub fn shuffle_seed(&self) -> Option<u64> {
        self.shuffle
    }

    /// Whether batches carry class labels.
    #[cfg_attr(not(feature = "images"), allow(dead_code))]
    pub(crate) fn labels_wanted(&self) -> bool {
        self.with_labels
    }

    /// Whether batches carry OOD labels.
    #[cfg_attr(not(feature = "images"), allow(dead_code))]
    pub(crate) fn ood_labels_wanted(&self) -> bool {
        self.with_ood_labels
    }

    /// The order of `n` samples in pass `pass`: a permutation when
    /// shuffling (the same for the same seed and pass), else `None`
    /// (dataset order).
    pub(crate) fn order(&self, n: usize, pass: u64) -> Option<Vec<usize>> {
        self.shuffle.map(|seed| {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut StdRng::seed_from_u64(pass_seed(seed, pass)));
            order
        })
    }

    /// The preprocess function applied to `batch`, and the check that it
    /// kept one output per input, the labels aligned with them.
    pub(crate) fn apply(&self, batch: Batch) -> Result<Batch> {
        match &self.preprocess {
            Some(f) => {
                let before = batch.len();
                let batch = f(batch)?;
                if batch.len() != before {
                    return Err(Error::LengthMismatch {
                        what: "inputs of a batch before vs after the preprocess function (it \
                               must transform each input, not drop or add any)"
                            .into(),
                        left: before,
                        right: batch.len(),
                    });
                }
                check_aligned(&batch)?;
                Ok(batch)
            }
            None => Ok(batch),
        }
    }
}

impl OodDataset {
    /// A re-iterable stream of batches over this dataset.
    ///
    /// Batches are built lazily as they are iterated: memory beyond the
    /// dataset stays O(batch size). Errors when the batch size is zero, the
    /// dataset is empty, or OOD labels are asked for and the dataset has none.
    ///
    /// ```
    /// use ndarray::{Array1, Array4};
    /// use oodkit::datasets::{OodDataset, PrepareConfig};
    ///
    /// let inputs = Array4::from_elem((10, 1, 2, 2), 255.0_f32);
    /// let ds = OodDataset::from_arrays(inputs, Array1::zeros(10))?;
    /// let batches = ds.prepare(&PrepareConfig::new(4).preprocess(|mut b| {
    ///     b.inputs /= 255.0;
    ///     Ok(b)
    /// }))?;
    /// let sizes: Vec<usize> = batches.iter().map(|b| b.map(|b| b.len())).collect::<Result<_, _>>()?;
    /// assert_eq!(sizes, vec![4, 4, 2]);
    /// for batch in &batches {
    ///     assert!(batch?.inputs.iter().all(|&x| x == 1.0));
    /// }
    /// # Ok::<(), oodkit::Error>(())
    /// ```
    pub fn prepare(&self, config: &PrepareConfig) -> Result<Prepared<'_>> {
        if config.batch_size == 0 {
            return Err(Error::InvalidParameter {
                name: "batch_size",
                value: "0".into(),
                reason: "a batch holds at least one sample".into(),
            });
        }
        if self.is_empty() {
            return Err(Error::Empty {
                what: "dataset".into(),
                hint: "there is nothing to prepare (did a split leave this side empty?)".into(),
            });
        }
        if config.with_ood_labels && self.ood_labels().is_none() {
            return Err(Error::missing(
                "OOD labels (asked for by with_ood_labels)",
                "the dataset has no OOD labels: build it with add_out_data or with_ood_labels",
            ));
        }
        Ok(Prepared {
            dataset: self,
            config: config.clone(),
            passes: AtomicU64::new(0),
        })
    }
}

/// A dataset prepared into batches. Iterate it (`for batch in &prepared`, or
/// [`iter`](Prepared::iter)) as many times as needed: each pass yields every
/// sample once; with shuffling each pass has its own permutation.
pub struct Prepared<'a> {
    dataset: &'a OodDataset,
    config: PrepareConfig,
    passes: AtomicU64,
}

impl fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("samples", &self.dataset.len())
            .field("config", &self.config)
            .finish()
    }
}

impl<'a> Prepared<'a> {
    /// The next pass over the batches. With shuffling, pass `k` (counting
    /// from 0 over this `Prepared`'s life) uses the `k`-th permutation of the
    /// seed's sequence.
    pub fn iter(&self) -> Batches<'a> {
        let pass = self.passes.fetch_add(1, Ordering::Relaxed);
        self.pass(pass)
    }

    /// Pass number `pass` of the stream, independent of how many passes were
    /// taken before: useful to resume training at a given epoch.
    pub fn pass(&self, pass: u64) -> Batches<'a> {
        let order = self.config.order(self.dataset.len(), pass);
        Batches {
            dataset: self.dataset,
            config: self.config.clone(),
            order,
            next: 0,
        }
    }

    /// Number of batches in one pass.
    pub fn num_batches(&self) -> usize {
        self.dataset.len().div_ceil(self.config.batch_size)
    }

    /// Number of samples in one pass.
    pub fn num_samples(&self) -> usize {
        self.dataset.len()
    }

    /// The dataset behind the stream.
    pub fn dataset(&self) -> &'a OodDataset {
        self.dataset
    }

    /// The configuration the stream was prepared with.
    pub fn config(&self) -> &PrepareConfig {
        &self.config
    }
}

impl<'a> IntoIterator for &Prepared<'a> {
    type Item = Result<Batch>;
    type IntoIter = Batches<'a>;
    fn into_iter(self) -> Batches<'a> {
        self.iter()
    }
}

/// Mixes the seed and the pass number (SplitMix64 finaliser) so that the
/// passes of one seed, and the seeds themselves, give unrelated permutations.
fn pass_seed(seed: u64, pass: u64) -> u64 {
    let mut z = seed ^ pass.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One pass over a [`Prepared`] stream; yields `Result<Batch>` (an error
/// comes only from the preprocess function).
pub struct Batches<'a> {
    dataset: &'a OodDataset,
    config: PrepareConfig,
    order: Option<Vec<usize>>,
    next: usize,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let n = self.dataset.len();
        if self.next >= n {
            return None;
        }
        let end = (self.next + self.config.batch_size).min(n);
        let (start, ds) = (self.next, self.dataset);
        self.next = end;
        let range: Vec<usize>;
        let idx = match &self.order {
            Some(order) => &order[start..end],
            None => {
                range = (start..end).collect();
                &range
            }
        };
        let batch = Batch {
            inputs: ds.inputs().select(Axis(0), idx),
            labels: self
                .config
                .with_labels
                .then(|| ds.labels().select(Axis(0), idx)),
            ood_labels: ds
                .ood_labels()
                .filter(|_| self.config.with_ood_labels)
                .map(|o| o.select(Axis(0), idx)),
        };
        Some(self.config.apply(batch))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.dataset.len() - self.next).div_ceil(self.config.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}

/// A preprocess function may transform inputs, but labels must stay row-aligned.
fn check_aligned(batch: &Batch) -> Result<()> {
    let n = batch.len();
    let lens = [
        batch.labels.as_ref().map(|l| ("labels", l.len())),
        batch.ood_labels.as_ref().map(|o| ("OOD labels", o.len())),
    ];
    match lens.into_iter().flatten().find(|&(_, len)| len != n) {
        Some((what, len)) => Err(Error::LengthMismatch {
            what: format!("preprocessed batch: inputs and {what}"),
            left: n,
            right: len,
        }),
        None => Ok(()),
    }
}
