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

use ndarray::{
    Array, Array1, Array2, ArrayD, ArrayView, ArrayView1, ArrayView2, Dimension, Ix1, Ix2, IxDyn,
    ShapeBuilder,
};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{WritableElement, WriteNpyExt};

use crate::datasets::files;
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

/// The longest `.npy` header read (NumPy's own `np.load` refuses headers
/// above 10 000 bytes; a simple array's is under 200).
const MAX_HEADER_BYTES: usize = 64 << 10;

/// The bytes decoded at a time: an array grows with the data that arrives,
/// never ahead of it by more than this.
const CHUNK_BYTES: usize = 1 << 20;

/// One `.npy` array (a file, or an entry of an `.npz`) whose header has
/// been read and checked, its data still in `reader`.
struct NpyStream<R> {
    /// The entry inside an `.npz` (`None` for a `.npy` file).
    entry: Option<String>,
    path: PathBuf,
    reader: R,
    dtype: Dtype,
    shape: Vec<usize>,
    fortran: bool,
    /// The bytes of data the header calls for.
    data_bytes: u64,
}

impl<R: Read> NpyStream<R> {
    /// Reads and checks the header: its length against [`MAX_HEADER_BYTES`]
    /// before it is read, a known dtype, and data the size of the shape
    /// that fits in `limit` bytes. `total`, when the whole length is known
    /// (a file's size, an entry's stated size), must be header plus data
    /// exactly: a truncated or padded file is an error before any array is
    /// allocated.
    fn new(
        path: &Path,
        entry: Option<String>,
        mut reader: R,
        total: Option<u64>,
        limit: u64,
    ) -> Result<Self> {
        let corrupt = |reason: String| corrupt_in(path, entry.as_deref(), reason);
        let mut prefix = vec![0u8; 8];
        reader
            .read_exact(&mut prefix)
            .map_err(|_| corrupt("too short to be a .npy array (no header)".into()))?;
        if &prefix[..6] != b"\x93NUMPY" {
            return Err(corrupt(
                "not a .npy array (it does not start with \\x93NUMPY)".into(),
            ));
        }
        let length_bytes = if prefix[6] == 1 { 2 } else { 4 };
        let mut length = [0u8; 4];
        reader
            .read_exact(&mut length[..length_bytes])
            .map_err(|_| corrupt("the file ends inside its header".into()))?;
        prefix.extend_from_slice(&length[..length_bytes]);
        let header_len = u32::from_le_bytes(length) as usize;
        if header_len > MAX_HEADER_BYTES {
            return Err(corrupt(format!(
                "the header claims {header_len} bytes, above the {MAX_HEADER_BYTES} a .npy \
                 array's header may take: the file is corrupt"
            )));
        }
        let start = prefix.len();
        prefix.resize(start + header_len, 0);
        reader
            .read_exact(&mut prefix[start..])
            .map_err(|_| corrupt("the file ends inside its header".into()))?;
        let header = Header::from_reader(&mut prefix.as_slice()).map_err(|e| {
            // The header parser's messages span lines: one line each.
            let e = e.to_string();
            let e: Vec<&str> = e.split_whitespace().collect();
            corrupt(format!("not a .npy array ({})", e.join(" ")))
        })?;
        let descriptor = header.type_descriptor.to_string();
        let dtype = Dtype::parse(&descriptor).ok_or_else(|| {
            corrupt(format!(
                "dtype {descriptor} is not supported: save little-endian float32/float64 \
                 values or int32/int64 labels (e.g. array.astype(np.float32))"
            ))
        })?;
        let data_bytes = header
            .shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64));
        let Some(data_bytes) = data_bytes else {
            return Err(corrupt(format!(
                "the header describes shape {:?}, too many values to exist",
                header.shape
            )));
        };
        if let Some(total) = total {
            let data = total.saturating_sub(prefix.len() as u64);
            if data != data_bytes {
                return Err(corrupt(format!(
                    "the header describes shape {:?} of {descriptor} ({data_bytes} bytes) but \
                     {data} bytes of data follow: the file is truncated or corrupt",
                    header.shape
                )));
            }
        }
        if data_bytes > limit {
            return Err(corrupt(format!(
                "shape {:?} of {descriptor} takes {data_bytes} bytes, above the limit of {limit} \
                 bytes for one array (raise it with Npz::entry_limit if the data is genuine)",
                header.shape
            )));
        }
        Ok(NpyStream {
            entry,
            path: path.to_path_buf(),
            reader,
            dtype,
            shape: header.shape,
            fortran: header.layout.is_fortran(),
            data_bytes,
        })
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> Error {
        corrupt_in(&self.path, self.entry.as_deref(), reason)
    }

    fn check_rank(&self, rank: usize, what: &str) -> Result<()> {
        if self.shape.len() != rank {
            return Err(Error::ShapeMismatch {
                what: match &self.entry {
                    Some(entry) => format!("{} [{entry}] ({what})", self.path.display()),
                    None => format!("{} ({what})", self.path.display()),
                },
                expected: format!("an array of rank {rank}"),
                found: format!("shape {:?}", self.shape),
            });
        }
        Ok(())
    }

    /// The values, each of `width` bytes decoded by `decode`, read a chunk
    /// at a time: memory grows with the data actually read, so a header
    /// that lies costs no more than the data behind it. Data beyond what
    /// the header describes is an error.
    fn values<T>(&mut self, width: usize, decode: impl Fn(&[u8]) -> T) -> Result<Vec<T>> {
        let count = (self.data_bytes / width as u64) as usize;
        let mut values = Vec::new();
        let mut chunk = vec![0u8; CHUNK_BYTES - CHUNK_BYTES % width];
        let mut left = self.data_bytes as usize;
        while left > 0 {
            let take = left.min(chunk.len());
            self.reader.read_exact(&mut chunk[..take]).map_err(|e| {
                self.corrupt(format!(
                    "the data ends early ({} of {} bytes read: {e}): the file is truncated",
                    self.data_bytes as usize - left,
                    self.data_bytes
                ))
            })?;
            values
                .try_reserve(take / width)
                .map_err(|_| self.corrupt("more data than this machine can hold in memory"))?;
            values.extend(chunk[..take].chunks_exact(width).map(&decode));
            left -= take;
        }
        debug_assert_eq!(values.len(), count);
        // One more byte: data beyond the shape is corruption, and the end
        // of an archive entry is where its CRC is checked.
        match self.reader.read(&mut [0u8; 1]) {
            Ok(0) => Ok(values),
            Ok(_) => Err(self.corrupt(format!(
                "more data follows the {} bytes its header describes: the file is corrupt",
                self.data_bytes
            ))),
            Err(e) => Err(self.corrupt(format!("{e}: the file is corrupt"))),
        }
    }

    /// The array of `values` in the header's shape, in standard (C) layout.
    fn array<T: Clone, D: Dimension>(&self, values: Vec<T>) -> Result<Array<T, D>> {
        let dim = IxDyn(&self.shape);
        let array = if self.fortran {
            ArrayD::from_shape_vec(dim.f(), values)
        } else {
            ArrayD::from_shape_vec(dim, values)
        }
        .map_err(|e| self.corrupt(e))?;
        let array = if array.is_standard_layout() {
            array
        } else {
            array.as_standard_layout().into_owned()
        };
        array
            .into_dimensionality::<D>()
            .map_err(|e| self.corrupt(e))
    }

    fn floats<D: Dimension>(mut self, what: &str) -> Result<Array<f32, D>> {
        self.check_rank(D::NDIM.unwrap_or(0), what)?;
        // Features and scores are f32 throughout the crate.
        let values = match self.dtype {
            Dtype::F32 => self.values(4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))?,
            Dtype::F64 => self.values(8, |b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            })?,
            Dtype::I32 | Dtype::I64 => {
                return Err(
                    self.corrupt(format!("{what} must be float32 or float64, not integers"))
                );
            }
        };
        self.array(values)
    }

    fn labels(mut self) -> Result<Array1<i64>> {
        self.check_rank(1, "labels")?;
        let values = match self.dtype {
            Dtype::I64 => self.values(8, |b| {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            })?,
            Dtype::I32 => self.values(4, |b| {
                i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            })?,
            Dtype::F32 | Dtype::F64 => {
                return Err(self.corrupt(
                    "labels must be int64 or int32, not floats (labels.astype(np.int64))",
                ));
            }
        };
        self.array(values)
    }
}

