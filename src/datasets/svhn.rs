//! SVHN (cropped digits) from its MATLAB files `train_32x32.mat` / `test_32x32.mat`.

use std::path::Path;

use matfile::{MatFile, NumericData};
use ndarray::{Array1, Array4};

use super::files::find_file;
use super::{OodDataset, Split};
use crate::error::{Error, Result};

const SIDE: usize = 32;
const HOW_TO_GET: &str = "fetch SVHN with oodkit::datasets::download::svhn(dir) (feature `download`), \
     or put the cropped-digits files train_32x32.mat / test_32x32.mat into this folder";

/// Loads the SVHN cropped-digits `split` from `dir`, the folder holding
/// `train_32x32.mat` / `test_32x32.mat` (MATLAB v5).
///
/// In the files `X` is `32x32x3xN` `uint8` in column-major order and `y` is
/// `Nx1` with the digits 1–9 and 10 standing for digit 0; the loader maps 10
/// to label 0, so labels are the digits themselves. Inputs are
/// `(N, 3, 32, 32)`, RGB, pixel values `0.0..=255.0`.
///
/// ```
/// use oodkit::datasets::{Split, svhn};
/// # // A minimal MATLAB v5 writer: header, then one miMATRIX element per variable.
/// # fn element(ty: u32, bytes: &[u8]) -> Vec<u8> {
/// #     let mut v = [ty.to_le_bytes(), (bytes.len() as u32).to_le_bytes()].concat();
/// #     v.extend_from_slice(bytes);
/// #     v.resize(v.len().div_ceil(8) * 8, 0);
/// #     v
/// # }
/// # fn matrix(name: &str, class: u32, dims: &[i32], ty: u32, data: &[u8]) -> Vec<u8> {
/// #     let mut body = element(6, &[class.to_le_bytes(), [0; 4]].concat());
/// #     body.extend(element(5, &dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<_>>()));
/// #     body.extend(element(1, name.as_bytes()));
/// #     body.extend(element(ty, data));
/// #     element(14, &body)
/// # }
/// # fn mat_file(x: &[u8], n: i32, y: &[f64]) -> Vec<u8> {
/// #     let mut v = format!("{:<116}", "MATLAB 5.0 MAT-file").into_bytes();
/// #     v.extend_from_slice(&[0; 8]);
/// #     v.extend_from_slice(&0x0100u16.to_le_bytes());
/// #     v.extend_from_slice(b"IM");
/// #     v.extend(matrix("X", 9, &[32, 32, 3, n], 2, x));
/// #     let y: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
/// #     v.extend(matrix("y", 6, &[n, 1], 9, &y));
/// #     v
/// # }
/// // Two images; SVHN writes digit 0 as label 10.
/// let dir = std::env::temp_dir().join(format!("oodkit-doc-svhn-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let mut x = vec![0u8; 32 * 32 * 3 * 2];
/// x[1] = 200; // X(row 1, col 0, red, image 0): column-major
/// std::fs::write(dir.join("test_32x32.mat"), mat_file(&x, 2, &[10.0, 4.0]))?;
///
/// let test = svhn::load(&dir, Split::Test)?;
/// assert_eq!(test.labels().to_vec(), vec![0, 4]);
/// assert_eq!(test.inputs()[[0, 0, 1, 0]], 200.0);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<OodDataset> {
    let name = match split {
        Split::Train => "train_32x32.mat",
        Split::Test => "test_32x32.mat",
    };
    let path = find_file(dir.as_ref(), &[name], HOW_TO_GET)?;
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mat = MatFile::parse(std::io::BufReader::new(file)).map_err(|e| {
        let reason =
            truncation(&path).unwrap_or_else(|| format!("not a readable MATLAB v5 file ({e})"));
        Error::corrupt(&path, None, reason)
    })?;

    // A cut file can parse, its last variable dropped: say it is cut.
    let missing = |var: &str| {
        let reason = truncation(&path).unwrap_or_else(|| format!("no numeric variable `{var}`"));
        Error::corrupt(&path, None, reason)
    };
    let x = mat.find_by_name("X").ok_or_else(|| missing("X"))?;
    let y = mat.find_by_name("y").ok_or_else(|| missing("y"))?;

    let n = match x.size().as_slice() {
        &[SIDE, SIDE, 3, n] => n,
        other => {
            return Err(Error::corrupt(
                &path,
                None,
                format!("X has size {other:?}, SVHN's is [32, 32, 3, N]"),
            ));
        }
    };
    let pixels = match x.data() {
        NumericData::UInt8 { real, .. } if n.checked_mul(3 * SIDE * SIDE) == Some(real.len()) => {
            real
        }
        NumericData::UInt8 { real, .. } => {
            return Err(Error::corrupt(
                &path,
                None,
                format!("X holds {} values for size [32, 32, 3, {n}]", real.len()),
            ));
        }
        _ => return Err(Error::corrupt(&path, None, "X is not uint8")),
    };
    let raw_labels = to_f64(y.data());
    if raw_labels.len() != n {
        return Err(Error::LengthMismatch {
            what: format!("images (X) and labels (y) in {}", path.display()),
            left: n,
            right: raw_labels.len(),
        });
    }
    let labels = raw_labels
        .iter()
        .enumerate()
        .map(|(i, &v)| match v {
            10.0 => Ok(0),
            v if (1.0..=9.0).contains(&v) && v.fract() == 0.0 => Ok(v as i64),
            v => Err(Error::corrupt(
                &path,
                None,
                format!("label y[{i}] = {v}, SVHN labels are 1-10 (10 for digit 0)"),
            )),
        })
        .collect::<Result<Vec<i64>>>()?;

    // Column-major X(row, col, channel, sample) into row-major (sample, channel, row, col).
    let inputs = Array4::from_shape_fn((n, 3, SIDE, SIDE), |(s, ch, r, c)| {
        f32::from(pixels[r + SIDE * (c + SIDE * (ch + 3 * s))])
    });
    let names = (0..10).map(|d| d.to_string()).collect();
    OodDataset::from_arrays(inputs, Array1::from(labels))
        .map_err(|_| Error::corrupt(&path, None, "X holds no image"))?
        .with_class_names(names)
}

