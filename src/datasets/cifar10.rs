//! CIFAR-10 from its binary version (`cifar-10-batches-bin/`).

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array4};

use super::files::find_file;
use super::{OodDataset, Split};
use crate::error::{Error, Result};

/// The folder the official archive `cifar-10-binary.tar.gz` unpacks into.
pub const FOLDER: &str = "cifar-10-batches-bin";
const RECORD: usize = 1 + 3 * 32 * 32;
const NUM_CLASSES: usize = 10;
const HOW_TO_GET: &str = "fetch CIFAR-10 with oodkit::datasets::download::cifar10(dir) \
     (feature `download`), or unpack the official cifar-10-binary.tar.gz into this folder";

/// Loads the CIFAR-10 `split` (the five `data_batch_{1..5}.bin` for
/// [`Split::Train`], `test_batch.bin` for [`Split::Test`]) with the class
/// names of `batches.meta.txt`.
///
/// `dir` is the folder the official archive unpacks into (holding
/// `cifar-10-batches-bin/`) or that folder itself. Inputs are
/// `(N, 3, 32, 32)`, RGB, pixel values `0.0..=255.0`. Each file must hold
/// whole 3073-byte records (a label byte 0–9, then the red, green and blue
/// planes); anything else is an error naming the file and the byte.
///
/// ```
/// use oodkit::datasets::{Split, cifar10};
///
/// // One record: label 7 (horse), then the red, green and blue planes.
/// let dir = std::env::temp_dir().join(format!("oodkit-doc-cifar-{}", std::process::id()));
/// let folder = dir.join(cifar10::FOLDER);
/// std::fs::create_dir_all(&folder)?;
/// let mut record = vec![7u8];
/// record.extend([10u8, 20, 30].iter().flat_map(|&v| std::iter::repeat_n(v, 1024)));
/// std::fs::write(folder.join("test_batch.bin"), &record)?;
/// let names = "airplane automobile bird cat deer dog frog horse ship truck";
/// std::fs::write(folder.join("batches.meta.txt"), names.replace(' ', "\n"))?;
///
/// let test = cifar10::load(&dir, Split::Test)?;
/// assert_eq!(test.input_shape(), [3, 32, 32]);
/// assert_eq!(test.labels()[0], 7);
/// assert_eq!(test.class_names().unwrap()[7], "horse");
/// assert_eq!(test.inputs()[[0, 2, 31, 31]], 30.0); // blue plane
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<OodDataset> {
    let dir = batches_dir(dir.as_ref());
    let files: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    let names = read_class_names(&find_file(&dir, &["batches.meta.txt"], HOW_TO_GET)?)?;

    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in &files {
        let path = find_file(&dir, &[name], HOW_TO_GET)?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        read_records(&path, &bytes, &mut pixels, &mut labels)?;
    }
    let n = labels.len();
    let inputs = Array4::from_shape_vec((n, 3, 32, 32), pixels)
        .map_err(|e| Error::corrupt(&dir, None, e.to_string()))?;
    OodDataset::from_arrays(inputs, Array1::from(labels))
        .map_err(|_| Error::corrupt(dir.join(&files[0]), Some(0), "the file holds no record"))?
        .with_class_names(names)
}

/// `dir/cifar-10-batches-bin` when it exists, else `dir` itself.
fn batches_dir(dir: &Path) -> PathBuf {
    let inner = dir.join(FOLDER);
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

fn read_records(
    path: &Path,
    bytes: &[u8],
    pixels: &mut Vec<f32>,
    labels: &mut Vec<i64>,
) -> Result<()> {
    if !bytes.len().is_multiple_of(RECORD) {
        let whole = bytes.len() / RECORD * RECORD;
        return Err(Error::corrupt(
            path,
            Some(whole as u64),
            format!(
                "{} bytes is not a whole number of {RECORD}-byte records: the last record is cut short",
                bytes.len()
            ),
        ));
    }
    pixels.reserve(bytes.len() / RECORD * (RECORD - 1));
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        let label = record[0];
        if usize::from(label) >= NUM_CLASSES {
            return Err(Error::corrupt(
                path,
                Some((i * RECORD) as u64),
                format!("record {i} has label {label}, CIFAR-10 labels are 0-9"),
            ));
        }
        labels.push(i64::from(label));
        pixels.extend(record[1..].iter().map(|&p| f32::from(p)));
    }
    Ok(())
}

fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != NUM_CLASSES {
        return Err(Error::corrupt(
            path,
            None,
            format!("{} class names, CIFAR-10 has {NUM_CLASSES}", names.len()),
        ));
    }
    Ok(names)
}
