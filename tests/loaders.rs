//! The file loaders on small files written by the tests themselves: good
//! files decode to the values placed in them, and every malformed file is an
//! `Err` that names the file and says what is wrong.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use oodkit::Error;

mod common;
use common::Xorshift;
use oodkit::datasets::{Split, cifar10, mnist, svhn};

/// The byte offset a `CorruptFile` error points at (`None` for other errors).
fn corrupt_offset(err: &Error) -> Option<u64> {
    match err {
        Error::CorruptFile { offset, .. } => *offset,
        _ => None,
    }
}

// ---------- MNIST (IDX) ----------

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x0803, n, rows, cols] {
        v.extend_from_slice(&u32::to_be_bytes(x));
    }
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x0801, labels.len() as u32] {
        v.extend_from_slice(&u32::to_be_bytes(x));
    }
    v.extend_from_slice(labels);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Three 2x2 images whose pixel k of image n is 10n + k, labelled 7, 0, 9.
fn write_small_mnist(dir: &Path, gzipped: bool) {
    let pixels: Vec<u8> = (0..3u8)
        .flat_map(|n| (0..4u8).map(move |k| 10 * n + k))
        .collect();
    let files = [
        ("t10k-images-idx3-ubyte", idx_images(3, 2, 2, &pixels)),
        ("t10k-labels-idx1-ubyte", idx_labels(&[7, 0, 9])),
    ];
    for (name, bytes) in files {
        if gzipped {
            std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn mnist_reads_plain_and_gzipped_idx_files_alike() {
    for gzipped in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_small_mnist(dir.path(), gzipped);
        let ds = mnist::load(dir.path(), Split::Test).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.input_shape(), [1, 2, 2]);
        assert_eq!(ds.labels().to_vec(), vec![7, 0, 9]);
        assert_eq!(ds.inputs()[[1, 0, 0, 1]], 11.0);
        assert_eq!(ds.inputs()[[2, 0, 1, 1]], 23.0);
        assert_eq!(ds.class_names().unwrap()[7], "7");
    }
}

fn mnist_error_with(images: Vec<u8>, labels: Vec<u8>) -> (Error, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), labels).unwrap();
    let err = mnist::load(dir.path(), Split::Test).unwrap_err();
    let msg = err.to_string();
    (err, msg)
}

#[test]
fn mnist_truncated_image_file_is_an_error_with_offset() {
    let pixels = [0u8; 12 - 3];
    let (err, msg) = mnist_error_with(idx_images(3, 2, 2, &pixels), idx_labels(&[1, 2, 3]));
    match err {
        Error::CorruptFile { path, offset, .. } => {
            assert!(path.ends_with("t10k-images-idx3-ubyte"));
            assert_eq!(offset, Some(16 + 9));
        }
        other => panic!("expected CorruptFile, got {other:?}"),
    }
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn mnist_file_cut_inside_the_header_is_an_error() {
    let (err, msg) = mnist_error_with(vec![0, 0, 8, 3, 0, 0], idx_labels(&[1]));
    assert!(matches!(err, Error::CorruptFile { .. }), "{err:?}");
    assert!(msg.contains("header"), "{msg}");
}

#[test]
fn mnist_wrong_magic_is_an_error() {
    let mut images = idx_images(1, 2, 2, &[0; 4]);
    images[3] = 0x01; // a label file's magic in the image file
    let (_, msg) = mnist_error_with(images, idx_labels(&[1]));
    assert!(msg.contains("magic number 0x00000801"), "{msg}");
    assert!(msg.contains("t10k-images-idx3-ubyte"), "{msg}");
}

#[test]
fn mnist_image_and_label_counts_must_agree() {
    let (err, _) = mnist_error_with(idx_images(2, 2, 2, &[0; 8]), idx_labels(&[1, 2, 3]));
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                left: 2,
                right: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn mnist_trailing_bytes_and_non_digit_labels_are_errors() {
    let (_, msg) = mnist_error_with(idx_images(1, 2, 2, &[0; 5]), idx_labels(&[1]));
    assert!(msg.contains("unexpected bytes"), "{msg}");
    let (err, msg) = mnist_error_with(idx_images(2, 2, 2, &[0; 8]), idx_labels(&[1, 12]));
    assert_eq!(corrupt_offset(&err), Some(9), "{err:?}");
    assert!(msg.contains("label 12"), "{msg}");
}

#[test]
fn mnist_gz_that_is_not_gzip_or_is_cut_short_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), true);
    let path = dir.path().join("t10k-images-idx3-ubyte.gz");
    let good = std::fs::read(&path).unwrap();

    std::fs::write(&path, b"this is not gzip at all").unwrap();
    let msg = mnist::load(dir.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not a gzip file"), "{msg}");

    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let msg = mnist::load(dir.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("damaged or cut short"), "{msg}");
}

