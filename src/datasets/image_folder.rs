//! Folders of images (feature `images`): torchvision's ImageFolder layout
//! (`root/<class>/<image>`, classes sorted by name) or a flat folder of
//! unlabelled images (an OOD set), decoded lazily batch by batch.
//!
//! ```
//! use oodkit::datasets::{BatchSource, PrepareConfig};
//! use oodkit::datasets::image_folder::{Channels, ImageFolder};
//!
//! // Two classes of one 4x4 grey image each.
//! let root = tempfile::tempdir()?;
//! for (class, value) in [("cats", 10u8), ("dogs", 200)] {
//!     std::fs::create_dir(root.path().join(class))?;
//!     image::GrayImage::from_pixel(4, 4, image::Luma([value]))
//!         .save(root.path().join(class).join("a.png"))?;
//! }
//! let folder = ImageFolder::open(root.path())?.channels(Channels::Grey);
//! assert_eq!(folder.class_names(), ["cats", "dogs"]);
//! let batches = folder.prepare(&PrepareConfig::new(8))?;
//! let batch = batches.batches()?.next().unwrap()?;
//! assert_eq!(batch.inputs.shape(), &[2, 1, 4, 4]);
//! assert_eq!(batch.inputs[[1, 0, 0, 0]], 200.0); // pixels in 0..=255
//! assert_eq!(batch.labels.unwrap().to_vec(), vec![0, 1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView, ImageDecoder};
use ndarray::{Array1, Array4};

use super::{BatchIter, BatchSource, PrepareConfig};
use crate::batch::Batch;
use crate::error::{Error, Result};

/// The extensions read (case-insensitive); other files are left alone.
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The channels each image is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Channels {
    /// One channel (luma).
    Grey,
    /// Three channels, red, green, blue.
    #[default]
    Rgb,
}

impl Channels {
    fn count(self) -> usize {
        match self {
            Channels::Grey => 1,
            Channels::Rgb => 3,
        }
    }
}

/// How images are brought to one size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fit {
    /// Resized to exactly (height, width), the aspect ratio not kept.
    Resize(u32, u32),
    /// The shorter side resized to fit (height, width), the aspect ratio
    /// kept, then the centre cropped to it (torchvision's
    /// `Resize` + `CenterCrop`).
    ResizeCrop(u32, u32),
    /// The centre (height, width) cut out; an image smaller than that is an
    /// error.
    CentreCrop(u32, u32),
}

/// A folder of images: labelled by class subfolder, or unlabelled.
///
/// Only the file list is read when it is opened; images are decoded when
/// their batch is built, so memory stays bounded by the batch. Pixels come
/// as `f32` in 0..=255, `(N, C, H, W)`, like the other loaders; scale or
/// normalise them in [`PrepareConfig::preprocess`] (e.g.
/// [`imagenet_preprocess`](super::transforms::imagenet_preprocess)).
/// Without a [`Fit`], every image must have the size of the first.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<(PathBuf, Option<i64>)>,
    class_names: Vec<String>,
    channels: Channels,
    fit: Option<Fit>,
    skip_unreadable: bool,
    image_budget: u64,
}

