//! [`BatchSource`]: anything a detector can fit on or score, batch by batch.

use super::{OodDataset, PrepareConfig, Prepared};
use crate::batch::Batch;
use crate::error::{Error, Result};

/// A boxed stream of batches, as [`BatchSource::batches`] returns it.
pub type BatchIter<'a> = Box<dyn Iterator<Item = Result<Batch>> + 'a>;

/// Anything that yields batches: a [`Prepared`] dataset (the usual case), an
/// [`OodDataset`] as it is, or a single [`Batch`].
///
/// Detectors take `&dyn BatchSource`, so all three can be passed as they
/// are: `detector.score(&prepared)`, `detector.score(&dataset)`,
/// `detector.score(&batch)`.
pub trait BatchSource {
    /// A fresh pass over the batches, in order.
    fn batches(&self) -> Result<BatchIter<'_>>;

    /// Pass number `pass` over the batches. A shuffled [`Prepared`] stream
    /// gives each pass its own permutation, the same for the same `pass`
    /// however often the stream was iterated before, which is what makes a
    /// training run repeatable; other sources ignore `pass`.
    fn batches_for_pass(&self, pass: u64) -> Result<BatchIter<'_>> {
        let _ = pass;
        self.batches()
    }

    /// The number of batches in one pass, when known without iterating.
    fn num_batches(&self) -> Option<usize> {
        None
    }
}

impl BatchSource for Prepared<'_> {
    fn batches(&self) -> Result<BatchIter<'_>> {
        Ok(Box::new(self.iter()))
    }

    fn batches_for_pass(&self, pass: u64) -> Result<BatchIter<'_>> {
        Ok(Box::new(self.pass(pass)))
    }

    fn num_batches(&self) -> Option<usize> {
        Some(Prepared::num_batches(self))
    }
}

/// Batches of [`OodDataset::DEFAULT_BATCH_SIZE`] samples in dataset order,
/// with class labels and without any preprocessing: the inputs reach the
/// model exactly as they are stored. Use [`OodDataset::prepare`] to scale or
/// normalise them first.
impl BatchSource for OodDataset {
    fn batches(&self) -> Result<BatchIter<'_>> {
        let prepared = self.prepare(&PrepareConfig::new(Self::DEFAULT_BATCH_SIZE))?;
        Ok(Box::new(prepared.iter()))
    }

    fn num_batches(&self) -> Option<usize> {
        Some(self.len().div_ceil(Self::DEFAULT_BATCH_SIZE))
    }
}

/// The batch itself, once.
impl BatchSource for Batch {
    fn batches(&self) -> Result<BatchIter<'_>> {
        Ok(Box::new(std::iter::once(Ok(self.clone()))))
    }

    fn num_batches(&self) -> Option<usize> {
        Some(1)
    }
}

impl OodDataset {
    /// The batch size used when a dataset is scored as it is (as a
    /// [`BatchSource`]) rather than through [`prepare`](OodDataset::prepare).
    pub const DEFAULT_BATCH_SIZE: usize = 128;
}

/// The fit data, or an [`Error::InvalidParameter`] on `fit_data` saying
/// why it is needed (`why`, e.g. "Mahalanobis fits statistics of
/// in-distribution features").
pub(crate) fn require_fit_data<'a>(
    fit_data: Option<&'a dyn BatchSource>,
    why: &str,
) -> Result<&'a dyn BatchSource> {
    fit_data.ok_or_else(|| {
        Error::missing(
            format!("fit data ({why})"),
            "pass fit data, e.g. (part of) the training set",
        )
    })
}