#[test]
fn mnist_missing_files_name_the_file_and_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = mnist::load(dir.path(), Split::Train).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingFile { .. }));
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    assert!(msg.contains("download::mnist"), "{msg}");
}

// ---------- CIFAR-10 (binary) ----------

const CLASSES: &str = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072u32).map(|i| (i as u8).wrapping_mul(3).wrapping_add(seed)));
    r
}

fn write_cifar(dir: &Path, test_batch: &[u8]) -> std::path::PathBuf {
    let folder = dir.join(cifar10::FOLDER);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("batches.meta.txt"), CLASSES).unwrap();
    std::fs::write(folder.join("test_batch.bin"), test_batch).unwrap();
    folder
}

#[test]
fn cifar10_decodes_records_into_rgb_planes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = [cifar_record(3, 0), cifar_record(9, 1)].concat();
    write_cifar(dir.path(), &bytes);
    let ds = cifar10::load(dir.path(), Split::Test).unwrap();
    assert_eq!(ds.labels().to_vec(), vec![3, 9]);
    assert_eq!(ds.input_shape(), [3, 32, 32]);
    // Record byte 1 + 1024*ch + 32*row + col is pixel (ch, row, col).
    for (n, seed) in [(0usize, 0u8), (1, 1)] {
        for (ch, row, col) in [(0, 0, 0), (1, 5, 7), (2, 31, 31)] {
            let i = (1024 * ch + 32 * row + col) as u32;
            let expected = (i as u8).wrapping_mul(3).wrapping_add(seed);
            assert_eq!(ds.inputs()[[n, ch, row, col]], f32::from(expected));
        }
    }
    assert_eq!(ds.class_names().unwrap()[3], "cat");
}

#[test]
fn cifar10_partial_record_and_bad_label_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = [cifar_record(1, 0), cifar_record(2, 0)].concat();
    bytes.truncate(3073 + 100);
    write_cifar(dir.path(), &bytes);
    let err = cifar10::load(dir.path(), Split::Test).unwrap_err();
    assert_eq!(corrupt_offset(&err), Some(3073), "{err:?}");
    assert!(err.to_string().contains("test_batch.bin"));

    let bytes = [cifar_record(1, 0), cifar_record(10, 0)].concat();
    write_cifar(dir.path(), &bytes);
    let err = cifar10::load(dir.path(), Split::Test).unwrap_err();
    assert_eq!(corrupt_offset(&err), Some(3073), "{err:?}");
    assert!(err.to_string().contains("label 10"), "{err}");

    write_cifar(dir.path(), &[]);
    let err = cifar10::load(dir.path(), Split::Test).unwrap_err();
    assert!(err.to_string().contains("no record"), "{err}");
}

#[test]
fn cifar10_needs_the_class_names_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = write_cifar(dir.path(), &cifar_record(0, 0));
    std::fs::write(folder.join("batches.meta.txt"), "airplane\nautomobile\n").unwrap();
    let msg = cifar10::load(dir.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("2 class names"), "{msg}");
    std::fs::remove_file(folder.join("batches.meta.txt")).unwrap();
    let msg = cifar10::load(dir.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("batches.meta.txt") && msg.contains("download::cifar10"),
        "{msg}"
    );
}

// ---------- SVHN (MATLAB v5) ----------

/// A data element: tag (type, byte count), then the bytes padded to 8.
fn mat_element(data_type: u32, bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&data_type.to_le_bytes());
    v.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    v.extend_from_slice(bytes);
    v.resize(v.len().div_ceil(8) * 8, 0);
    v
}

/// A numeric miMATRIX element: flags (class), dimensions, name, real part.
fn mat_matrix(name: &str, class: u32, dims: &[i32], data_type: u32, data: &[u8]) -> Vec<u8> {
    let mut body = mat_element(6, &[class.to_le_bytes(), 0u32.to_le_bytes()].concat());
    let dims: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
    body.extend(mat_element(5, &dims));
    body.extend(mat_element(1, name.as_bytes()));
    body.extend(mat_element(data_type, data));
    mat_element(14, &body)
}

/// A MATLAB v5 file: 128-byte header (text, subsystem offset, version, "IM").
fn mat_file(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut header =
        format!("{:<116}", "MATLAB 5.0 MAT-file, written by oodkit's tests").into_bytes();
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&0x0100u16.to_le_bytes());
    header.extend_from_slice(b"IM");
    let mut v = header;
    for e in elements {
        v.extend_from_slice(e);
    }
    v
}

