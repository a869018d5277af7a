//! Datasets: [`OodDataset`], the loaders for the files users download
//! ([`mnist`], [`cifar10`], [`svhn`]), batching with
//! [`prepare`](OodDataset::prepare), [`transforms`] for pretrained
//! networks' normalisation, `image_folder` for folders of PNG / JPEG images
//! (feature `images`), `npy` for NumPy files (feature `npy`), and fetching
//! with `download`.
//!
//! Loaders take the dataset's own folder. Examples take a *data root* holding
//! one folder per dataset (`mnist/`, `cifar10/`, `svhn/`), found by
//! [`data_root`].

use std::path::PathBuf;

pub mod cifar10;
mod dataset;
#[cfg(feature = "download")]
pub mod download;
pub(crate) mod files;
pub use files::{read_regular_file, write_atomically};
#[cfg(feature = "images")]
pub mod image_folder;
pub mod mnist;
#[cfg(feature = "npy")]
pub mod npy;
mod prepare;
mod source;
pub mod svhn;
pub mod transforms;

pub use dataset::OodDataset;
pub use prepare::{Batches, PrepareConfig, Prepared, PreprocessFn};
pub(crate) use source::require_fit_data;
pub use source::{BatchIter, BatchSource};

use crate::error::{Error, Result};

/// Which part of a dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set.
    Train,
    /// The test set.
    Test,
}

/// The environment variable naming the data root.
pub const DATA_DIR_ENV: &str = "OODKIT_DATA_DIR";

/// The data root: `explicit` (e.g. a `--data-dir` argument) when given, else
/// the `OODKIT_DATA_DIR` environment variable, else `~/.oodkit/datasets`.
///
/// ```
/// use std::path::PathBuf;
/// let root = oodkit::datasets::data_root(Some(PathBuf::from("/data")))?;
/// assert_eq!(root, PathBuf::from("/data"));
/// # Ok::<(), oodkit::Error>(())
/// ```
pub fn data_root(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    std::env::home_dir()
        .map(|home| home.join(".oodkit").join("datasets"))
        .ok_or_else(|| Error::MissingFile {
            path: PathBuf::from("~/.oodkit/datasets"),
            hint: format!(
                "no home directory is known: pass a data directory or set {DATA_DIR_ENV}"
            ),
        })
}
