//! [`BatchSource`]: anything a detector can fit on or score, batch by batch.

use super::{OodDataset, PrepareConfig, Prepared};
use crate::batch::Batch;
use crate::error::Result;

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
}

impl BatchSource for Prepared<'_> {
    fn batches(&self) -> Result<BatchIter<'_>> {
        Ok(Box::new(self.iter()))
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
}

/// The batch itself, once.
impl BatchSource for Batch {
    fn batches(&self) -> Result<BatchIter<'_>> {
        Ok(Box::new(std::iter::once(Ok(self.clone()))))
    }
}

impl OodDataset {
    /// The batch size used when a dataset is scored as it is (as a
    /// [`BatchSource`]) rather than through [`prepare`](OodDataset::prepare).
    pub const DEFAULT_BATCH_SIZE: usize = 128;
}
