//! MNIST from its IDX files (`train-images-idx3-ubyte`, …), plain or gzipped.

use std::path::Path;

use ndarray::{Array1, Array4};

use super::files::{be_u32, find_file, read_maybe_gz};
use super::{OodDataset, Split};
use crate::error::{Error, Result};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const HOW_TO_GET: &str = "fetch the four MNIST files with oodkit::datasets::download::mnist(dir) \
     (feature `download`), or put them (plain or .gz) into this folder";

/// Loads the MNIST `split` from `dir`, the folder holding the IDX files
/// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each plain or `.gz`).
///
/// Inputs are `(N, 1, 28, 28)` with pixel values `0.0..=255.0`; labels are the
/// digits 0–9, with class names `"0"`…`"9"`. Magic numbers, dimensions and
/// counts are checked: a truncated or corrupt file is an error naming the
/// file and what is wrong.
///
/// ```
/// use oodkit::datasets::{Split, mnist};
///
/// // Two 2x2 images labelled 3 and 8, written as the IDX files MNIST ships.
/// let dir = std::env::temp_dir().join(format!("oodkit-doc-mnist-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let header = |words: &[u32]| words.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>();
/// let mut images = header(&[0x0803, 2, 2, 2]);
/// images.extend([0, 64, 128, 255, 1, 2, 3, 4]);
/// let mut labels = header(&[0x0801, 2]);
/// labels.extend([3, 8]);
/// std::fs::write(dir.join("t10k-images-idx3-ubyte"), images)?;
/// std::fs::write(dir.join("t10k-labels-idx1-ubyte"), labels)?;
///
/// let test = mnist::load(&dir, Split::Test)?;
/// assert_eq!(test.len(), 2);
/// assert_eq!(test.labels().to_vec(), vec![3, 8]);
/// assert_eq!(test.inputs()[[0, 0, 1, 1]], 255.0);
///
/// // A file cut short is an error naming the file, not a panic.
/// std::fs::write(dir.join("t10k-labels-idx1-ubyte"), header(&[0x0801, 5]))?;
/// let err = mnist::load(&dir, Split::Test).unwrap_err();
/// assert!(err.to_string().contains("t10k-labels-idx1-ubyte"));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<OodDataset> {
    let dir = dir.as_ref();
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_name = format!("{prefix}-images-idx3-ubyte");
    let labels_name = format!("{prefix}-labels-idx1-ubyte");
    let images_path = find_file(
        dir,
        &[&format!("{images_name}.gz"), &images_name],
        HOW_TO_GET,
    )?;
    let labels_path = find_file(
        dir,
        &[&format!("{labels_name}.gz"), &labels_name],
        HOW_TO_GET,
    )?;

    let image_bytes = read_maybe_gz(&images_path)?;
    let (images, rows, cols) = parse_images(&images_path, &image_bytes)?;
    let labels = parse_labels(&labels_path, &read_maybe_gz(&labels_path)?)?;
    let n = labels.len();
    if images.len() != n * rows * cols {
        return Err(Error::LengthMismatch {
            what: format!(
                "images in {} and labels in {}",
                images_path.display(),
                labels_path.display()
            ),
            left: images.len() / (rows * cols).max(1),
            right: n,
        });
    }
    let inputs = Array4::from_shape_vec(
        (n, 1, rows, cols),
        images.iter().map(|&p| f32::from(p)).collect(),
    )
    .map_err(|e| Error::corrupt(&images_path, None, e.to_string()))?;
    let names = (0..10).map(|d| d.to_string()).collect();
    OodDataset::from_arrays(inputs, Array1::from(labels))?.with_class_names(names)
}

/// The pixel bytes of an IDX3 image file, with its rows and columns.
fn parse_images<'b>(path: &Path, bytes: &'b [u8]) -> Result<(&'b [u8], usize, usize)> {
    let magic = be_u32(path, bytes, 0)?;
    if magic != IMAGES_MAGIC {
        return Err(Error::corrupt(
            path,
            Some(0),
            format!("magic number {magic:#010x}, an IDX image file has {IMAGES_MAGIC:#010x}"),
        ));
    }
    let n = be_u32(path, bytes, 4)? as usize;
    let rows = be_u32(path, bytes, 8)? as usize;
    let cols = be_u32(path, bytes, 12)? as usize;
    if rows == 0 || cols == 0 {
        return Err(Error::corrupt(
            path,
            Some(8),
            format!("image size {rows}x{cols} has no pixel"),
        ));
    }
    let pixels = rows.checked_mul(cols).ok_or_else(|| {
        Error::corrupt(
            path,
            Some(8),
            format!("image size {rows}x{cols} is too large"),
        )
    })?;
    let body = check_body_len(path, bytes, 16, n, pixels, "images")?;
    Ok((body, rows, cols))
}

/// The labels of an IDX1 label file, checked to be digits.
fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<i64>> {
    let magic = be_u32(path, bytes, 0)?;
    if magic != LABELS_MAGIC {
        return Err(Error::corrupt(
            path,
            Some(0),
            format!("magic number {magic:#010x}, an IDX label file has {LABELS_MAGIC:#010x}"),
        ));
    }
    let n = be_u32(path, bytes, 4)? as usize;
    let body = check_body_len(path, bytes, 8, n, 1, "labels")?;
    if let Some(i) = body.iter().position(|&l| l > 9) {
        return Err(Error::corrupt(
            path,
            Some(8 + i as u64),
            format!("label {} of sample {i} is not a digit 0-9", body[i]),
        ));
    }
    Ok(body.iter().map(|&l| i64::from(l)).collect())
}

/// The `n` records of `record` bytes after a `header`-byte header, which must
/// be exactly what the file holds.
fn check_body_len<'b>(
    path: &Path,
    bytes: &'b [u8],
    header: usize,
    n: usize,
    record: usize,
    what: &str,
) -> Result<&'b [u8]> {
    let expected = n
        .checked_mul(record)
        .and_then(|b| b.checked_add(header))
        .ok_or_else(|| {
            Error::corrupt(
                path,
                Some(4),
                format!("header announces {n} {what}, too many"),
            )
        })?;
    if bytes.len() < expected {
        return Err(Error::corrupt(
            path,
            Some(bytes.len() as u64),
            format!(
                "truncated: the header announces {n} {what} ({expected} bytes) but the file ends after {} bytes",
                bytes.len()
            ),
        ));
    }
    if bytes.len() > expected {
        return Err(Error::corrupt(
            path,
            Some(expected as u64),
            format!(
                "{} unexpected bytes after the {n} {what} the header announces",
                bytes.len() - expected
            ),
        ));
    }
    Ok(&bytes[header..])
}
