//! NumPy files: arrays written here byte by byte after the `.npy` format's
//! specification (as NumPy writes them) read back; what oodkit writes has
//! the documented layout; `.npz` archives, stored and deflated; bad files
//! are errors naming the file; detectors fit and score from the files.
#![cfg(feature = "npy")]

use std::io::Write;
use std::path::Path;

use ndarray::{Array1, Array2, array};
use oodkit::Error;
use oodkit::datasets::npy;
use oodkit::detectors::{FeatureDetector, Mahalanobis, Mls, ScoreFeatures, ScoreLogits};

/// An `.npy` file as NumPy writes it (format 1.0): the magic string, the
/// version, the header length (u16 LE), a Python dict padded with spaces
/// and a newline so the data starts at a multiple of 64 bytes, the data.
fn npy_bytes(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let order = if fortran { "True" } else { "False" };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out.extend(data);
    out
}

fn le_f64(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn le_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn reads_what_numpy_writes_in_c_and_fortran_order() {
    let dir = tempfile::tempdir().unwrap();
    // np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float64)
    let c = write(
        dir.path(),
        "c.npy",
        &npy_bytes(
            "<f8",
            false,
            &[2, 3],
            &le_f64(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        ),
    );
    let expected = array![[1.0_f32, 2.0, 3.0], [4.0, 5.0, 6.0]];
    assert_eq!(npy::read_matrix(&c).unwrap(), expected);
    // The same matrix in Fortran order (np.asfortranarray), float32: the
    // data runs down the columns.
    let f = write(
        dir.path(),
        "f.npy",
        &npy_bytes(
            "<f4",
            true,
            &[2, 3],
            &le_f32(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]),
        ),
    );
    let read = npy::read_matrix(&f).unwrap();
    assert_eq!(read, expected);
    assert!(read.is_standard_layout());
    // Labels as int32 and int64; scores as float64.
    let i32s: Vec<u8> = [3_i32, -1, 7]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let l32 = write(dir.path(), "l32.npy", &npy_bytes("<i4", false, &[3], &i32s));
    assert_eq!(npy::read_labels(&l32).unwrap(), array![3_i64, -1, 7]);
    let i64s: Vec<u8> = [9_i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let l64 = write(dir.path(), "l64.npy", &npy_bytes("<i8", false, &[2], &i64s));
    assert_eq!(npy::read_labels(&l64).unwrap(), array![9_i64, 0]);
    let s = write(
        dir.path(),
        "s.npy",
        &npy_bytes("<f8", false, &[2], &le_f64(&[0.25, -3.5])),
    );
    assert_eq!(npy::read_vector(&s).unwrap(), array![0.25_f32, -3.5]);
}

#[test]
fn what_oodkit_writes_has_numpys_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scores.npy");
    npy::write_vector(&path, array![1.5_f32, -2.0].view()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data_start = 10 + header_len;
    // Major version 1 or later, data aligned as NumPy aligns it, the dict
    // naming little-endian float32 of shape (2,).
    assert!(bytes[6] >= 1);
    assert_eq!(data_start % 16, 0);
    let header = std::str::from_utf8(&bytes[10..data_start]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    assert!(header.contains("'shape': (2,)"), "{header}");
    assert!(header.ends_with('\n'));
    assert_eq!(&bytes[data_start..], le_f32(&[1.5, -2.0]).as_slice());
    // Matrices and labels round-trip.
    let m = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32 / 3.0);
    let mp = dir.path().join("m.npy");
    npy::write_matrix(&mp, m.view()).unwrap();
    assert_eq!(npy::read_matrix(&mp).unwrap(), m);
    let lp = dir.path().join("l.npy");
    npy::write_labels(&lp, array![4_i64, -2].view()).unwrap();
    assert_eq!(npy::read_labels(&lp).unwrap(), array![4_i64, -2]);
    // Writing leaves no temporary file beside the target.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = le_f32(&[1.0, 2.0, 3.0, 4.0]);
    let cases = [
        // Truncated: the header promises 2x2 floats, 3 follow.
        (
            "truncated.npy",
            npy_bytes("<f4", false, &[2, 2], &data[..12]),
        ),
        // A header claiming 10^15 elements: refused before any allocation.
        (
            "huge.npy",
            npy_bytes("<f4", false, &[1_000_000, 1_000_000_000], &data),
        ),
        // Big-endian and unsupported dtypes.
        ("big.npy", npy_bytes(">f4", false, &[2, 2], &data)),
        ("u8.npy", npy_bytes("|u1", false, &[4], &[1, 2, 3, 4])),
        // Not .npy at all.
        ("junk.npy", b"hello, world".to_vec()),
        ("empty.npy", Vec::new()),
    ];
    for (name, bytes) in &cases {
        let path = write(dir.path(), name, bytes);
        let err = npy::read_matrix(&path).unwrap_err();
        assert!(matches!(err, Error::CorruptFile { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    // The wrong rank, and floats where labels are wanted (and back).
    let matrix = write(
        dir.path(),
        "m.npy",
        &npy_bytes("<f4", false, &[2, 2], &data),
    );
    let err = npy::read_vector(&matrix).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("m.npy"), "{err}");
    let floats = write(dir.path(), "v.npy", &npy_bytes("<f4", false, &[4], &data));
    let err = npy::read_labels(&floats).unwrap_err();
    assert!(err.to_string().contains("int64"), "{err}");
    let ints: Vec<u8> = [1_i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let ints = write(dir.path(), "i.npy", &npy_bytes("<i8", false, &[2], &ints));
    assert!(npy::read_vector(&ints).is_err());
    // Missing files and folders.
    let err = npy::read_matrix(dir.path().join("nothing.npy")).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
    let err = npy::read_matrix(dir.path()).unwrap_err();
    assert!(err.to_string().contains("folder"), "{err}");
    let err = npy::Npz::open(&matrix).unwrap_err();
    assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
}

#[test]
fn npz_archives_stored_and_deflated() {
    let dir = tempfile::tempdir().unwrap();
    let features = npy_bytes("<f8", false, &[2, 2], &le_f64(&[1.0, 2.0, 3.0, 4.0]));
    let labels: Vec<u8> = [0_i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels = npy_bytes("<i8", false, &[2], &labels);
    for method in [
        zip::CompressionMethod::Stored,
        zip::CompressionMethod::Deflated,
    ] {
        // np.savez / np.savez_compressed: one .npy per array.
        let path = dir.path().join(format!("{method:?}.npz"));
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in [("features.npy", &features), ("labels.npy", &labels)] {
            zip.start_file(name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();

        let mut npz = npy::Npz::open(&path).unwrap();
        assert_eq!(npz.names(), vec!["features", "labels"]);
        assert_eq!(
            npz.matrix("features").unwrap(),
            array![[1.0_f32, 2.0], [3.0, 4.0]]
        );
        assert_eq!(npz.labels("labels.npy").unwrap(), array![0_i64, 1]);
        let err = npz.matrix("logits").unwrap_err();
        assert!(matches!(err, Error::MissingInput { .. }), "{err}");
        assert!(err.to_string().contains("features"), "{err}");
        assert!(npz.labels("features").is_err());
    }
}

/// Features and logits computed elsewhere: fit and score from the files,
/// write the scores, read them back.
#[test]
fn detectors_fit_and_score_from_npy_files() {
    let dir = tempfile::tempdir().unwrap();
    let fit = array![
        [-1.0_f64, 0.0],
        [1.0, 0.0],
        [0.0, -1.0],
        [0.0, 1.0],
        [9.0, 0.0],
        [11.0, 0.0],
        [10.0, -1.0],
        [10.0, 1.0]
    ];
    let fit_path = write(
        dir.path(),
        "fit.npy",
        &npy_bytes("<f8", false, &[8, 2], &le_f64(fit.as_slice().unwrap())),
    );
    let labels: Vec<u8> = [0_i64, 0, 0, 0, 1, 1, 1, 1]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let labels_path = write(
        dir.path(),
        "labels.npy",
        &npy_bytes("<i8", false, &[8], &labels),
    );
    let fitted = Mahalanobis::new()
        .fit_features(
            npy::read_matrix(&fit_path).unwrap().view(),
            npy::read_labels(&labels_path).unwrap().view(),
        )
        .unwrap();
    let scores = fitted
        .score_features(array![[0.0_f32, 0.0], [5.0, 5.0]].view())
        .unwrap();
    // Σ = I / 2: (5, 5) is at squared distance 2·50 from either mean.
    assert!(scores[0].abs() < 1e-5 && (scores[1] - 50.0).abs() < 1e-3);
    let out = dir.path().join("scores.npy");
    npy::write_vector(&out, scores.view()).unwrap();
    assert_eq!(npy::read_vector(&out).unwrap(), scores);

    let logits = write(
        dir.path(),
        "logits.npy",
        &npy_bytes("<f4", false, &[2, 2], &le_f32(&[2.0, 0.0, 0.0, 0.0])),
    );
    let mls = Mls::new()
        .score_logits(npy::read_matrix(&logits).unwrap().view())
        .unwrap();
    assert_eq!(mls, Array1::from(vec![-2.0_f32, -0.0]));
}

/// An `.npz` holding `entries` (name, bytes), deflated or stored.
fn npz(path: &Path, entries: &[(&str, &[u8])], method: zip::CompressionMethod) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(true);
    for (name, bytes) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Declared sizes are checked before anything is allocated, archive entries
/// are inflated only as far as their header says, and a corrupt entry
/// fails its CRC.
#[test]
fn declared_sizes_are_checked_before_memory_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let deflated = zip::CompressionMethod::Deflated;

    // A version-2 header claiming a 4 GB header: refused unread.
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend(0xffff_fff0_u32.to_le_bytes());
    v2.extend(b"{'descr': '<f4'");
    let path = write(dir.path(), "v2.npy", &v2);
    let err = npy::read_vector(&path).unwrap_err();
    assert!(err.to_string().contains("header claims"), "{err}");

    // A header promising a GiB of floats in a file of a few bytes: the
    // file's size gives it away before the GiB is reserved.
    let path = write(
        dir.path(),
        "promise.npy",
        &npy_bytes("<f4", false, &[1 << 28], &le_f32(&[1.0])),
    );
    let err = npy::read_vector(&path).unwrap_err();
    assert!(err.to_string().contains("truncated or corrupt"), "{err}");

    // An archive bomb: 256 MiB of zeros compress to a few hundred KiB; the
    // header inside says 4 floats. Reading stops after them and says so.
    let mut bomb = npy_bytes("<f4", false, &[4], &le_f32(&[1.0, 2.0, 3.0, 4.0]));
    bomb.resize(bomb.len() + (256 << 20), 0);
    let path = dir.path().join("bomb.npz");
    npz(&path, &[("scores.npy", &bomb)], deflated);
    assert!(std::fs::metadata(&path).unwrap().len() < 2 << 20);
    let err = npy::Npz::open(&path).unwrap().vector("scores").unwrap_err();
    assert!(err.to_string().contains("truncated or corrupt"), "{err}");
    drop(bomb);

    // A genuine array of 16 MiB of zeros, compressed: read under the
    // default limit, refused under a smaller one before it is inflated.
    let zeros = npy_bytes("<f4", false, &[4 << 20], &vec![0; 16 << 20]);
    let path = dir.path().join("zeros.npz");
    npz(&path, &[("scores.npy", &zeros)], deflated);
    let scores = npy::Npz::open(&path).unwrap().vector("scores").unwrap();
    assert_eq!(scores.len(), 4 << 20);
    assert!(scores.iter().all(|&v| v == 0.0));
    let err = npy::Npz::open(&path)
        .unwrap()
        .entry_limit(1 << 20)
        .vector("scores")
        .unwrap_err();
    assert!(err.to_string().contains("above the limit"), "{err}");

    // A stored entry with one data byte flipped: its CRC no longer matches.
    let data = npy_bytes("<f4", false, &[4], &le_f32(&[1.0, 2.0, 3.0, 4.0]));
    let path = dir.path().join("flipped.npz");
    npz(
        &path,
        &[("scores.npy", &data)],
        zip::CompressionMethod::Stored,
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == 3.0_f32.to_le_bytes())
        .unwrap();
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = npy::Npz::open(&path).unwrap().vector("scores").unwrap_err();
    assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
}

mod mutations {
    use super::*;
    use proptest::prelude::*;

    /// A byte flipped, bytes cut off or inserted: the file as a damaged
    /// copy or a hostile hand would leave it.
    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, u8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1..=255_u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        ]
    }

    fn apply(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for m in mutations {
            match *m {
                Mutation::Flip(i, b) if !out.is_empty() => {
                    let i = i % out.len();
                    out[i] ^= b;
                }
                Mutation::Truncate(i) => out.truncate(i % (out.len() + 1)),
                Mutation::Insert(i, b) => out.insert(i % (out.len() + 1), b),
                Mutation::Flip(..) => {}
            }
        }
        out
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 400,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(34),
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// A damaged `.npy` is an error or reads with the shape it had:
        /// never a panic, never another shape (the format has no checksum,
        /// so a flipped data byte can only change a value).
        #[test]
        fn damaged_npy_files(mutations in prop::collection::vec(mutation(), 1..4)) {
            let original = npy_bytes("<f4", false, &[3, 2], &le_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
            let dir = tempfile::tempdir().unwrap();
            let path = write(dir.path(), "m.npy", &apply(&original, &mutations));
            if let Ok(m) = npy::read_matrix(&path) {
                prop_assert_eq!(m.dim(), (3, 2));
            }
        }

        /// A damaged `.npz` (stored or deflated) is an error or reads the
        /// very values it held: the entries' CRCs catch changed data.
        #[test]
        fn damaged_npz_files(mutations in prop::collection::vec(mutation(), 1..4), deflate: bool) {
            let values = [1.5_f32, -2.0, 3.25, 4.0];
            let data = npy_bytes("<f4", false, &[4], &le_f32(&values));
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.npz");
            let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
            npz(&path, &[("scores.npy", &data)], method);
            let damaged = apply(&std::fs::read(&path).unwrap(), &mutations);
            std::fs::write(&path, damaged).unwrap();
            if let Ok(v) = npy::Npz::open(&path).and_then(|mut z| z.vector("scores")) {
                prop_assert_eq!(v, Array1::from(values.to_vec()));
            }
        }
    }
}
