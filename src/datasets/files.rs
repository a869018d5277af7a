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

/// The whole content of `path`, gunzipped when it is gzip data.
///
/// A file named `*.gz` that is not gzip, or a gzip stream that is cut short
/// or damaged, is a [`Error::CorruptFile`].
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
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
    let mut out = Vec::with_capacity(raw.len() * 4);
    GzDecoder::new(raw.as_slice())
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
    Ok(out)
}

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

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`, so a failure never leaves a partial file under its name.
#[cfg_attr(not(any(feature = "plots", feature = "npy")), allow(dead_code))]
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidParameter {
            name: "path",
            value: path.display().to_string(),
            reason: "names no file".into(),
        })?
        .to_string_lossy();
    let temp: PathBuf = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
    let written = fs::File::create(&temp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&temp, path));
    written.map_err(|e| {
        let _ = fs::remove_file(&temp);
        Error::io(path, e)
    })
}
