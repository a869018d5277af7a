//! What a fitted state derives once from its stored statistics for
//! scoring (e.g. an `f32` copy of a projection): made at the first score,
//! shared by clones, and not part of the state's value (equality, files),
//! since it follows from the statistics.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::error::Result;

/// A value derived on first use; compares equal to any other.
pub(crate) struct Derived<T>(OnceLock<Arc<T>>);

impl<T> Clone for Derived<T> {
    /// Shares what was made (an `Arc`), if anything.
    fn clone(&self) -> Self {
        Derived(self.0.clone())
    }
}

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Derived(OnceLock::new())
    }
}

impl<T> Derived<T> {
    /// A value made already (e.g. by the fit, from what it computed anyway).
    pub(crate) fn made(value: T) -> Self {
        Derived(OnceLock::from(Arc::new(value)))
    }

    /// The value, made by `make` the first time (a failed `make` is tried
    /// again at the next call).
    pub(crate) fn get_or_try(&self, make: impl FnOnce() -> Result<T>) -> Result<&T> {
        if let Some(value) = self.0.get() {
            return Ok(value);
        }
        let value = Arc::new(make()?);
        Ok(self.0.get_or_init(|| value))
    }
}

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> fmt::Debug for Derived<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Derived(made)"
        } else {
            "Derived(not yet)"
        })
    }
}
