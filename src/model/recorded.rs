//! One network pass for many detectors: [`Recording`] and [`RecordedSet`].

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Array4, ArrayView4};

use super::{
    CheckedFeatures, FeatureModel, LastLayer, LayerId, Model, ModelOutput, check_logits,
    features_of, resolve_layers,
};
use crate::batch::Batch;
use crate::datasets::{BatchIter, BatchSource};
use crate::error::{Error, Result};

/// The largest number of inputs a recording holds: their row index rides in
/// an `f32`, exact up to 2²⁴.
pub const MAX_RECORDED_INPUTS: usize = 1 << 24;

/// One network pass for many detectors: a [`Recording`] runs a model once
/// over each data set, keeps the logits and the activations of chosen
/// layers in memory (up to a budget; beyond it, in `.npy` shards on disk
/// when given a folder by [`spill_to`](Self::spill_to)), and then stands in
/// for the model.
/// Each data set comes back as a [`RecordedSet`] whose batches stand for
/// the recorded inputs, so any number of detectors fit and score from one
/// extraction: the network never runs again.
///
/// The recording offers what it recorded — the logits, the named layers and
/// the model's last linear layer — and nothing that needs the network
/// itself (input gradients for ODIN's or a feature detector's input step,
/// RankFeat's map editing, MC dropout): a detector that needs one is refused
/// when it is fitted, naming it. Detectors fitted on a recording record the
/// inputs' real shape, so they attach to the real model afterwards.
///
/// ```
/// use ndarray::{Array1, Array4, Axis};
/// use oodkit::detectors::{Detector, Knn, Mls};
/// use oodkit::model::{Recording, from_fn_with_features};
///
/// let calls = std::sync::atomic::AtomicUsize::new(0);
/// let model = from_fn_with_features(["pixels"], |x| {
///     calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     let flat = x.to_shape((x.shape()[0], 2))?.to_owned();
///     Ok((vec![flat.clone()], flat))
/// });
/// let images = |n, v: f32| Array4::from_shape_fn((n, 1, 1, 2), |(i, _, _, j)| v + (i + j) as f32);
/// let fit = oodkit::OodDataset::from_arrays(images(20, 0.0), Array1::zeros(20))?;
/// let test = oodkit::OodDataset::from_arrays(images(5, 40.0), Array1::zeros(5))?;
///
/// let mut recording = Recording::new(&model, &[(-2).into()], 1 << 20)?;
/// let fit_set = recording.record(&model, &fit)?;
/// let test_set = recording.record(&model, &test)?;
/// let passes = calls.load(std::sync::atomic::Ordering::Relaxed);
///
/// // Two detectors, fitted and scored without running the network again,
/// // with the scores the network itself gives.
/// let knn = Knn::new(3)?.fit(&recording, Some(&fit_set))?;
/// let mls = Mls::new().fit(&recording, None)?;
/// assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), passes);
/// let direct = Knn::new(3)?.fit(&model, Some(&fit))?;
/// assert_eq!(knn.score(&test_set)?.scores, direct.score(&test)?.scores);
/// assert_eq!(mls.score(&test_set)?.scores.len(), 5);
/// # Ok::<(), oodkit::Error>(())
/// ```
///
/// It is a [`Model`] (with [`FeatureModel`] and, when the recorded model
/// has one, [`LastLayer`]) that replays the recorded outputs for the
/// batches of its [`RecordedSet`]s.
pub struct Recording {
    /// The model's layer names (logits last), for resolving layer ids.
    names: Vec<String>,
    /// The positions (in `names`) of the recorded layers.
    positions: Vec<usize>,
    budget: usize,
    classes: Option<usize>,
    widths: Option<Vec<usize>>,
    rows: usize,
    /// The first rows, held in memory: logits, then each layer's.
    logits: Vec<f32>,
    features: Vec<Vec<f32>>,
    /// How many rows are in memory; the others (after them) are in shards.
    memory_rows: usize,
    spill: Spill,
    /// The model's last layer when it has one (or why it could not give
    /// it).
    head: Option<std::result::Result<Head, String>>,
}

/// A last layer: weights `(classes, D)` and bias.
type Head = (Array2<f32>, Array1<f32>);

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording")
            .field("layers", &self.recorded_names())
            .field("inputs", &self.rows)
            .field("bytes", &self.bytes())
            .field("spilled_bytes", &self.spilled_bytes())
            .finish_non_exhaustive()
    }
}

