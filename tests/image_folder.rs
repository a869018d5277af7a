//! Image folders: the ImageFolder layout and flat folders, PNG and JPEG,
//! grey and RGB, the sizes (resize, resize-and-crop, centre crop), lazy
//! batches with shuffling, a detector scoring a folder, and the bad cases
//! (corrupt image, empty folders, mixed sizes), each an error naming the
//! path.
#![cfg(feature = "images")]

use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use ndarray::{Array2, ArrayView4, Axis};
use oodkit::Error;
use oodkit::datasets::image_folder::{Channels, Fit, ImageFolder};
use oodkit::datasets::{BatchSource, PrepareConfig};
use oodkit::detectors::{Detector, Mls};

/// Writes a `w`x`h` grey image whose pixel (x, y) is `f(x, y)`.
fn grey(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    GrayImage::from_fn(w, h, |x, y| Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

/// The error the first batch of `source` is.
fn first_error(source: &dyn BatchSource) -> Error {
    match source.batches().unwrap().next() {
        Some(Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn all_batches(source: &dyn BatchSource) -> Vec<oodkit::Batch> {
    source.batches().unwrap().map(|b| b.unwrap()).collect()
}

#[test]
fn the_imagefolder_layout_gives_sorted_classes_and_channel_planes() {
    let root = tempfile::tempdir().unwrap();
    for class in ["zebra", "ant"] {
        std::fs::create_dir(root.path().join(class)).unwrap();
    }
    // A pure red PNG and a JPEG under "ant", a grey PNG under "zebra", and
    // a file that is no image (left alone).
    RgbImage::from_pixel(3, 2, Rgb([255, 0, 0]))
        .save(root.path().join("ant/red.png"))
        .unwrap();
    RgbImage::from_pixel(3, 2, Rgb([0, 0, 255]))
        .save(root.path().join("ant/blue.jpg"))
        .unwrap();
    grey(&root.path().join("zebra/g.png"), 3, 2, |x, y| {
        (10 * x + y) as u8
    });
    std::fs::write(root.path().join("zebra/notes.txt"), "not an image").unwrap();

    let folder = ImageFolder::open(root.path()).unwrap();
    assert_eq!(folder.class_names(), ["ant", "zebra"]);
    assert_eq!(folder.len(), 3);
    let labels: Vec<_> = folder.files().iter().map(|(_, l)| *l).collect();
    assert_eq!(labels, vec![Some(0), Some(0), Some(1)]);
    let batches = all_batches(&folder.prepare(&PrepareConfig::new(8)).unwrap());
    let batch = &batches[0];
    assert_eq!(batch.inputs.shape(), &[3, 3, 2, 3]);
    assert_eq!(batch.labels.as_ref().unwrap().to_vec(), vec![0, 0, 1]);
    // "blue.jpg" sorts first: blue plane high (JPEG is lossy), red low.
    assert!(batch.inputs[[0, 2, 0, 0]] > 240.0 && batch.inputs[[0, 0, 0, 0]] < 15.0);
    // "red.png": exactly (255, 0, 0) everywhere.
    let red = batch.inputs.index_axis(Axis(0), 1);
    assert!(red.index_axis(Axis(0), 0).iter().all(|&v| v == 255.0));
    assert!(red.index_axis(Axis(0), 1).iter().all(|&v| v == 0.0));
    // The grey image, as RGB: all three planes equal, pixel (x, y) at
    // [y, x].
    let g = batch.inputs.index_axis(Axis(0), 2);
    assert_eq!(g[[0, 1, 2]], 21.0);
    assert_eq!(g[[1, 1, 2]], 21.0);

    // Grey: one plane; without labels when asked.
    let folder = folder.channels(Channels::Grey);
    let unlabelled = PrepareConfig::new(8).with_labels(false);
    let batch = &all_batches(&folder.prepare(&unlabelled).unwrap())[0];
    assert_eq!(batch.inputs.shape(), &[3, 1, 2, 3]);
    assert_eq!(batch.inputs[[2, 0, 1, 2]], 21.0);
    assert!(batch.labels.is_none());
}

#[test]
fn flat_folders_are_unlabelled_and_batches_are_lazy_and_shuffled() {
    let root = tempfile::tempdir().unwrap();
    for i in 0..5u8 {
        grey(&root.path().join(format!("{i}.png")), 2, 2, |_, _| 40 * i);
    }
    let folder = ImageFolder::open(root.path())
        .unwrap()
        .channels(Channels::Grey);
    assert!(!folder.is_labelled());
    let prepared = folder.prepare(&PrepareConfig::new(2)).unwrap();
    assert_eq!(prepared.num_batches(), Some(3));
    let batches = all_batches(&prepared);
    let sizes: Vec<_> = batches.iter().map(|b| b.len()).collect();
    assert_eq!(sizes, vec![2, 2, 1]);
    assert!(batches.iter().all(|b| b.labels.is_none()));
    let values: Vec<f32> = batches
        .iter()
        .flat_map(|b| {
            b.inputs
                .index_axis(Axis(3), 0)
                .index_axis(Axis(2), 0)
                .to_owned()
        })
        .collect();
    assert_eq!(values, vec![0.0, 40.0, 80.0, 120.0, 160.0]);

    // Shuffled: a permutation per pass, the same for the same pass.
    let shuffled = folder.prepare(&PrepareConfig::new(5).shuffle(7)).unwrap();
    let pass = |p| {
        let b = shuffled
            .batches_for_pass(p)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        b.inputs.iter().step_by(4).copied().collect::<Vec<f32>>()
    };
    let (first, again, second) = (pass(0), pass(0), pass(1));
    assert_eq!(first, again);
    let mut sorted = first.clone();
    sorted.sort_by(f32::total_cmp);
    assert_eq!(sorted, values);
    assert_ne!(first, second);

    // A preprocess function applies, as for any prepared dataset.
    let scaled = folder
        .prepare(&PrepareConfig::new(5).preprocess(|mut b| {
            b.inputs /= 255.0;
            Ok(b)
        }))
        .unwrap();
    let b = &all_batches(&scaled)[0];
    assert!(b.inputs.iter().all(|&v| (0.0..=1.0).contains(&v)));
}

#[test]
fn images_are_brought_to_one_size() {
    let root = tempfile::tempdir().unwrap();
    // 6 wide, 4 high, pixel = 10 x + y; and a 3x3 one.
    grey(&root.path().join("a.png"), 6, 4, |x, y| (10 * x + y) as u8);
    grey(&root.path().join("b.png"), 3, 3, |_, _| 7);
    let folder = ImageFolder::open(root.path())
        .unwrap()
        .channels(Channels::Grey);
    // Without a size, different sizes are an error naming the file and
    // saying what to do.
    let prepared = folder.prepare(&PrepareConfig::new(2)).unwrap();
    let err = first_error(&prepared);
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("b.png") && err.to_string().contains("fit"),
        "{err}"
    );

    let sized = |fit| {
        let f = folder.clone().fit(fit).unwrap();
        all_batches(&f.prepare(&PrepareConfig::new(2)).unwrap()).remove(0)
    };
    assert_eq!(sized(Fit::Resize(2, 5)).inputs.shape(), &[2, 1, 2, 5]);
    assert_eq!(sized(Fit::ResizeCrop(3, 3)).inputs.shape(), &[2, 1, 3, 3]);
    // The centre 2x2 of a.png: x in 2..4, y in 1..3, exactly.
    let crop = sized(Fit::CentreCrop(2, 2)).inputs;
    let centre: Vec<f32> = crop.index_axis(Axis(0), 0).iter().copied().collect();
    assert_eq!(centre, vec![21.0, 31.0, 22.0, 32.0]);
    // Cropping more than an image has is an error naming it.
    let cropped = folder.clone().fit(Fit::CentreCrop(4, 4)).unwrap();
    let err = first_error(&cropped.prepare(&PrepareConfig::new(2)).unwrap());
    assert!(err.to_string().contains("b.png"), "{err}");
    assert!(folder.clone().fit(Fit::Resize(0, 3)).is_err());
}

#[test]
fn a_detector_scores_a_folder() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("digits")).unwrap();
    for i in 0..7u8 {
        grey(
            &root.path().join(format!("digits/{i}.png")),
            4,
            4,
            |_, _| 30 * i,
        );
    }
    let folder = ImageFolder::open(root.path())
        .unwrap()
        .channels(Channels::Grey);
    // logits = (mean pixel / 255, 0.5)
    let model = oodkit::model::from_fn(|x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let m = x.to_shape((n, 16))?.mean_axis(Axis(1)).unwrap_or_default() / 255.0;
        Ok(Array2::from_shape_fn((n, 2), |(i, k)| {
            if k == 0 { m[i] } else { 0.5 }
        }))
    });
    let scorer = Mls::new().fit(&model, None).unwrap();
    let out = scorer
        .score(&folder.prepare(&PrepareConfig::new(3)).unwrap())
        .unwrap();
    assert_eq!(out.len(), 7);
    assert_eq!(out.labels.unwrap().to_vec(), vec![0; 7]);
    for (i, s) in out.scores.iter().enumerate() {
        let expected = -(30.0 * i as f32 / 255.0).max(0.5);
        assert!((s - expected).abs() < 1e-6, "{i}: {s} vs {expected}");
    }
}

#[test]
fn bad_folders_and_images_are_errors_naming_the_path() {
    let root = tempfile::tempdir().unwrap();
    // Missing, empty.
    let err = ImageFolder::open(root.path().join("nothing")).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
    let err = ImageFolder::open(root.path()).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
    // A class folder without images.
    std::fs::create_dir_all(root.path().join("a")).unwrap();
    std::fs::create_dir_all(root.path().join("b")).unwrap();
    grey(&root.path().join("a/1.png"), 2, 2, |_, _| 0);
    let err = ImageFolder::open(root.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{}", root.path().join("b").display())),
        "{err}"
    );
    // An image beside class folders.
    grey(&root.path().join("b/1.png"), 2, 2, |_, _| 0);
    grey(&root.path().join("stray.png"), 2, 2, |_, _| 0);
    let err = ImageFolder::open(root.path()).unwrap_err();
    assert!(err.to_string().contains("stray.png"), "{err}");
    std::fs::remove_file(root.path().join("stray.png")).unwrap();

    // A corrupt image: an error naming it, or skipped and listed.
    std::fs::write(root.path().join("b/2.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let folder = ImageFolder::open(root.path()).unwrap();
    let prepared = folder.prepare(&PrepareConfig::new(8)).unwrap();
    let err = first_error(&prepared);
    assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
    assert!(err.to_string().contains("2.png"), "{err}");
    let lenient = folder.skip_unreadable(true);
    let prepared = lenient.prepare(&PrepareConfig::new(8)).unwrap();
    let batches = all_batches(&prepared);
    assert_eq!(batches[0].len(), 2);
    assert_eq!(prepared.skipped(), vec![root.path().join("b/2.png")]);
    // No OOD labels in a folder.
    let err = lenient
        .prepare(&PrepareConfig::new(8).with_ood_labels(true))
        .unwrap_err();
    assert!(matches!(err, Error::MissingInput { .. }), "{err}");
    assert!(lenient.prepare(&PrepareConfig::new(0)).is_err());
}

/// A `side` x `side` black grey PNG, streamed row by row (a few hundred KB
/// on disk, whatever its pixel count).
fn black_png(path: &Path, side: u32) {
    use std::io::Write;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().unwrap();
    let mut stream = writer.stream_writer().unwrap();
    let row = vec![0u8; side as usize];
    for _ in 0..side {
        stream.write_all(&row).unwrap();
    }
    stream.finish().unwrap();
}

/// An image's size is read from its header and held against the budget
/// for one image before its pixels are decoded; a --size that could never
/// fit is refused before any image is read.
#[test]
fn images_beyond_the_budget_are_errors_before_they_are_decoded() {
    let root = tempfile::tempdir().unwrap();
    // 20000 x 20000: 400 MB decoded, 4.8 GB as RGB f32, in a small file.
    black_png(&root.path().join("huge.png"), 20_000);
    assert!(
        std::fs::metadata(root.path().join("huge.png"))
            .unwrap()
            .len()
            < 4 << 20
    );
    let folder = ImageFolder::open(root.path()).unwrap();
    let prepared = folder.prepare(&PrepareConfig::new(4)).unwrap();
    let err = first_error(&prepared);
    let message = err.to_string();
    assert!(matches!(err, Error::InvalidParameter { .. }), "{err}");
    assert!(
        message.contains("huge.png") && message.contains("20000x20000"),
        "{message}"
    );
    assert!(message.contains("--max-image-mb"), "{message}");
    // Not unreadable: skipping unreadable images does not hide it.
    let lenient = folder.clone().skip_unreadable(true);
    assert!(
        first_error(&lenient.prepare(&PrepareConfig::new(4)).unwrap())
            .to_string()
            .contains("huge.png")
    );
    // Resized to 8x8 it needs its 400 MB of decoded pixels (and little
    // more): read under the default budget, refused under 256 MiB.
    let fitted = folder
        .fit(Fit::Resize(8, 8))
        .unwrap()
        .channels(Channels::Grey);
    let batches = all_batches(&fitted.prepare(&PrepareConfig::new(4)).unwrap());
    assert_eq!(batches[0].inputs.shape(), &[1, 1, 8, 8]);
    assert!(batches[0].inputs.iter().all(|&v| v == 0.0));
    let tight = fitted.image_budget(256 << 20);
    let err = first_error(&tight.prepare(&PrepareConfig::new(4)).unwrap());
    assert!(err.to_string().contains("huge.png"), "{err}");
    std::fs::remove_file(root.path().join("huge.png")).unwrap();

    // The budget, by hand: a 64x64 grey image decodes to 4096 bytes, and
    // takes 4096 x 5 more as 8-bit and f32 planes.
    grey(&root.path().join("small.png"), 64, 64, |x, _| x as u8);
    let folder = ImageFolder::open(root.path())
        .unwrap()
        .channels(Channels::Grey);
    let tight = folder.clone().image_budget(4096 * 6 - 1);
    let err = first_error(&tight.prepare(&PrepareConfig::new(4)).unwrap());
    assert!(err.to_string().contains("64x64"), "{err}");
    let enough = folder.clone().image_budget(4096 * 6);
    let batches = all_batches(&enough.prepare(&PrepareConfig::new(4)).unwrap());
    assert_eq!(batches[0].inputs.shape(), &[1, 1, 64, 64]);
    assert_eq!(batches[0].inputs[[0, 0, 3, 5]], 5.0);

    // A size no image could take: refused when the batches are prepared.
    let absurd = folder.fit(Fit::Resize(100_000, 100_000)).unwrap();
    let err = absurd.prepare(&PrepareConfig::new(4)).unwrap_err();
    assert!(err.to_string().contains("--size"), "{err}");
}

/// A class's images in nested folders are taken, in torchvision's order
/// (folder by folder, by the path's characters); a link back up does not
/// loop; a class folder whose name is not UTF-8 is an error.
#[test]
fn nested_folders_are_part_of_their_class() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in ["cats/sub/deeper", "cats/sub-x", "dogs"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    for file in [
        "cats/z.png",
        "cats/sub/b.png",
        "cats/sub/a.png",
        "cats/sub/deeper/c.png",
        "cats/sub-x/d.png",
        "dogs/e.png",
    ] {
        grey(&r.join(file), 2, 2, |_, _| 1);
    }
    std::os::unix::fs::symlink(r.join("cats"), r.join("cats/sub/loop")).unwrap();
    let folder = ImageFolder::open(r).unwrap();
    let files: Vec<String> = folder
        .files()
        .iter()
        .map(|(p, l)| format!("{}:{}", p.strip_prefix(r).unwrap().display(), l.unwrap()))
        .collect();
    // sorted(os.walk("cats")): cats, cats/sub, cats/sub-x, cats/sub/deeper.
    assert_eq!(
        files,
        [
            "cats/z.png:0",
            "cats/sub/a.png:0",
            "cats/sub/b.png:0",
            "cats/sub-x/d.png:0",
            "cats/sub/deeper/c.png:0",
            "dogs/e.png:1"
        ]
    );
    // A class folder named in Latin-1 bytes.
    use std::os::unix::ffi::OsStrExt;
    let latin1 = r.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&latin1).unwrap();
    grey(&latin1.join("f.png"), 2, 2, |_, _| 1);
    let err = ImageFolder::open(r).unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
}
