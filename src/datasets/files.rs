//! The files oodkit reads and writes: finding them, gunzipping them, and
//! writing whole files atomically.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The first of `names` that exists in `dir`, or a [`Error::MissingFile`]
/// naming the first candidate and saying how to get it.
pub(crate) fn find_file(dir: &Path, names: &[&str], hint: &str) -> Result<PathBuf> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingFile {
            path: dir.join(names[0]),
            hint: if names.len() > 1 {
                format!("also looked for {}; {hint}", names[1..].join(", "))
            } else {
                hint.to_string()
            },
        })
}

/// The whole content of the regular file `path` (its size in memory, no
/// more). A missing path is an [`Error::MissingFile`] saying to give
/// `what`; a folder, a pipe or a device is refused before it is opened (a
/// pipe could block forever, a device never end).
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("scores.csv");
/// std::fs::write(&path, "score\n1.5\n")?;
/// assert_eq!(oodkit::datasets::read_regular_file(&path, "a score file")?, b"score\n1.5\n");
/// assert!(oodkit::datasets::read_regular_file(dir.path(), "a score file").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_regular_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    let (mut file, size) = open_regular_file(path, what)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(size as usize)
        .map_err(|_| Error::InvalidParameter {
            name: "file size",
            value: format!("{size} bytes ({})", path.display()),
            reason: "more than this machine can hold in memory".into(),
        })?;
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// The regular file `path`, open for reading, with its size. A missing
/// path is an [`Error::MissingFile`] saying to give `what`; a folder, a
/// pipe or a device is refused before it is opened (a pipe could block
/// forever, a device never end).
pub(crate) fn open_regular_file(path: &Path, what: &str) -> Result<(fs::File, u64)> {
    let not_regular = |meta: &fs::Metadata| Error::InvalidParameter {
        name: "path",
        value: path.display().to_string(),
        reason: format!(
            "is {}, not a regular file: give {what}",
            if meta.is_dir() {
                "a folder"
            } else {
                "a pipe, a socket or a device"
            }
        ),
    };
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
            hint: format!("give {what}"),
        },
        _ => Error::io(path, e),
    })?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Checked again on the open file: the path may have been swapped.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok((file, meta.len()))
}

/// The whole content of `path`, gunzipped when it is gzip data.
///
/// A file named `*.gz` that is not gzip, or a gzip stream that is cut short
/// or damaged, is a [`Error::CorruptFile`].
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = read_regular_file(path, "the dataset's file")?;
    let is_gz = raw.starts_with(&GZIP_MAGIC);
    if !is_gz {
        if path.extension().is_some_and(|e| e == "gz") {
            return Err(Error::corrupt(
                path,
                Some(0),
                format!(
                    "not a gzip file (starts with {:02x?}, gzip starts with 1f 8b)",
                    &raw[..raw.len().min(2)]
                ),
            ));
        }
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(MAX_GUNZIPPED as usize));
    GzDecoder::new(raw.as_slice())
        .take(MAX_GUNZIPPED + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::corrupt(
                path,
                None,
                format!(
                    "gzip data is damaged or cut short ({e}); delete the file and fetch it again"
                ),
            )
        })?;
    if out.len() as u64 > MAX_GUNZIPPED {
        return Err(Error::corrupt(
            path,
            None,
            format!(
                "it expands beyond {} GiB, more than any dataset file this loader reads: \
                 delete the file and fetch it again",
                MAX_GUNZIPPED >> 30
            ),
        ));
    }
    Ok(out)
}

/// The most a gzipped dataset file may expand to (2 GiB; MNIST's largest,
/// EMNIST's included, are under 1): a damaged or hostile file cannot take
/// more memory.
const MAX_GUNZIPPED: u64 = 2 << 30;

/// Reads a big-endian `u32` at `offset` of `bytes`, or says the file is too short.
pub(crate) fn be_u32(path: &Path, bytes: &[u8], offset: usize) -> Result<u32> {
    bytes
        .get(offset..offset + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| {
            Error::corrupt(
                path,
                Some(bytes.len() as u64),
                format!("file ends after {} bytes, inside its header", bytes.len()),
            )
        })
}

/// Writes `bytes` to `path` whole: into a temporary file in the same
/// folder, flushed to disk, then renamed over `path`, so a failure or a
/// kill never leaves a partial file under its name (the temporary file is
/// removed on failure). An existing `path` that is not a regular file (a
/// folder, a pipe, a device) is refused, not replaced.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("report.json");
/// oodkit::datasets::write_atomically(&path, b"{}")?;
/// assert_eq!(std::fs::read(&path)?, b"{}");
/// assert!(oodkit::datasets::write_atomically(dir.path(), b"{}").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Ok(meta) = fs::metadata(path)
        && !meta.is_file()
    {
        return Err(Error::InvalidParameter {
            name: "output path",
            value: path.display().to_string(),
            reason: "exists and is not a regular file (a folder, a pipe or a device): name a \
                     new file, or a regular file to replace"
                .into(),
        });
    }
    if path.file_name().is_none() {
        return Err(Error::InvalidParameter {
            name: "output path",
            value: path.display().to_string(),
            reason: "names no file".into(),
        });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".oodkit-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, e))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| Error::io(path, e))?;
    // Dropping `temp` on an error above removes it.
    temp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