/// A corrupt-file error about `path`, or its `.npz` entry.
fn corrupt_in(path: &Path, entry: Option<&str>, reason: impl std::fmt::Display) -> Error {
    match entry {
        Some(entry) => Error::corrupt(path, None, format!("entry {entry}: {reason}")),
        None => Error::corrupt(path, None, reason.to_string()),
    }
}

/// The `.npy` file at `path`, its header checked against the file's size.
fn read_file(path: &Path) -> Result<NpyStream<std::io::BufReader<std::fs::File>>> {
    let (file, size) = files::open_regular_file(path, "a .npy file")?;
    let reader = std::io::BufReader::new(file);
    NpyStream::new(path, None, reader, Some(size), u64::MAX)
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
    archive: zip::ZipArchive<std::io::BufReader<std::fs::File>>,
    entry_limit: u64,
}

impl std::fmt::Debug for Npz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Npz")
            .field("path", &self.path)
            .field("names", &self.names())
            .field("entry_limit", &self.entry_limit)
            .finish()
    }
}

impl Npz {
    /// The default of [`Npz::entry_limit`]: 16 GiB.
    pub const DEFAULT_ENTRY_LIMIT: u64 = 16 << 30;

    /// Opens the archive at `path` (its directory read; arrays are read
    /// when asked for, straight from the file).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (file, _) = files::open_regular_file(path, "an .npz file")?;
        let archive = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| Error::corrupt(path, None, format!("not an .npz (zip) archive: {e}")))?;
        Ok(Npz {
            path: path.to_path_buf(),
            archive,
            entry_limit: Self::DEFAULT_ENTRY_LIMIT,
        })
    }

    /// The most bytes one array may hold once inflated (default
    /// [`Npz::DEFAULT_ENTRY_LIMIT`]). An archive compresses a large array
    /// of repeated values into a few bytes, so its size says nothing of
    /// what it expands to: an entry whose header calls for more is an
    /// error before anything is allocated, and below the limit the array
    /// grows only as its data is inflated (a header that lies costs no
    /// more than the data behind it).
    pub fn entry_limit(mut self, bytes: u64) -> Self {
        self.entry_limit = bytes;
        self
    }

    /// The names of the arrays, without the `.npy` suffix, in stored order.
    pub fn names(&self) -> Vec<String> {
        self.archive
            .file_names()
            .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_owned())
            .collect()
    }

    fn entry(
        &mut self,
        name: &str,
    ) -> Result<NpyStream<zip::read::ZipFile<'_, std::io::BufReader<std::fs::File>>>> {
        let stored = if name.ends_with(".npy") {
            name.to_owned()
        } else {
            format!("{name}.npy")
        };
        let names = self.names();
        let path = self.path.clone();
        let limit = self.entry_limit;
        let file = self.archive.by_name(&stored).map_err(|e| match e {
            zip::result::ZipError::FileNotFound => Error::missing(
                format!("array \"{name}\" in {}", path.display()),
                format!("the archive holds {names:?}"),
            ),
            other => Error::corrupt(&path, None, format!("entry {stored}: {other}")),
        })?;
        let size = file.size();
        NpyStream::new(&path, Some(stored), file, Some(size), limit)
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