impl Recording {
    /// An empty recording of `model`'s logits and the activations of
    /// `layers` (none: the logits alone), holding at most `budget_bytes`.
    /// Errors when a layer is not the model's, or when layers are asked of
    /// a model that exposes none.
    pub fn new(model: &dyn Model, layers: &[LayerId], budget_bytes: usize) -> Result<Self> {
        let (names, positions) = if layers.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let features = features_of(model, "recording its layers")?;
            let names = features.layer_names();
            let positions = resolve_layers(layers, &names)?;
            (names, positions)
        };
        Ok(Recording {
            names,
            features: vec![Vec::new(); positions.len()],
            positions,
            budget: budget_bytes,
            classes: None,
            widths: None,
            rows: 0,
            logits: Vec::new(),
            memory_rows: 0,
            spill: Spill::default(),
            head: model
                .as_last_layer()
                .map(|l| l.head_parameters().map_err(|e| e.to_string())),
        })
    }

    /// Beyond the budget, writes what is recorded to `.npy` shards (one
    /// per batch and layer, `(batch, width)` `f32`) in a new folder inside
    /// `dir`, read back when replayed and deleted with the recording.
    /// Without it, going beyond the budget is an error.
    pub fn spill_to(&mut self, dir: impl Into<PathBuf>) {
        self.spill.parent = Some(dir.into());
    }

    /// The folder the shards are written to, once one is.
    pub fn spill_folder(&self) -> Option<&Path> {
        self.spill.dir.as_ref().map(|d| d.path())
    }

    /// Runs `model` (the one the recording was made for) once over `data`
    /// and keeps what it returns; the set comes back as a [`RecordedSet`]
    /// to fit and score on. Errors as the model's checked pass does, when
    /// the recording would exceed its budget without a folder to spill to
    /// (nothing of `data` is kept then), when a shard cannot be written,
    /// or beyond [`MAX_RECORDED_INPUTS`].
    pub fn record(&mut self, model: &dyn Model, data: &dyn BatchSource) -> Result<RecordedSet> {
        let start = self.rows;
        let kept = (
            self.logits.len(),
            self.features.iter().map(Vec::len).collect::<Vec<_>>(),
            self.memory_rows,
        );
        let result = self.record_batches(model, data);
        if result.is_err() {
            // Drop the part of `data` recorded before the error.
            self.rows = start;
            self.logits.truncate(kept.0);
            for (f, &len) in self.features.iter_mut().zip(&kept.1) {
                f.truncate(len);
            }
            self.memory_rows = kept.2;
            self.spill.drop_from(start);
        }
        let layout = result?;
        Ok(RecordedSet {
            start,
            len: self.rows - start,
            batch: layout.batch,
            shape: layout.shape,
            labels: layout.labels,
            ood_labels: layout.ood_labels,
        })
    }

    /// The pass over `data`: the recorded set's input shape, batch size
    /// and labels (its rows are appended).
    fn record_batches(&mut self, model: &dyn Model, data: &dyn BatchSource) -> Result<SetLayout> {
        let ids: Vec<LayerId> = self
            .positions
            .iter()
            .map(|&p| LayerId::Index(p as isize))
            .collect();
        let mut checked = if ids.is_empty() {
            None
        } else {
            let checked = CheckedFeatures::new(features_of(model, "recording its layers")?, &ids)?;
            // Later sets must have the widths of the first.
            Some(match &self.widths {
                Some(widths) => checked.expecting(widths.clone()),
                None => checked,
            })
        };
        let (mut shape, mut batch_len) = (None, 0);
        let (mut labels, mut ood_labels) = (Some(Vec::new()), Some(Vec::new()));
        for batch in data.batches()? {
            let batch = batch?;
            let dims = batch.inputs.shape();
            let this = [dims[1], dims[2], dims[3]];
            if *shape.get_or_insert(this) != this {
                return Err(Error::ShapeMismatch {
                    what: "inputs of one data set".into(),
                    expected: format!("{:?} like the first batch", shape.unwrap_or(this)),
                    found: format!("{this:?}"),
                });
            }
            let n = dims[0];
            batch_len = batch_len.max(n);
            if self.rows + n > MAX_RECORDED_INPUTS {
                return Err(Error::invalid(
                    "recording",
                    format!("{} inputs", self.rows + n),
                    format!("a recording holds at most {MAX_RECORDED_INPUTS} inputs"),
                ));
            }
            match (&mut labels, &batch.labels) {
                (Some(all), Some(l)) => all.extend(l.iter().copied()),
                (slot, _) => *slot = None,
            }
            match (&mut ood_labels, &batch.ood_labels) {
                (Some(all), Some(l)) => all.extend(l.iter().copied()),
                (slot, _) => *slot = None,
            }
            let (logits, features) = match checked.as_mut() {
                Some(checked) => {
                    let ModelOutput { features, logits } = checked.forward(batch.inputs)?;
                    (logits, features)
                }
                None => {
                    let logits = model.forward_owned(batch.inputs)?;
                    check_logits(&logits, n)?;
                    (logits, Vec::new())
                }
            };
            let classes = *self.classes.get_or_insert(logits.ncols());
            if logits.ncols() != classes {
                return Err(Error::ShapeMismatch {
                    what: "logits of the recorded model".into(),
                    expected: format!("(_, {classes}) like the inputs recorded before"),
                    found: format!("{:?}", logits.shape()),
                });
            }
            self.widths
                .get_or_insert_with(|| features.iter().map(|f| f.ncols()).collect());
            let needed = self.bytes()
                + n * 4 * (classes + features.iter().map(|f| f.ncols()).sum::<usize>());
            // Once spilling, every later row goes to shards: memory holds
            // the first rows only.
            if self.memory_rows < self.rows || needed > self.budget {
                if self.spill.parent.is_none() {
                    return Err(Error::invalid(
                        "memory budget",
                        format!("{} bytes", self.budget),
                        format!(
                            "recording {} inputs of {classes} logits and {} features needs \
                             more; raise the budget, record fewer layers or give a folder to \
                             spill to",
                            self.rows + n,
                            features.iter().map(|f| f.ncols()).sum::<usize>()
                        ),
                    ));
                }
                let columns: Vec<&Array2<f32>> =
                    std::iter::once(&logits).chain(&features).collect();
                self.spill.write(self.rows, &columns)?;
            } else {
                self.logits.extend(logits.iter().copied());
                for (kept, f) in self.features.iter_mut().zip(&features) {
                    kept.extend(f.iter().copied());
                }
                self.memory_rows += n;
            }
            self.rows += n;
        }
        let shape = shape.ok_or_else(|| Error::Empty {
            what: "a data set to record".into(),
            hint: "give it at least one input".into(),
        })?;
        Ok(SetLayout {
            shape,
            batch: batch_len,
            labels,
            ood_labels,
        })
    }

    /// The bytes held in memory (logits and activations, `f32`).
    pub fn bytes(&self) -> usize {
        4 * (self.logits.len() + self.features.iter().map(Vec::len).sum::<usize>())
    }

    /// The bytes written to shards on disk (their values; each file adds
    /// a header of 128 bytes).
    pub fn spilled_bytes(&self) -> usize {
        self.spill.bytes
    }

    /// The number of inputs recorded.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether nothing is recorded yet.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The names of the recorded layers.
    pub fn recorded_names(&self) -> Vec<&str> {
        self.positions
            .iter()
            .filter_map(|&p| self.names.get(p).map(String::as_str))
            .collect()
    }

    /// The recorded rows the inputs of a replayed batch stand for.
    fn rows_of(&self, inputs: ArrayView4<f32>) -> Result<Vec<usize>> {
        inputs
            .outer_iter()
            .enumerate()
            .map(|(i, input)| {
                let v = input.iter().next().copied().unwrap_or(f32::NAN);
                let row = v as usize;
                if v >= 0.0 && v.fract() == 0.0 && row < self.rows {
                    Ok(row)
                } else {
                    Err(Error::invalid(
                        "inputs",
                        format!("sample {i}"),
                        "a recording replays only the batches of its RecordedSets: score the \
                         data it recorded through it, other data through the model itself",
                    ))
                }
            })
            .collect()
    }

    /// The rows of one column (0 the logits, k + 1 the k-th layer), from
    /// memory or, for those after the first `memory_rows`, from the shards
    /// (a run of consecutive rows in one shard is one read).
    fn gather(&self, column: usize, rows: &[usize]) -> Result<Array2<f32>> {
        let (values, width) = match column {
            0 => (&self.logits, self.classes.unwrap_or(0)),
            k => (
                &self.features[k - 1],
                self.widths
                    .as_deref()
                    .and_then(|w| w.get(k - 1))
                    .copied()
                    .unwrap_or(0),
            ),
        };
        let mut out = Vec::with_capacity(rows.len() * width);
        let mut i = 0;
        while let Some(&r) = rows.get(i) {
            if r < self.memory_rows {
                out.extend_from_slice(&values[r * width..(r + 1) * width]);
                i += 1;
                continue;
            }
            let shard = self.spill.shard_of(r)?;
            let mut j = i + 1;
            while rows
                .get(j)
                .is_some_and(|&next| next == rows[j - 1] + 1 && next < shard.first + shard.rows)
            {
                j += 1;
            }
            shard.read(column, width, r - shard.first, j - i, &mut out)?;
            i = j;
        }
        Ok(Array2::from_shape_vec((rows.len(), width), out)?)
    }

    fn logits_of(&self, rows: &[usize]) -> Result<Array2<f32>> {
        self.gather(0, rows)
    }
}