const MX_DOUBLE: u32 = 6;
const MX_UINT8: u32 = 9;
const MI_UINT8: u32 = 2;
const MI_DOUBLE: u32 = 9;

/// The value placed at X(row, col, ch, n).
fn svhn_pixel(r: usize, c: usize, ch: usize, n: usize) -> u8 {
    ((r * 7 + c * 3 + ch * 11 + n * 13) % 256) as u8
}

fn svhn_file(n: usize, labels: &[f64]) -> Vec<u8> {
    // Column-major: row varies fastest, then column, channel, sample.
    let mut x = Vec::with_capacity(32 * 32 * 3 * n);
    for s in 0..n {
        for ch in 0..3 {
            for c in 0..32 {
                for r in 0..32 {
                    x.push(svhn_pixel(r, c, ch, s));
                }
            }
        }
    }
    let y: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    mat_file(&[
        mat_matrix("X", MX_UINT8, &[32, 32, 3, n as i32], MI_UINT8, &x),
        mat_matrix("y", MX_DOUBLE, &[labels.len() as i32, 1], MI_DOUBLE, &y),
    ])
}

#[test]
fn svhn_maps_label_10_to_digit_0_and_reads_column_major_pixels() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("test_32x32.mat"),
        svhn_file(3, &[10.0, 3.0, 9.0]),
    )
    .unwrap();
    let ds = svhn::load(dir.path(), Split::Test).unwrap();
    assert_eq!(ds.labels().to_vec(), vec![0, 3, 9]);
    assert_eq!(ds.input_shape(), [3, 32, 32]);
    for n in 0..3 {
        for (ch, r, c) in [(0, 0, 0), (0, 1, 0), (0, 0, 1), (1, 5, 9), (2, 31, 30)] {
            assert_eq!(
                ds.inputs()[[n, ch, r, c]],
                f32::from(svhn_pixel(r, c, ch, n)),
                "pixel (n={n}, ch={ch}, row={r}, col={c})"
            );
        }
    }
}

#[test]
fn svhn_bad_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train_32x32.mat");

    std::fs::write(&path, svhn_file(2, &[1.0, 11.0])).unwrap();
    let msg = svhn::load(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("y[1] = 11"), "{msg}");

    std::fs::write(&path, svhn_file(2, &[1.0])).unwrap();
    let err = svhn::load(dir.path(), Split::Train).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                left: 2,
                right: 1,
                ..
            }
        ),
        "{err:?}"
    );

    let good = svhn_file(2, &[1.0, 2.0]);
    std::fs::write(&path, &good[..good.len() - 2000]).unwrap();
    let err = svhn::load(dir.path(), Split::Train).unwrap_err();
    assert!(matches!(err, Error::CorruptFile { .. }), "{err:?}");

    std::fs::write(&path, b"not a mat file").unwrap();
    let err = svhn::load(dir.path(), Split::Train).unwrap_err();
    assert!(matches!(err, Error::CorruptFile { .. }), "{err:?}");

    let x = vec![0u8; 16 * 16 * 3];
    let wrong_size = mat_file(&[
        mat_matrix("X", MX_UINT8, &[16, 16, 3, 1], MI_UINT8, &x),
        mat_matrix("y", MX_DOUBLE, &[1, 1], MI_DOUBLE, &1.0f64.to_le_bytes()),
    ]);
    std::fs::write(&path, wrong_size).unwrap();
    let msg = svhn::load(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[16, 16, 3, 1]"), "{msg}");

    std::fs::remove_file(&path).unwrap();
    let msg = svhn::load(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("train_32x32.mat") && msg.contains("download::svhn"),
        "{msg}"
    );
}

// ---------- Mutations: every parser on cut and flipped files ----------

/// Counts this thread's live and peak bytes, so a load's allocations can
/// be held against the file's size while other tests run in parallel.
struct PerThread;

thread_local! {
    static LIVE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

unsafe impl std::alloc::GlobalAlloc for PerThread {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = LIVE.try_with(|live| {
            live.set(live.get() + layout.size());
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
        });
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(layout.size())));
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: PerThread = PerThread;

/// `f`'s result and the peak of this thread's live bytes above the start.
fn with_peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(start));
    let out = f();
    (out, PEAK.with(|p| p.get()).saturating_sub(start))
}

