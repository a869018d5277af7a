//! NumPy's `.npy` and `.npz` files: features, logits, labels and scores
//! computed elsewhere come in, scores go out (feature `npy`).
//!
//! Reading accepts what NumPy writes by default: little-endian `f32` or
//! `f64` values (read as `f32`), `i64` or `i32` labels (read as `i64`), in
//! C or Fortran order. The header is checked against the file before any
//! array is allocated, so a truncated or corrupt file is an error naming
//! the file, never a huge allocation. Writing is atomic (a temporary file
//! in the same folder, then a rename).
//!
//! ```
//! use ndarray::array;
//! use oodkit::datasets::npy;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("scores.npy");
//! npy::write_vector(&path, array![0.5_f32, -1.0, 3.25].view())?;
//! assert_eq!(npy::read_vector(&path)?, array![0.5_f32, -1.0, 3.25]);
//! // The file is what NumPy writes: np.load("scores.npy") reads it back.
//! assert!(std::fs::read(&path)?.starts_with(b"\x93NUMPY"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::{Array, Array1, Array2, ArrayView, ArrayView1, ArrayView2, Dimension, Ix1, Ix2};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyExt, ReadableElement, WritableElement, WriteNpyExt};

use crate::error::{Error, Result};

/// The element types read, by NumPy's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
    I32,
    I64,
}

