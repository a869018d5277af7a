//! Fitted detectors in files: [`Persist::save`] and [`Persist::load`],
//! and [`describe`] to see what a file holds.
//!
//! Every fitted detector saves to one file: a logit detector (its
//! parameters; with [`Shaped`](super::Shaped), the activation shaping),
//! a feature detector fitted through a model or on precomputed features
//! ([`FittedFeatures`](super::FittedFeatures): its layers, each layer's
//! fitted state, the multi-layer aggregator, the input step) and either
//! with its calibration ([`Calibrated`](crate::calibration::Calibrated)).
//! The network is not in the file; the file records what the detector
//! expects of it (layers, feature widths, and — when fitted or calibrated
//! through a model — the input shape and number of classes), and
//! [`attach`](super::FittedDetector::attach)ing a model that does not match
//! is an error that says what differs.
//!
//! # The format
//! A [safetensors](https://github.com/huggingface/safetensors) file:
//! little-endian arrays, no code, readable from Python without oodkit.
//! Its header's metadata has one entry, `"oodkit"`, a JSON object:
//! `format` (`"oodkit-detector"`), `format_version` (2), `crate_version`,
//! `kind` (e.g. `"KNN"`), `detector` (the parameters and structure),
//! `shaping` / `calibration` when there are, and `checksums`: each
//! array's CRC-32 (IEEE, as `zlib.crc32` computes it, eight hex digits),
//! checked on load so that a damaged array is an error, never changed
//! scores; beside it, the metadata entry `"oodkit.crc32"` is the CRC-32 of
//! the `"oodkit"` JSON text itself, so a damaged parameter is caught too
//! (version 1 files, written before, have neither). The checksums guard
//! against damage, not against someone who edits the file on purpose:
//! load detector files from sources you trust. The arrays are named by what
//! they hold: `layer.{l}.{name}` for layer `l`'s state (e.g.
//! `layer.0.features`, `layer.0.sq_norms` for KNN; `layer.0.precision`
//! for Mahalanobis), `aggregator.{name}`, `calibration.scores`.
//!
//! ```python
//! import json
//! from safetensors import safe_open
//! from safetensors.numpy import load_file
//! arrays = load_file("knn.oodkit")           # {"layer.0.features": ndarray, ...}
//! with safe_open("knn.oodkit", "np") as f:
//!     meta = json.loads(f.metadata()["oodkit"])
//! ```
//!
//! The entries are the serde form of the detector's types: a state's
//! scalar fields are its JSON, its array fields (marked with [`array`](mod@array))
//! the arrays under its prefix. A detector of your own saves the same way
//! ([`StoredState`](super::StoredState),
//! [`StoredLogits`](super::StoredLogits)).
//!
//! Files are written atomically (a temporary file beside the target, then
//! a rename): a crash never leaves a half-written file under the name.
//! Loading checks the format, its version, the kind (the typed loaders
//! refuse another detector's file), every array's checksum, dtype and
//! shape against the parameters, and that stored statistics are finite.
//! Memory: loading reads the file a chunk at a time (a regular file only):
//! once through to check the checksums, then each array straight into its
//! place, so the peak is about the file's size, never twice it; the JSON
//! header is parsed once and may take at most [`MAX_HEADER_BYTES`].
//!
//! ```
//! use ndarray::{Array1, Array2};
//! use oodkit::detectors::{FeatureDetector, FittedFeatures, Knn, FittedKnn, Persist, ScoreFeatures};
//!
//! let features = Array2::from_shape_fn((50, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
//! let knn = Knn::new(3)?.fit_features(features.view(), Array1::zeros(50).view())?;
//! let path = std::env::temp_dir().join(format!("oodkit-doc-{}.oodkit", std::process::id()));
//! knn.save(&path)?;
//! let loaded = FittedKnn::load(&path)?;
//! assert_eq!(loaded.score_features(features.view())?, knn.score_features(features.view())?);
//! // A state fitted on precomputed features names no layer of a model.
//! assert!(FittedFeatures::<FittedKnn>::load(&path).is_err());
//! assert!(oodkit::Mls::load(&path).is_err()); // another kind
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), oodkit::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use safetensors::tensor::{Dtype, Metadata, TensorView};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