impl ImageFolder {
    /// The images under `root`: with class subfolders, one class per
    /// subfolder (sorted by name, labels 0, 1, ...) holding the images in
    /// it and in its own subfolders at any depth (as torchvision's
    /// `ImageFolder` takes them, in its order: folder by folder, each
    /// sorted); without, the images in `root`, unlabelled. Hidden entries
    /// (names starting with `.`) are left out. Errors when `root` is
    /// missing, holds no image, a class folder holds none, images lie
    /// beside class folders, or a class folder's name is not UTF-8 (two
    /// such names could display alike).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let (dirs, images) = listing(root)?;
        let (files, class_names) = if dirs.is_empty() {
            (images.into_iter().map(|p| (p, None)).collect(), Vec::new())
        } else {
            if let Some(stray) = images.first() {
                return Err(Error::corrupt(
                    stray,
                    None,
                    "an image beside class folders: in the ImageFolder layout every image \
                     lies in its class's folder (root/<class>/<image>)",
                ));
            }
            let mut files = Vec::new();
            let mut names = Vec::new();
            for (label, dir) in dirs.iter().enumerate() {
                let images = images_within(dir)?;
                if images.is_empty() {
                    return Err(Error::Empty {
                        what: format!("class folder {}", dir.display()),
                        hint: "every class folder needs at least one .png or .jpg image".into(),
                    });
                }
                files.extend(images.into_iter().map(|p| (p, Some(label as i64))));
                let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                    Error::InvalidParameter {
                        name: "class folder",
                        value: format!("{:?}", dir.display().to_string()),
                        reason: "its name is not valid UTF-8, so it cannot be shown as the \
                                 class's name (two such names could look the same): rename \
                                 the folder"
                            .into(),
                    }
                })?;
                names.push(name.to_owned());
            }
            (files, names)
        };
        if files.is_empty() {
            return Err(Error::Empty {
                what: format!("image folder {}", root.display()),
                hint: "it holds no .png or .jpg image (nor class folders of them)".into(),
            });
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            files,
            class_names,
            channels: Channels::default(),
            fit: None,
            skip_unreadable: false,
            image_budget: Self::DEFAULT_IMAGE_BUDGET,
        })
    }

    /// The default of [`ImageFolder::image_budget`]: 1 GiB.
    pub const DEFAULT_IMAGE_BUDGET: u64 = 1 << 30;

    /// The most memory one image may take while it is decoded, resized and
    /// converted to `f32` (default [`ImageFolder::DEFAULT_IMAGE_BUDGET`],
    /// room for a 50-megapixel photograph). An image's size is read from
    /// its header first: one that would need more is an error naming it
    /// before its pixels are decoded (a PNG of a few hundred KB can hold
    /// 20000 x 20000 black pixels). A batch takes at most its images'
    /// `f32` values (twice that while it grows), so memory stays near
    /// `batch size x C x H x W x 4` bytes plus one image's budget.
    pub fn image_budget(mut self, bytes: u64) -> Self {
        self.image_budget = bytes;
        self
    }

    /// Converts every image to these channels (default RGB).
    pub fn channels(mut self, channels: Channels) -> Self {
        self.channels = channels;
        self
    }

    /// Brings every image to one size. Errors on a zero side.
    pub fn fit(mut self, fit: Fit) -> Result<Self> {
        let (Fit::Resize(h, w) | Fit::ResizeCrop(h, w) | Fit::CentreCrop(h, w)) = fit;
        if h == 0 || w == 0 {
            return Err(Error::invalid(
                "fit",
                format!("{fit:?}"),
                "height and width must be at least 1",
            ));
        }
        self.fit = Some(fit);
        Ok(self)
    }

    /// Skips images that cannot be decoded instead of failing (default
    /// off); the skipped files are listed by
    /// [`FolderBatches::skipped`]. Batches with a skipped image are
    /// smaller.
    pub fn skip_unreadable(mut self, yes: bool) -> Self {
        self.skip_unreadable = yes;
        self
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image files in order, with their labels (`None` unlabelled).
    pub fn files(&self) -> &[(PathBuf, Option<i64>)] {
        &self.files
    }

    /// The class names (folder names), label `k` the `k`-th; empty when
    /// unlabelled.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there is no image (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether the images carry class labels (the ImageFolder layout).
    pub fn is_labelled(&self) -> bool {
        !self.class_names.is_empty()
    }

    /// A re-iterable stream of batches, decoded as they are built, with
    /// `config`'s batch size, shuffling and preprocessing. Class labels
    /// come with a labelled folder when `config` asks for them; a folder
    /// has no OOD labels, so asking for them is an error.
    pub fn prepare(&self, config: &PrepareConfig) -> Result<FolderBatches<'_>> {
        if config.batch_size() == 0 {
            return Err(Error::invalid(
                "batch_size",
                0,
                "a batch holds at least one sample",
            ));
        }
        if config.ood_labels_wanted() {
            return Err(Error::missing(
                "OOD labels (asked for by with_ood_labels)",
                "an image folder has none: score the ID and OOD folders separately",
            ));
        }
        if let Some(Fit::Resize(h, w) | Fit::ResizeCrop(h, w) | Fit::CentreCrop(h, w)) = self.fit {
            let bytes = u64::from(h) * u64::from(w) * self.channels.count() as u64 * 4;
            if bytes > self.image_budget {
                return Err(Error::InvalidParameter {
                    name: "image size",
                    value: format!("{h}x{w}"),
                    reason: format!(
                        "one image of that size takes {} as f32, above the budget of {} for \
                         one image: give a smaller size (--size), or raise the budget \
                         (--max-image-mb; ImageFolder::image_budget)",
                        mib(bytes),
                        mib(self.image_budget)
                    ),
                });
            }
        }
        Ok(FolderBatches {
            folder: self,
            config: config.clone(),
            skipped: Mutex::new(Vec::new()),
        })
    }

    /// One image as `(C, H, W)` values in 0..=255: its shape and planes.
    /// Its size is checked against the budget from its header, before its
    /// pixels are decoded.
    fn decode(&self, path: &Path) -> Result<([usize; 3], Vec<f32>)> {
        let corrupt = |e: image::ImageError| {
            Error::corrupt(path, None, format!("cannot decode the image: {e}"))
        };
        let mut reader = image::ImageReader::open(path)
            .map_err(|e| Error::io(path, e))?
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(self.image_budget);
        reader.limits(limits);
        let decoder = reader.into_decoder().map_err(|e| match e {
            image::ImageError::Limits(_) => self.over_budget(path, None),
            e => corrupt(e),
        })?;
        let (iw, ih) = decoder.dimensions();
        let c = self.channels.count() as u64;
        let (oh, ow) = match self.fit {
            None => (u64::from(ih), u64::from(iw)),
            Some(Fit::Resize(h, w) | Fit::ResizeCrop(h, w) | Fit::CentreCrop(h, w)) => {
                (u64::from(h), u64::from(w))
            }
        };
        // Decoded pixels, a resize's f32 rows (up to 4 channels), the
        // 8-bit channels asked for, their f32 planes.
        let resize = if self.fit.is_some() {
            u64::from(iw) * oh * 16
        } else {
            0
        };
        let need = decoder
            .total_bytes()
            .saturating_add(resize)
            .saturating_add(oh * ow * c * 5);
        if need > self.image_budget {
            return Err(self.over_budget(path, Some((iw, ih, need))));
        }
        let image = DynamicImage::from_decoder(decoder).map_err(|e| match e {
            image::ImageError::Limits(_) => self.over_budget(path, Some((iw, ih, need))),
            e => corrupt(e),
        })?;
        let image = self.fitted(image, path)?;
        let (w, h) = image.dimensions();
        let (w, h, c) = (w as usize, h as usize, c as usize);
        let interleaved = match self.channels {
            Channels::Grey => image.into_luma8().into_raw(),
            Channels::Rgb => image.into_rgb8().into_raw(),
        };
        // Interleaved (H, W, C) to planes (C, H, W).
        let mut planes = vec![0.0_f32; c * h * w];
        for (pixel, values) in interleaved.chunks_exact(c).enumerate() {
            for (channel, &v) in values.iter().enumerate() {
                planes[channel * h * w + pixel] = f32::from(v);
            }
        }
        Ok(([c, h, w], planes))
    }

    /// The error for an image above the budget (its size and the memory
    /// it needs, when its header said).
    fn over_budget(&self, path: &Path, size: Option<(u32, u32, u64)>) -> Error {
        let what = match size {
            Some((w, h, need)) => format!("is {w}x{h} pixels and needs {} to decode", mib(need)),
            None => "needs more memory to decode".to_owned(),
        };
        Error::InvalidParameter {
            name: "image",
            value: path.display().to_string(),
            reason: format!(
                "{what}, above the budget of {} for one image: shrink it, or raise the \
                 budget (--max-image-mb; ImageFolder::image_budget)",
                mib(self.image_budget)
            ),
        }
    }

    fn fitted(&self, image: DynamicImage, path: &Path) -> Result<DynamicImage> {
        Ok(match self.fit {
            None => image,
            Some(Fit::Resize(h, w)) => image.resize_exact(w, h, FilterType::Triangle),
            Some(Fit::ResizeCrop(h, w)) => image.resize_to_fill(w, h, FilterType::Triangle),
            Some(Fit::CentreCrop(h, w)) => {
                let (iw, ih) = image.dimensions();
                if iw < w || ih < h {
                    return Err(Error::ShapeMismatch {
                        what: format!("image {}", path.display()),
                        expected: format!("at least {h}x{w} (height x width) to crop"),
                        found: format!("{ih}x{iw}"),
                    });
                }
                image.crop_imm((iw - w) / 2, (ih - h) / 2, w, h)
            }
        })
    }
}