impl Dtype {
    /// The dtype of a descriptor such as `'<f4'` (`|` or `=` on a
    /// little-endian machine count as little-endian).
    fn parse(descriptor: &str) -> Option<Dtype> {
        let d = descriptor.trim_matches(|c| c == '\'' || c == '"');
        let little = cfg!(target_endian = "little");
        let (order, code) = d.split_at(d.len().min(1));
        if !(order == "<" || (little && (order == "=" || order == "|"))) {
            return None;
        }
        match code {
            "f4" => Some(Dtype::F32),
            "f8" => Some(Dtype::F64),
            "i4" => Some(Dtype::I32),
            "i8" => Some(Dtype::I64),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }
}

/// The bytes of one `.npy` array (a file, or an entry of an `.npz`), with
/// its checked header.
struct NpyBytes {
    /// The file, and the entry inside an `.npz`.
    source: String,
    path: PathBuf,
    bytes: Vec<u8>,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl NpyBytes {
    /// Parses and checks the header of `bytes`: a known dtype, and exactly
    /// the data the shape calls for.
    fn new(path: &Path, source: String, bytes: Vec<u8>) -> Result<Self> {
        let corrupt = |reason: String| Error::corrupt(path, None, format!("{source}: {reason}"));
        let mut reader = bytes.as_slice();
        let header = Header::from_reader(&mut reader)
            .map_err(|e| corrupt(format!("not a .npy array ({e})")))?;
        let descriptor = header.type_descriptor.to_string();
        let dtype = Dtype::parse(&descriptor).ok_or_else(|| {
            corrupt(format!(
                "dtype {descriptor} is not supported: save little-endian float32/float64 \
                 values or int32/int64 labels (e.g. array.astype(np.float32))"
            ))
        })?;
        let data = reader.len();
        let expected = header
            .shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
        if expected != Some(data) {
            return Err(corrupt(format!(
                "the header describes shape {:?} of {descriptor} ({} bytes) but {data} bytes \
                 of data follow: the file is truncated or corrupt",
                header.shape,
                expected.map_or("too many".to_owned(), |e| e.to_string())
            )));
        }
        Ok(NpyBytes {
            source,
            path: path.to_path_buf(),
            bytes,
            dtype,
            shape: header.shape,
        })
    }

    fn check_rank(&self, rank: usize, what: &str) -> Result<()> {
        if self.shape.len() != rank {
            return Err(Error::ShapeMismatch {
                what: format!("{} ({what})", self.source),
                expected: format!("an array of rank {rank}"),
                found: format!("shape {:?}", self.shape),
            });
        }
        Ok(())
    }

    /// The array as stored, in standard (C) layout.
    fn read<T: ReadableElement + Clone, D: Dimension>(&self) -> Result<Array<T, D>> {
        let array = Array::<T, D>::read_npy(self.bytes.as_slice())
            .map_err(|e| Error::corrupt(&self.path, None, format!("{}: {e}", self.source)))?;
        Ok(if array.is_standard_layout() {
            array
        } else {
            array.as_standard_layout().into_owned()
        })
    }

    fn floats<D: Dimension>(&self, what: &str) -> Result<Array<f32, D>> {
        self.check_rank(D::NDIM.unwrap_or(0), what)?;
        match self.dtype {
            Dtype::F32 => self.read::<f32, D>(),
            // Features and scores are f32 throughout the crate.
            Dtype::F64 => Ok(self.read::<f64, D>()?.mapv(|v| v as f32)),
            Dtype::I32 | Dtype::I64 => Err(Error::corrupt(
                &self.path,
                None,
                format!(
                    "{}: {what} must be float32 or float64, not integers",
                    self.source
                ),
            )),
        }
    }

    fn labels(&self) -> Result<Array1<i64>> {
        self.check_rank(1, "labels")?;
        match self.dtype {
            Dtype::I64 => self.read::<i64, Ix1>(),
            Dtype::I32 => Ok(self.read::<i32, Ix1>()?.mapv(i64::from)),
            Dtype::F32 | Dtype::F64 => Err(Error::corrupt(
                &self.path,
                None,
                format!(
                    "{}: labels must be int64 or int32, not floats (labels.astype(np.int64))",
                    self.source
                ),
            )),
        }
    }
}

fn read_file(path: &Path) -> Result<NpyBytes> {
    let bytes = read_all(path)?;
    NpyBytes::new(path, path.display().to_string(), bytes)
}

/// The whole file (a regular one), or a missing-file error naming it.
fn read_all(path: &Path) -> Result<Vec<u8>> {
    crate::datasets::files::read_regular_file(path, "a .npy or .npz file")
}

/// A 2-D array `(N, D)` of float32 or float64 values (features or logits),
/// as `f32`.
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Array2<f32>> {
    read_file(path.as_ref())?.floats("a (N, D) matrix of features or logits")
}

/// A 1-D array of float32 or float64 values (scores), as `f32`.
pub fn read_vector(path: impl AsRef<Path>) -> Result<Array1<f32>> {
    read_file(path.as_ref())?.floats("a vector of scores")
}

/// A 1-D array of int64 or int32 class labels, as `i64`.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Array1<i64>> {
    read_file(path.as_ref())?.labels()
}

/// Writes `array` to `path` as `.npy`, atomically.
fn write<A: WritableElement, D: Dimension>(path: &Path, array: ArrayView<A, D>) -> Result<()> {
    let mut bytes = Vec::new();
    array
        .write_npy(&mut bytes)
        .map_err(|e| Error::custom(format!("encoding {} as .npy: {e}", path.display())))?;
    crate::datasets::files::write_atomically(path, &bytes)
}

/// Writes a vector (e.g. scores) to `path` as a float32 `.npy` file,
/// atomically: a crash never leaves a partial file under the name.
pub fn write_vector(path: impl AsRef<Path>, values: ArrayView1<f32>) -> Result<()> {
    write::<f32, Ix1>(path.as_ref(), values)
}

/// Writes a matrix (e.g. features or logits) to `path` as a float32
/// `.npy` file, atomically.
pub fn write_matrix(path: impl AsRef<Path>, values: ArrayView2<f32>) -> Result<()> {
    write::<f32, Ix2>(path.as_ref(), values)
}

/// Writes labels (or any integers, e.g. verdicts) to `path` as an int64
/// `.npy` file, atomically.
pub fn write_labels(path: impl AsRef<Path>, labels: ArrayView1<i64>) -> Result<()> {
    write::<i64, Ix1>(path.as_ref(), labels)
}

/// An `.npz` archive (`np.savez` or `np.savez_compressed`), its arrays read
/// by name (`"features"`, or `"features.npy"` as stored).
///
/// ```
/// use std::io::Write;
/// use ndarray::array;
/// use oodkit::datasets::npy;
///
/// // Build a small .npz (a zip of .npy files) the way NumPy does.
/// let dir = tempfile::tempdir()?;
/// let member = dir.path().join("labels.npy");
/// npy::write_labels(&member, array![3_i64, 1, 4].view())?;
/// let path = dir.path().join("data.npz");
/// let mut zip = zip::ZipWriter::new(std::fs::File::create(&path)?);
/// zip.start_file("labels.npy", zip::write::SimpleFileOptions::default())?;
/// zip.write_all(&std::fs::read(&member)?)?;
/// zip.finish()?;
///
/// let mut npz = npy::Npz::open(&path)?;
/// assert_eq!(npz.names(), vec!["labels".to_owned()]);
/// assert_eq!(npz.labels("labels")?, array![3_i64, 1, 4]);
/// assert!(npz.labels("missing").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Npz {
    path: PathBuf,
    archive: zip::ZipArchive<std::io::Cursor<Vec<u8>>>,
}