pub mod array;

use array::{ArrayBytes, Encoded, FromArray, Table, ToArray};

use crate::datasets::files::{open_regular_file, write_atomically};
use crate::error::{Error, Result};

/// The `format` entry of every detector file.
pub const FORMAT: &str = "oodkit-detector";

/// The format version this oodkit writes; it reads this and older ones.
/// Version 2 added the arrays' checksums.
pub const FORMAT_VERSION: u64 = 2;

/// The largest safetensors header a detector file may have (8 MiB): the
/// arrays are in the table, so a header holds parameters and
/// annotations, a few KiB. A longer one is refused before it is parsed.
pub const MAX_HEADER_BYTES: u64 = 8 << 20;

/// The metadata key of the JSON header.
const META_KEY: &str = "oodkit";

/// The metadata key of the JSON header's checksum.
const META_CHECKSUM_KEY: &str = "oodkit.crc32";

/// A fitted detector that saves to and loads from a file (see the
/// [module docs](self) for the format). Implemented by every fitted
/// detector of oodkit.
pub trait Persist: Sized + sealed::Stored {
    /// Writes the detector to `path` (atomically; an existing file is
    /// replaced). `.oodkit` is the usual extension.
    fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save_to(self, path.as_ref(), None)
    }

    /// Like [`save`](Self::save), with `annotations` — any JSON an
    /// application wants kept beside the detector (e.g. how its inputs
    /// were prepared) — in the header's `annotations` entry, read back by
    /// [`FileInfo::annotations`].
    fn save_annotated(&self, path: impl AsRef<Path>, annotations: &Value) -> Result<()> {
        save_to(self, path.as_ref(), Some(annotations))
    }

    /// Reads a detector of this type from `path`. Errors naming the file
    /// on a missing, truncated or corrupt file, a file of another kind, a
    /// newer format version, and missing, misshaped or non-finite arrays.
    fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = Reader::open(path)?;
        if !Self::accepts(file.kind()) {
            return Err(Error::WrongFile {
                path: path.to_path_buf(),
                expected: format!("a {} detector", Self::expected_kind()),
                found: format!("a {} detector", file.kind()),
                hint: "load it with the loader of its kind (detectors::file::describe tells \
                       which)"
                    .into(),
            });
        }
        Self::read(&file)
    }
}

impl<T: sealed::Stored> Persist for T {}

/// Writes `detector` to `path`, with `annotations` when given.
pub(crate) fn save_to<T: sealed::Stored>(
    detector: &T,
    path: &Path,
    annotations: Option<&Value>,
) -> Result<()> {
    let mut file = Writer::default();
    detector.write(&mut file)?;
    if let Some(annotations) = annotations {
        file.set("annotations", annotations.clone());
    }
    file.write_to(path, detector.kind_name())
}

impl FileInfo {
    /// What the application that saved it kept beside the detector
    /// ([`Persist::save_annotated`]), if anything.
    pub fn annotations(&self) -> Option<&Value> {
        self.metadata.get("annotations")
    }
}

/// What a detector file holds, read from its header alone.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    /// The detector's kind, e.g. `"KNN"`.
    pub kind: String,
    /// The format version it was written in.
    pub format_version: u64,
    /// The oodkit version that wrote it.
    pub crate_version: String,
    /// Whether it holds a calibration.
    pub calibrated: bool,
    /// Whether it holds activation shaping.
    pub shaped: bool,
    /// The whole JSON header.
    pub metadata: Value,
}