impl Model for Recording {
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>> {
        self.logits_of(&self.rows_of(inputs)?)
    }

    fn as_features(&self) -> Option<&dyn FeatureModel> {
        (!self.positions.is_empty()).then_some(self as &dyn FeatureModel)
    }

    fn as_last_layer(&self) -> Option<&dyn LastLayer> {
        self.head.as_ref().map(|_| self as &dyn LastLayer)
    }
}

impl FeatureModel for Recording {
    /// The recorded model's layers (those not recorded are refused when
    /// asked for).
    fn layer_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn forward_features(&self, inputs: ArrayView4<f32>, layers: &[LayerId]) -> Result<ModelOutput> {
        let rows = self.rows_of(inputs)?;
        let features = resolve_layers(layers, &self.names)?
            .into_iter()
            .zip(layers)
            .map(|(p, id)| {
                let k = self.positions.iter().position(|&q| q == p).ok_or_else(|| {
                    Error::invalid(
                        "layer",
                        id.to_string(),
                        format!(
                            "was not recorded (the recording holds {:?}): record it too",
                            self.recorded_names()
                        ),
                    )
                })?;
                self.gather(k + 1, &rows)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelOutput {
            features,
            logits: self.logits_of(&rows)?,
        })
    }
}

impl LastLayer for Recording {
    fn head_parameters(&self) -> Result<(Array2<f32>, Array1<f32>)> {
        match &self.head {
            Some(Ok(head)) => Ok(head.clone()),
            Some(Err(reason)) => Err(Error::custom(format!(
                "the recorded model's last layer: {reason}"
            ))),
            None => Err(Error::custom("the recorded model has no last layer")),
        }
    }
}

/// The part of a recording beyond its memory budget: `.npy` shards in a
/// folder of their own, deleted with it.
#[derive(Default)]
struct Spill {
    /// Where the shards' folder is made, when spilling is allowed.
    parent: Option<PathBuf>,
    /// The shards' folder, once one is written.
    dir: Option<tempfile::TempDir>,
    /// In row order, contiguous, after the rows in memory.
    shards: Vec<Shard>,
    bytes: usize,
}

/// One spilled batch: rows `first..first + rows`, a file per column.
struct Shard {
    first: usize,
    rows: usize,
    files: Vec<(PathBuf, usize)>,
}

/// The header of a shard: `.npy` version 1.0 of `(rows, width)` little-
/// endian `f32`, padded to 128 bytes.
fn npy_header(rows: usize, width: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {width}), }}");
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let len = 128 - 10;
    header.extend_from_slice(&(len as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(127, b' ');
    header.push(b'\n');
    header
}

impl Spill {
    /// Writes one batch's columns (logits, then each layer) as shards of
    /// rows `first..`.
    fn write(&mut self, first: usize, columns: &[&Array2<f32>]) -> Result<()> {
        let Some(parent) = self.parent.as_ref() else {
            return Err(Error::custom("spilling without a folder"));
        };
        if self.dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("oodkit-recording-")
                .tempdir_in(parent)
                .map_err(|source| Error::Io {
                    path: parent.clone(),
                    source,
                })?;
            self.dir = Some(dir);
        }
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        let rows = columns.first().map_or(0, |c| c.nrows());
        let mut files = Vec::with_capacity(columns.len());
        for (k, column) in columns.iter().enumerate() {
            let path = dir.join(format!("{first}-{k}.npy"));
            let io = |source| Error::Io {
                path: path.clone(),
                source,
            };
            let mut bytes = npy_header(rows, column.ncols());
            bytes.reserve(column.len() * 4);
            for v in column.iter() {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            let mut file = File::create(&path).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            self.bytes += column.len() * 4;
            files.push((path, column.ncols()));
        }
        self.shards.push(Shard { first, rows, files });
        Ok(())
    }

    /// Deletes the shards of rows `first..`.
    fn drop_from(&mut self, first: usize) {
        while self.shards.last().is_some_and(|s| s.first >= first) {
            if let Some(shard) = self.shards.pop() {
                for (path, width) in &shard.files {
                    // Best effort: the folder goes with the recording.
                    let _ = std::fs::remove_file(path);
                    self.bytes = self.bytes.saturating_sub(shard.rows * width * 4);
                }
            }
        }
    }

    fn shard_of(&self, row: usize) -> Result<&Shard> {
        let at = self.shards.partition_point(|s| s.first + s.rows <= row);
        self.shards
            .get(at)
            .filter(|s| s.first <= row)
            .ok_or_else(|| Error::custom(format!("row {row} is in no shard of the recording")))
    }
}

impl Shard {
    /// Appends `count` rows from row `from` (of this shard) of `column`.
    fn read(
        &self,
        column: usize,
        width: usize,
        from: usize,
        count: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let Some((path, written)) = self.files.get(column) else {
            return Err(Error::custom(format!(
                "the recording has no column {column}"
            )));
        };
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let header = npy_header(self.rows, *written);
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if *written != width || len != (header.len() + self.rows * width * 4) as u64 {
            return Err(Error::corrupt(
                path,
                None,
                format!(
                    "a shard of {} x {width} values is {len} bytes: it was changed after it \
                     was written; record again",
                    self.rows
                ),
            ));
        }
        file.seek(SeekFrom::Start((header.len() + from * width * 4) as u64))
            .map_err(io)?;
        let mut bytes = vec![0_u8; count * width * 4];
        file.read_exact(&mut bytes).map_err(io)?;
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }
}

/// What a pass learns of a data set besides its outputs.
struct SetLayout {
    shape: [usize; 3],
    batch: usize,
    labels: Option<Vec<i64>>,
    ood_labels: Option<Vec<u8>>,
}

/// One data set of a [`Recording`]: a [`BatchSource`] whose batches stand
/// for the recorded inputs (their shape, labels and order, each input's
/// first value its row in the recording). Fit and score on it through the
/// recording.
#[derive(Debug, Clone)]
pub struct RecordedSet {
    start: usize,
    len: usize,
    batch: usize,
    shape: [usize; 3],
    labels: Option<Vec<i64>>,
    ood_labels: Option<Vec<u8>>,
}

impl RecordedSet {
    /// The number of inputs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no input.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn batch_at(&self, from: usize) -> Result<Batch> {
        let n = self.batch.min(self.len - from);
        let [c, h, w] = self.shape;
        let mut inputs = Array4::zeros((n, c, h, w));
        for (i, mut input) in inputs.outer_iter_mut().enumerate() {
            if let Some(first) = input.iter_mut().next() {
                *first = (self.start + from + i) as f32;
            }
        }
        Ok(Batch {
            inputs,
            labels: self
                .labels
                .as_ref()
                .map(|l| Array1::from(l[from..from + n].to_vec())),
            ood_labels: self
                .ood_labels
                .as_ref()
                .map(|l| Array1::from(l[from..from + n].to_vec())),
        })
    }
}

impl BatchSource for RecordedSet {
    fn batches(&self) -> Result<BatchIter<'_>> {
        let step = self.batch.max(1);
        Ok(Box::new(
            (0..self.len).step_by(step).map(|from| self.batch_at(from)),
        ))
    }

    fn num_batches(&self) -> Option<usize> {
        Some(self.len.div_ceil(self.batch.max(1)))
    }
}