/// The mutants of `good`: cut at every offset of its first `header` bytes
/// and at 40 random offsets after, and 200 single-bit flips.
fn mutants(good: &[u8], header: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Xorshift(seed);
    let mut out: Vec<Vec<u8>> = (0..header.min(good.len()))
        .map(|cut| good[..cut].to_vec())
        .collect();
    for _ in 0..40 {
        out.push(good[..rng.below(good.len())].to_vec());
    }
    for _ in 0..200 {
        let mut flipped = good.to_vec();
        let at = rng.below(flipped.len());
        flipped[at] ^= 1 << rng.below(8);
        out.push(flipped);
    }
    out
}

/// Writes each mutant of `good` to `path` and loads it with `load`: an
/// error, or a dataset whose size the file justifies. `cut_is_error`: a
/// strictly shorter file must be refused (every byte of these formats is
/// accounted for).
fn survives_mutation(
    path: &Path,
    good: &[u8],
    header: usize,
    load: impl Fn() -> oodkit::Result<oodkit::OodDataset>,
    expected_len: usize,
) {
    for (i, bytes) in mutants(good, header, 0x5eed ^ good.len() as u64)
        .into_iter()
        .enumerate()
    {
        std::fs::write(path, &bytes).unwrap();
        let (result, peak) = with_peak(&load);
        // The decoded f32 images are 4 bytes a pixel byte; the rest is
        // small. A header that announces more than the file holds must not
        // be believed.
        assert!(
            peak <= 16 * good.len() + (1 << 20),
            "mutant {i}: {peak} bytes allocated for a file of {}",
            bytes.len()
        );
        match result {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(ds) => {
                assert!(bytes.len() == good.len(), "mutant {i}: a cut file loaded");
                assert_eq!(ds.len(), expected_len, "mutant {i}");
                assert!(ds.inputs().iter().all(|v| v.is_finite()), "mutant {i}");
            }
        }
    }
}

#[test]
fn mnist_idx_and_gz_survive_every_cut_and_flip() {
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), false);
    let images = dir.path().join("t10k-images-idx3-ubyte");
    let good = std::fs::read(&images).unwrap();
    let load = || mnist::load(dir.path(), Split::Test);
    survives_mutation(&images, &good, 16, load, 3);
    std::fs::write(&images, &good).unwrap();
    let labels = dir.path().join("t10k-labels-idx1-ubyte");
    let good = std::fs::read(&labels).unwrap();
    survives_mutation(&labels, &good, 8, load, 3);

    // Gzipped: a flip under the CRC is an error, never silently read.
    let dir = tempfile::tempdir().unwrap();
    write_small_mnist(dir.path(), true);
    let images = dir.path().join("t10k-images-idx3-ubyte.gz");
    let good = std::fs::read(&images).unwrap();
    let load = || mnist::load(dir.path(), Split::Test);
    let reference = load().unwrap();
    for bytes in mutants(&good, good.len().min(24), 3) {
        std::fs::write(&images, &bytes).unwrap();
        if let Ok(ds) = load() {
            // Only a flip the format ignores (e.g. in the header's mtime).
            assert_eq!(ds.inputs(), reference.inputs());
        }
    }
}

#[test]
fn cifar10_batches_survive_every_cut_and_flip() {
    let dir = tempfile::tempdir().unwrap();
    let good = [cifar_record(3, 0), cifar_record(9, 1)].concat();
    let folder = write_cifar(dir.path(), &good);
    let path = folder.join("test_batch.bin");
    survives_mutation(
        &path,
        &good,
        8,
        || cifar10::load(dir.path(), Split::Test),
        2,
    );
}

#[test]
fn svhn_mat_files_survive_every_cut_and_flip() {
    let dir = tempfile::tempdir().unwrap();
    let good = svhn_file(2, &[1.0, 2.0]);
    let path = dir.path().join("test_32x32.mat");
    survives_mutation(&path, &good, 200, || svhn::load(dir.path(), Split::Test), 2);
    // A cut file says it is truncated.
    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    let message = svhn::load(dir.path(), Split::Test).unwrap_err().to_string();
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn an_idx_header_announcing_absurd_sizes_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (n, rows, cols) in [
        (u32::MAX, u32::MAX, u32::MAX),
        (3, u32::MAX, 2),
        (u32::MAX, 1, 1),
    ] {
        std::fs::write(
            dir.path().join("t10k-images-idx3-ubyte"),
            idx_images(n, rows, cols, &[0; 12]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            idx_labels(&[1, 2, 3]),
        )
        .unwrap();
        let (result, peak) = with_peak(|| mnist::load(dir.path(), Split::Test));
        let err = result.unwrap_err();
        assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
        assert!(peak < 1 << 20, "{peak} bytes for a 28-byte file");
    }
}