/// The images in `dir` and in its subfolders at any depth: folder by
/// folder (sorted by path), each folder's images sorted by name, as
/// torchvision's `ImageFolder` walks a class. A folder reached twice
/// through links is read once (no endless loop).
fn images_within(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut folders = vec![dir.to_path_buf()];
    let mut seen = std::collections::HashSet::new();
    let mut walked = Vec::new();
    while let Some(folder) = folders.pop() {
        let real = fs::canonicalize(&folder).map_err(|e| Error::io(&folder, e))?;
        if !seen.insert(real) {
            continue;
        }
        let (dirs, images) = listing(&folder)?;
        walked.push((folder, images));
        folders.extend(dirs);
    }
    // By the path's bytes, as Python sorts its strings ("a/b-c" before
    // "a/b/d"), not component by component.
    walked.sort_by(|a, b| {
        a.0.as_os_str()
            .as_encoded_bytes()
            .cmp(b.0.as_os_str().as_encoded_bytes())
    });
    Ok(walked.into_iter().flat_map(|(_, images)| images).collect())
}

/// `bytes` in MiB, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The subfolders and the image files of `dir`, each sorted by name
/// (hidden entries left out).
fn listing(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    if !dir.is_dir() {
        return Err(Error::MissingFile {
            path: dir.to_path_buf(),
            hint: "give a folder of images, or of class folders of images".into(),
        });
    }
    let (mut dirs, mut images) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref().is_none_or(|n| n.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            dirs.push(path);
        } else if path
            .extension()
            .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        {
            // A pipe or a device named like an image would block or never
            // end when decoded: refused here, before any is read.
            if !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                return Err(Error::InvalidParameter {
                    name: "image",
                    value: path.display().to_string(),
                    reason: "is not a regular file (a pipe, a device or a broken link): remove \
                             it from the folder"
                        .into(),
                });
            }
            images.push(path);
        }
    }
    dirs.sort();
    images.sort();
    Ok((dirs, images))
}