/// What the detector file at `path` holds (kind, versions, calibration),
/// after the same checks of format and version as loading.
pub fn describe(path: impl AsRef<Path>) -> Result<FileInfo> {
    let path = path.as_ref();
    let file = Reader::open(path)?;
    Ok(FileInfo {
        kind: file.kind().to_owned(),
        format_version: file.version,
        crate_version: file.meta["crate_version"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        calibrated: file.meta.contains_key("calibration"),
        shaped: file.meta.contains_key("shaping"),
        metadata: Value::Object(file.meta.clone()),
    })
}

pub(crate) mod sealed {
    use super::{Reader, Writer};
    use crate::error::Result;

    /// How a fitted detector writes itself into a file and reads itself
    /// back; sealed: [`Persist`](super::Persist) is the public face.
    pub trait Stored: Sized {
        /// The kind written in the file.
        fn kind_name(&self) -> &'static str;
        /// Whether the typed loader takes a file of this kind.
        fn accepts(kind: &str) -> bool;
        /// The kind(s) it takes, for messages.
        fn expected_kind() -> String;
        /// Writes the parameters (JSON) and arrays.
        fn write(&self, file: &mut Writer) -> Result<()>;
        /// Reads them back, checked.
        fn read(file: &Reader) -> Result<Self>;
    }
}

pub(crate) use sealed::Stored;

/// The arrays and JSON header of a file being written.
#[derive(Debug, Default)]
pub struct Writer {
    meta: Map<String, Value>,
    arrays: Vec<(String, Encoded)>,
}

impl Writer {
    /// Sets a top-level entry of the JSON header (`detector`, `shaping`,
    /// `calibration`).
    pub(crate) fn set(&mut self, key: &str, value: Value) {
        self.meta.insert(key.to_owned(), value);
    }

    /// Adds an array.
    pub(crate) fn array(&mut self, key: &str, array: &impl ToArray) {
        self.arrays.push((key.to_owned(), array.encode()));
    }

    /// Writes `value`'s serde form: its array fields (see [`array`](mod@array)) into
    /// the table under `prefix`, the rest returned as JSON for the header.
    pub(crate) fn state<T: Serialize + ?Sized>(
        &mut self,
        prefix: &str,
        value: &T,
    ) -> Result<Value> {
        let (json, arrays) = array::to_json(value)?;
        for (path, encoded) in arrays {
            self.arrays.push((format!("{prefix}{path}"), encoded));
        }
        Ok(json)
    }

    fn write_to(mut self, path: &Path, kind: &str) -> Result<()> {
        let mut meta = Map::new();
        meta.insert("format".into(), json!(FORMAT));
        meta.insert("format_version".into(), json!(FORMAT_VERSION));
        meta.insert("crate_version".into(), json!(env!("CARGO_PKG_VERSION")));
        meta.insert("kind".into(), json!(kind));
        meta.append(&mut self.meta);
        let checksums: Map<String, Value> = self
            .arrays
            .iter()
            .map(|(key, a)| (key.clone(), json!(checksum(&a.bytes))))
            .collect();
        meta.insert("checksums".into(), Value::Object(checksums));
        let text = Value::Object(meta).to_string();
        let header = HashMap::from([
            (META_CHECKSUM_KEY.to_owned(), checksum(text.as_bytes())),
            (META_KEY.to_owned(), text),
        ]);
        let views = self
            .arrays
            .iter()
            .map(|(key, a)| {
                TensorView::new(a.dtype, a.shape.clone(), &a.bytes).map(|v| (key.as_str(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::custom(format!("encoding a detector's arrays: {e}")))?;
        let bytes = safetensors::serialize(views, Some(header))
            .map_err(|e| Error::custom(format!("encoding a detector file: {e}")))?;
        write_atomically(path, &bytes)
    }
}

/// A detector file read and checked: its header and arrays.
pub struct Reader {
    path: PathBuf,
    version: u64,
    meta: Map<String, Value>,
    table: Rc<Table>,
}

impl Reader {
    /// Opens the detector file at `path` and checks its header and its
    /// arrays' checksums; the arrays are read when decoded.
    fn open(path: &Path) -> Result<Self> {
        let corrupt = |reason: String| Error::corrupt(path, None, reason);
        let (mut file, size) = open_regular_file(path, "a detector file saved by oodkit")?;
        let io = |e: std::io::Error| Error::io(path, e);
        let mut length = [0; 8];
        if size < 8 {
            return Err(corrupt(format!(
                "not a readable safetensors file ({size} bytes, shorter than its header's \
                 length); it may be truncated or damaged: save the detector again"
            )));
        }
        file.read_exact(&mut length).map_err(io)?;
        let n = u64::from_le_bytes(length);
        if n > MAX_HEADER_BYTES {
            return Err(corrupt(format!(
                "its header claims {n} bytes, above the {MAX_HEADER_BYTES} a detector file's \
                 header may take: the file is damaged, or not a detector file"
            )));
        }
        if 8 + n > size {
            return Err(corrupt(format!(
                "its header claims {n} bytes, more than the file holds ({size} bytes): it may \
                 be truncated or damaged: save the detector again"
            )));
        }
        let mut text = vec![0; n as usize];
        file.read_exact(&mut text).map_err(io)?;
        // One parse of the header: the arrays' places (checked by the
        // safetensors parser: contiguous, each its dtype × shape long) and
        // the metadata.
        let unreadable = |e: String| {
            corrupt(format!(
                "not a readable safetensors file ({e}); it may be truncated or damaged: save \
                 the detector again"
            ))
        };
        let header: Metadata =
            serde_json::from_slice(&text).map_err(|e| unreadable(e.to_string()))?;
        drop(text);
        let start = 8 + n;
        let end = header
            .tensors()
            .values()
            .map(|info| info.data_offsets.1 as u64)
            .max()
            .unwrap_or(0);
        if start + end != size {
            return Err(unreadable(format!(
                "its arrays end at byte {}, the file at byte {size}",
                start + end
            )));
        }
        let index: HashMap<String, (Dtype, Vec<usize>, Range<u64>)> = header
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (s, e) = info.data_offsets;
                (
                    name,
                    (
                        info.dtype,
                        info.shape.clone(),
                        start + s as u64..start + e as u64,
                    ),
                )
            })
            .collect();
        let entries = header.metadata().as_ref();
        let text_checksum = entries.and_then(|m| m.get(META_CHECKSUM_KEY));
        let text = entries.and_then(|m| m.get(META_KEY)).ok_or_else(|| {
            corrupt(format!(
                "a safetensors file without the \"{META_KEY}\" metadata: not a detector \
                     file written by oodkit"
            ))
        })?;
        if text_checksum.is_some_and(|sum| *sum != checksum(text.as_bytes())) {
            return Err(corrupt(format!(
                "its header does not match its checksum: {DAMAGED}"
            )));
        }
        let has_text_checksum = text_checksum.is_some();
        let meta = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(meta)) => meta,
            Ok(_) => return Err(corrupt("the oodkit header is not a JSON object".into())),
            Err(e) => return Err(corrupt(format!("the oodkit header is not JSON ({e})"))),
        };
        drop(header);
        if meta.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(corrupt(format!(
                "the header's format is {}, not \"{FORMAT}\"",
                meta.get("format").unwrap_or(&Value::Null)
            )));
        }
        let version = meta
            .get("format_version")
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt("the header has no format_version".into()))?;
        if version == 0 || version > FORMAT_VERSION {
            return Err(Error::WrongFile {
                path: path.to_path_buf(),
                expected: format!("format version 1 to {FORMAT_VERSION}"),
                found: format!("format version {version}"),
                hint: "it was written by a newer oodkit: update oodkit to read it".into(),
            });
        }
        if meta.get("kind").and_then(Value::as_str).is_none() {
            return Err(corrupt("the header names no detector kind".into()));
        }
        if version >= 2 && !has_text_checksum {
            return Err(corrupt(format!(
                "its header has no \"{META_CHECKSUM_KEY}\" checksum: {DAMAGED}"
            )));
        }
        let table = Table {
            file: RefCell::new(file),
            index,
        };
        if version >= 2 {
            check_arrays(&meta, &table).map_err(corrupt)?;
        }
        Ok(Reader {
            path: path.to_path_buf(),
            version,
            meta,
            table: Rc::new(table),
        })
    }

    /// Reads a `T` that has no array field from the header entry `json`;
    /// `what` names it in errors.
    pub(crate) fn header<T: DeserializeOwned>(&self, what: &str, json: &Value) -> Result<T> {
        T::deserialize(json)
            .map_err(|e| self.corrupt(format!("its {what} does not read back: {e}")))
    }

    /// Reads a `T` from the header entry `json` and its array fields from
    /// the arrays under `prefix` (see [`array`](mod@array)); `what` names it in errors.
    pub(crate) fn state<T: DeserializeOwned>(
        &self,
        what: &str,
        prefix: &str,
        json: &Value,
    ) -> Result<T> {
        array::from_json(json, &self.table, prefix)
            .map_err(|e| self.corrupt(format!("its {what} does not read back: {e}")))
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The kind named in the header.
    pub(crate) fn kind(&self) -> &str {
        self.meta["kind"].as_str().unwrap_or_default()
    }

    /// An error about this file.
    pub(crate) fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::corrupt(&self.path, None, reason)
    }

    /// A top-level entry of the header, if there.
    pub(crate) fn entry(&self, key: &str) -> Option<&Value> {
        self.meta.get(key)
    }

    /// A top-level entry of the header that must be there.
    pub(crate) fn required(&self, key: &str) -> Result<&Value> {
        self.entry(key)
            .ok_or_else(|| self.corrupt(format!("the header has no \"{key}\" entry")))
    }

    /// The array `key`, with `dims` (`None`: any length), every value
    /// finite.
    pub(crate) fn array<A: FromArray + ToArray>(
        &self,
        key: &str,
        dims: &[Option<usize>],
    ) -> Result<A> {
        let (dtype, shape, range) = self
            .table
            .index
            .get(key)
            .ok_or_else(|| self.corrupt(format!("the array \"{key}\" is missing")))?;
        let fits = shape.len() == dims.len()
            && shape
                .iter()
                .zip(dims)
                .all(|(&s, d)| d.is_none_or(|d| d == s));
        if !fits {
            let expected: Vec<String> = dims
                .iter()
                .map(|d| d.map_or("_".into(), |d| d.to_string()))
                .collect();
            return Err(self.corrupt(format!(
                "the array \"{key}\" has shape {shape:?}, expected ({})",
                expected.join(", ")
            )));
        }
        A::decode(
            key,
            *dtype,
            shape,
            ArrayBytes::new(&self.table, range.clone()),
        )
        .map_err(|e| self.corrupt(e))
    }
}