impl std::fmt::Debug for Npz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Npz")
            .field("path", &self.path)
            .field("names", &self.names())
            .finish()
    }
}

/// The largest array an `.npz` entry may expand to (16 GiB): a corrupt or
/// hostile archive cannot make a read allocate more.
const MAX_ENTRY_BYTES: u64 = 16 << 30;

impl Npz {
    /// Opens the archive at `path` (read into memory).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_all(path)?;
        let archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| Error::corrupt(path, None, format!("not an .npz (zip) archive: {e}")))?;
        Ok(Npz {
            path: path.to_path_buf(),
            archive,
        })
    }

    /// The names of the arrays, without the `.npy` suffix, in stored order.
    pub fn names(&self) -> Vec<String> {
        self.archive
            .file_names()
            .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_owned())
            .collect()
    }

    fn entry(&mut self, name: &str) -> Result<NpyBytes> {
        let stored = if name.ends_with(".npy") {
            name.to_owned()
        } else {
            format!("{name}.npy")
        };
        let names = self.names();
        let path = self.path.clone();
        let mut file = self.archive.by_name(&stored).map_err(|e| match e {
            zip::result::ZipError::FileNotFound => Error::missing(
                format!("array \"{name}\" in {}", path.display()),
                format!("the archive holds {names:?}"),
            ),
            other => Error::corrupt(&path, None, format!("entry {stored}: {other}")),
        })?;
        let size = file.size();
        if size > MAX_ENTRY_BYTES {
            return Err(Error::corrupt(
                &path,
                None,
                format!("entry {stored} claims {size} bytes, above the 16 GiB limit"),
            ));
        }
        // The stored size may lie: reserve a bounded amount, let it grow.
        let mut bytes = Vec::with_capacity(size.min(64 << 20) as usize);
        file.by_ref()
            .take(MAX_ENTRY_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::corrupt(&path, None, format!("entry {stored}: {e}")))?;
        NpyBytes::new(&path, format!("{} [{stored}]", path.display()), bytes)
    }

    /// The 2-D float array `name` (features or logits), as `f32`.
    pub fn matrix(&mut self, name: &str) -> Result<Array2<f32>> {
        self.entry(name)?
            .floats("a (N, D) matrix of features or logits")
    }

    /// The 1-D float array `name` (scores), as `f32`.
    pub fn vector(&mut self, name: &str) -> Result<Array1<f32>> {
        self.entry(name)?.floats("a vector of scores")
    }

    /// The 1-D integer array `name` (labels), as `i64`.
    pub fn labels(&mut self, name: &str) -> Result<Array1<i64>> {
        self.entry(name)?.labels()
    }
}
