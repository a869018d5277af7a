//! One network pass for many detectors: [`Recording`] and [`RecordedSet`].

use std::fmt;

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
/// layers in memory (up to a budget), and then stands in for the model.
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
    logits: Vec<f32>,
    features: Vec<Vec<f32>>,
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
            head: model
                .as_last_layer()
                .map(|l| l.head_parameters().map_err(|e| e.to_string())),
        })
    }

    /// Runs `model` (the one the recording was made for) once over `data`
    /// and keeps what it returns; the set comes back as a [`RecordedSet`]
    /// to fit and score on. Errors as the model's checked pass does, and
    /// when the recording would exceed its budget (nothing of `data` is
    /// kept then) or [`MAX_RECORDED_INPUTS`].
    pub fn record(&mut self, model: &dyn Model, data: &dyn BatchSource) -> Result<RecordedSet> {
        let start = self.rows;
        let kept = (
            self.logits.len(),
            self.features.iter().map(Vec::len).collect::<Vec<_>>(),
        );
        let result = self.record_batches(model, data);
        if result.is_err() {
            // Drop the part of `data` recorded before the error.
            self.rows = start;
            self.logits.truncate(kept.0);
            for (f, &len) in self.features.iter_mut().zip(&kept.1) {
                f.truncate(len);
            }
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
            if needed > self.budget {
                return Err(Error::invalid(
                    "memory budget",
                    format!("{} bytes", self.budget),
                    format!(
                        "recording {} inputs of {classes} logits and {} features needs more; \
                         raise the budget or record fewer layers",
                        self.rows + n,
                        features.iter().map(|f| f.ncols()).sum::<usize>()
                    ),
                ));
            }
            self.logits.extend(logits.iter().copied());
            for (kept, f) in self.features.iter_mut().zip(&features) {
                kept.extend(f.iter().copied());
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

    /// The bytes held (logits and activations, `f32`).
    pub fn bytes(&self) -> usize {
        4 * (self.logits.len() + self.features.iter().map(Vec::len).sum::<usize>())
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

    fn gather(values: &[f32], width: usize, rows: &[usize]) -> Result<Array2<f32>> {
        let mut out = Vec::with_capacity(rows.len() * width);
        for &r in rows {
            out.extend_from_slice(&values[r * width..(r + 1) * width]);
        }
        Ok(Array2::from_shape_vec((rows.len(), width), out)?)
    }

    fn logits_of(&self, rows: &[usize]) -> Result<Array2<f32>> {
        Self::gather(&self.logits, self.classes.unwrap_or(0), rows)
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
        let widths = self.widths.as_deref().unwrap_or_default();
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
                Self::gather(
                    &self.features[k],
                    widths.get(k).copied().unwrap_or(0),
                    &rows,
                )
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