/// What a checksum that does not match means, and what to do.
const DAMAGED: &str = "the file was damaged after it was written (a copy or a disk went \
                       wrong): save or copy the detector again";

/// The checksum of an array's bytes as the file stores it: CRC-32 (IEEE),
/// eight hex digits.
fn checksum(bytes: &[u8]) -> String {
    hex(crc32fast::hash(bytes))
}

/// A CRC-32 as the file writes it: eight hex digits.
fn hex(crc: u32) -> String {
    format!("{crc:08x}")
}

/// Every array of the file has its checksum in the header, and matches it
/// (the file read through once, a chunk at a time).
fn check_arrays(meta: &Map<String, Value>, table: &Table) -> std::result::Result<(), String> {
    let index = &table.index;
    let sums = meta
        .get("checksums")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("the header has no checksums of its arrays: {DAMAGED}"))?;
    for (key, (_, _, range)) in index {
        let stored = sums
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the array \"{key}\" has no checksum: {DAMAGED}"))?;
        let mut hasher = crc32fast::Hasher::new();
        table
            .stream(range.clone(), |chunk| hasher.update(chunk))
            .map_err(|e| format!("the array \"{key}\" could not be read ({e})"))?;
        if *stored != hex(hasher.finalize()) {
            return Err(format!(
                "the array \"{key}\" does not match its checksum: {DAMAGED}"
            ));
        }
    }
    if let Some(key) = sums.keys().find(|k| !index.contains_key(*k)) {
        return Err(format!("the array \"{key}\" is missing: {DAMAGED}"));
    }
    Ok(())
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}