/// The batches of an [`ImageFolder`], decoded as they are iterated: a
/// [`BatchSource`] for every detector.
#[derive(Debug)]
pub struct FolderBatches<'a> {
    folder: &'a ImageFolder,
    config: PrepareConfig,
    skipped: Mutex<Vec<PathBuf>>,
}

impl FolderBatches<'_> {
    /// The files skipped so far because they could not be decoded (with
    /// [`ImageFolder::skip_unreadable`]), each once.
    pub fn skipped(&self) -> Vec<PathBuf> {
        self.skipped
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The batch of the files at `indices`; `None` when every one of them
    /// was skipped.
    fn batch(&self, indices: &[usize]) -> Option<Result<Batch>> {
        self.build(indices).transpose()
    }

    fn build(&self, indices: &[usize]) -> Result<Option<Batch>> {
        let folder = self.folder;
        // The batch grows with the images decoded, never sized from the
        // first one alone: a large first image followed by small ones is
        // an error after one image's memory, not a batch's.
        let mut shape: Option<[usize; 3]> = None;
        let mut values: Vec<f32> = Vec::new();
        let mut labels = Vec::with_capacity(indices.len());
        let mut rows = 0;
        for &i in indices {
            let (path, label) = &folder.files[i];
            let (image_shape, planes) = match folder.decode(path) {
                Ok(image) => image,
                Err(Error::CorruptFile { .. }) if folder.skip_unreadable => {
                    let mut skipped = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
                    if !skipped.contains(path) {
                        skipped.push(path.clone());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let expected = *shape.get_or_insert(image_shape);
            if expected != image_shape {
                let advice = if folder.fit.is_none() {
                    "; give the images one size (--size HxW; ImageFolder::fit)"
                } else {
                    ""
                };
                return Err(Error::ShapeMismatch {
                    what: format!("image {}", path.display()),
                    expected: format!("{expected:?} (C, H, W) like the images before it{advice}"),
                    found: format!("{image_shape:?}"),
                });
            }
            if values.is_empty() {
                // The first image's planes become the batch: no copy.
                values = planes;
                labels.push(label.unwrap_or(0));
                rows += 1;
                continue;
            }
            values
                .try_reserve(planes.len())
                .map_err(|_| Error::InvalidParameter {
                    name: "batch size",
                    value: indices.len().to_string(),
                    reason: format!(
                        "a batch of {expected:?} images does not fit in memory: give a \
                         smaller batch size (--batch-size) or image size (--size)"
                    ),
                })?;
            values.extend_from_slice(&planes);
            labels.push(label.unwrap_or(0));
            rows += 1;
        }
        let Some([c, h, w]) = shape else {
            return Ok(None);
        };
        let inputs = Array4::from_shape_vec((rows, c, h, w), values)?;
        let labelled = folder.is_labelled() && self.config.labels_wanted();
        self.config
            .apply(Batch {
                inputs,
                labels: labelled.then(|| Array1::from(labels)),
                ood_labels: None,
            })
            .map(Some)
    }
}

impl BatchSource for FolderBatches<'_> {
    fn batches(&self) -> Result<BatchIter<'_>> {
        self.batches_for_pass(0)
    }

    fn batches_for_pass(&self, pass: u64) -> Result<BatchIter<'_>> {
        let n = self.folder.len();
        let order: Vec<usize> = self
            .config
            .order(n, pass)
            .unwrap_or_else(|| (0..n).collect());
        let size = self.config.batch_size();
        let chunks: Vec<Vec<usize>> = order.chunks(size).map(<[usize]>::to_vec).collect();
        Ok(Box::new(
            chunks.into_iter().filter_map(move |idx| self.batch(&idx)),
        ))
    }

    fn num_batches(&self) -> Option<usize> {
        Some(self.folder.len().div_ceil(self.config.batch_size()))
    }
}