fn to_f64(data: &NumericData) -> Vec<f64> {
    fn conv<T: Copy + Into<f64>>(v: &[T]) -> Vec<f64> {
        v.iter().map(|&x| x.into()).collect()
    }
    match data {
        NumericData::Int8 { real, .. } => conv(real),
        NumericData::UInt8 { real, .. } => conv(real),
        NumericData::Int16 { real, .. } => conv(real),
        NumericData::UInt16 { real, .. } => conv(real),
        NumericData::Int32 { real, .. } => conv(real),
        NumericData::UInt32 { real, .. } => conv(real),
        // 64-bit integers beyond 2^53 are not labels anyway; the range check rejects them.
        NumericData::Int64 { real, .. } => real.iter().map(|&x| x as f64).collect(),
        NumericData::UInt64 { real, .. } => real.iter().map(|&x| x as f64).collect(),
        NumericData::Single { real, .. } => conv(real),
        NumericData::Double { real, .. } => real.clone(),
    }
}

/// Why a MATLAB v5 file that did not parse is cut short, when it is: its
/// 128-byte header, then elements of an 8-byte tag (type, byte count) and
/// their data, padded to 8 bytes.
fn truncation(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 128 {
        return Some(format!(
            "truncated: {} bytes, less than the 128-byte MATLAB header; fetch the file again",
            bytes.len()
        ));
    }
    let little = bytes.get(126..128) == Some(b"IM");
    let mut at = 128_usize;
    while at < bytes.len() {
        let Some(tag) = bytes.get(at..at + 8) else {
            return Some(format!("truncated inside the element tag at byte {at}"));
        };
        let word = |b: &[u8]| {
            let raw = [b[0], b[1], b[2], b[3]];
            if little {
                u32::from_le_bytes(raw)
            } else {
                u32::from_be_bytes(raw)
            }
        };
        let size = word(&tag[4..8]) as usize;
        let end = at.checked_add(8)?.checked_add(size)?;
        if end > bytes.len() {
            return Some(format!(
                "truncated: the element at byte {at} declares {size} bytes, the file ends after \
                 {} bytes; fetch the file again",
                bytes.len()
            ));
        }
        // Compressed elements (type 15) are not padded.
        at = if word(&tag[0..4]) == 15 {
            end
        } else {
            end.checked_add(7)? / 8 * 8
        };
    }
    None
}
