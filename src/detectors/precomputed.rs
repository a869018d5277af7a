//! Arrays computed elsewhere — a forward hook's features, the logits, the
//! labels, one row per input — served to any detector as a network's
//! outputs would be: every registered detector fits, scores and
//! calibrates on them by name ([`UnfittedDetector::fit_precomputed`](super::registry::UnfittedDetector::fit_precomputed),
//! [`AnyDetector::score_precomputed`](super::AnyDetector::score_precomputed)).
//!
//! Inside, the arrays are a [`Model`] whose inputs are row numbers: each
//! batch's "inputs" `(n, 2, 1, 1)` name the rows (high and low parts, each
//! exact in `f32`), and its layers and logits are those rows. A detector
//! fitted this way records no input shape, so the same file later serves
//! the network the arrays came from (through its ONNX export, say), on the
//! layers named at fit time.

use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, Axis};

use crate::batch::Batch;
use crate::datasets::{BatchIter, BatchSource};
use crate::error::{Error, Result};
use crate::model::{
    FeatureModel, LastLayer, LayerId, Model, ModelOutput, check_finite, check_head, pick_layers,
    resolve_layers,
};

/// Rows per batch served to a detector.
const BATCH: usize = 4096;

/// Row numbers are split in two parts of 2²⁰, each exact in `f32`.
const PART: usize = 1 << 20;

/// The most rows the arrays may have (row numbers exact in two `f32`s).
const MAX_ROWS: usize = PART * PART;

/// The name of the one feature layer of [`Precomputed::features`].
pub const FEATURES: &str = "features";

/// Features of one or more layers, logits and labels computed elsewhere,
/// one row per input (see the [module docs](self)).
///
/// ```
/// use ndarray::{array, Array1, Array2};
/// use oodkit::detectors::{Precomputed, registry::{self, Params}};
///
/// let fit = Array2::from_shape_fn((40, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
/// let labels: Array1<i64> = (0..40).map(|i| i % 2).collect();
/// let knn = registry::find("knn")?.build(&Params::new().set("k", 3))?;
/// let fitted = knn.fit_precomputed(&Precomputed::features(fit.view())?.with_labels(labels.view())?)?;
/// let queries = array![[0.0_f32, 5.0, 9.0], [100.0, -3.0, 0.5]];
/// let out = fitted.score_precomputed(&Precomputed::features(queries.view())?)?;
/// assert!(out.scores[1] > out.scores[0]); // far from every fit row
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Precomputed<'a> {
    names: Vec<String>,
    layers: Vec<ArrayView2<'a, f32>>,
    logits: Option<ArrayView2<'a, f32>>,
    head: Option<(Array2<f32>, Array1<f32>)>,
    labels: Option<ArrayView1<'a, i64>>,
    rows: usize,
}

impl<'a> Precomputed<'a> {
    /// One layer's features `(N, D)`, the layer named `"features"` (the
    /// penultimate, `-2`, as the feature detectors' default asks).
    pub fn features(features: ArrayView2<'a, f32>) -> Result<Self> {
        Self::layers([(FEATURES.to_owned(), features)])
    }

    /// The features of several layers, in the network's order, each
    /// `(N, D_l)` and named (the names detectors' `layers` pick them by;
    /// `-2` is the last of them). Errors on no layer, a name given twice or
    /// `"logits"`, arrays of different row counts, no row or column, and
    /// values that are not finite.
    pub fn layers(layers: impl IntoIterator<Item = (String, ArrayView2<'a, f32>)>) -> Result<Self> {
        let (names, layers): (Vec<String>, Vec<ArrayView2<f32>>) = layers.into_iter().unzip();
        let Some(first) = layers.first() else {
            return Err(Error::Empty {
                what: "the precomputed feature layers".into(),
                hint: "give at least one layer's features".into(),
            });
        };
        let rows = first.nrows();
        for (i, name) in names.iter().enumerate() {
            if name == LOGITS || names[..i].contains(name) {
                return Err(Error::invalid(
                    "layer name",
                    name,
                    "name each feature layer once, and none \"logits\" (give the logits apart)",
                ));
            }
        }
        for (name, features) in names.iter().zip(&layers) {
            check_rows(
                rows,
                *features,
                &format!("the features of layer \"{name}\""),
            )?;
        }
        Ok(Precomputed {
            names,
            layers,
            logits: None,
            head: None,
            labels: None,
            rows,
        })
    }

    /// Logits `(N, classes)` alone: for the detectors that read only them
    /// (MSP, Energy, ...).
    pub fn logits(logits: ArrayView2<'a, f32>) -> Result<Self> {
        check_rows(logits.nrows(), logits, "the logits")?;
        Ok(Precomputed {
            names: Vec::new(),
            layers: Vec::new(),
            logits: Some(logits),
            head: None,
            labels: None,
            rows: logits.nrows(),
        })
    }

    /// With the logits `(N, classes)` of the same inputs.
    pub fn with_logits(mut self, logits: ArrayView2<'a, f32>) -> Result<Self> {
        check_rows(self.rows, logits, "the logits")?;
        self.logits = Some(logits);
        Ok(self)
    }

    /// With the network's last linear layer: weights `(classes, D)` over
    /// the last feature layer, and bias `(classes,)` (ViM, DICE, NCI, ...
    /// read it). Without logits, the logits are computed from it.
    pub fn with_head(mut self, weights: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        check_head(&weights, &bias, "the head's weights and bias")?;
        check_finite(weights.view(), "the head's weights")?;
        check_finite(bias.view().insert_axis(Axis(0)), "the head's bias")?;
        let Some(last) = self.layers.last() else {
            return Err(Error::invalid(
                "head",
                "weights",
                "a head reads the last feature layer: give features first",
            ));
        };
        if weights.ncols() != last.ncols() {
            return Err(Error::ShapeMismatch {
                what: "the head's weights vs the last feature layer".into(),
                expected: format!("(classes, {})", last.ncols()),
                found: format!("{:?}", weights.shape()),
            });
        }
        if let Some(logits) = self.logits
            && logits.ncols() != weights.nrows()
        {
            return Err(Error::ShapeMismatch {
                what: "the head's weights vs the logits".into(),
                expected: format!("({}, D): one row per class", logits.ncols()),
                found: format!("{:?}", weights.shape()),
            });
        }
        self.head = Some((weights, bias));
        Ok(self)
    }

    /// With the class labels `(N,)` of the inputs (fit data).
    pub fn with_labels(mut self, labels: ArrayView1<'a, i64>) -> Result<Self> {
        if labels.len() != self.rows {
            return Err(Error::LengthMismatch {
                what: "precomputed rows vs labels".into(),
                left: self.rows,
                right: labels.len(),
            });
        }
        self.labels = Some(labels);
        Ok(self)
    }

    /// The number of inputs (rows).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether there is no row (never: construction refuses it).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The feature layers' names, then `"logits"` (as a model's layers).
    pub(crate) fn layer_names(&self) -> Vec<String> {
        let mut names = self.names.clone();
        names.push(LOGITS.to_owned());
        names
    }

    /// The features of the layer at `position` among
    /// [`layer_names`](Self::layer_names) (`None`: the logits).
    pub(crate) fn layer(&self, position: usize) -> Option<ArrayView2<'a, f32>> {
        self.layers.get(position).copied()
    }

    /// The labels, if given.
    pub(crate) fn labels(&self) -> Option<ArrayView1<'a, i64>> {
        self.labels
    }

    /// The batches of row numbers the model serves, with the labels.
    pub(crate) fn source(&self) -> RowBatches<'_> {
        RowBatches {
            rows: self.rows,
            labels: self.labels,
        }
    }

    /// The rows named by a batch's inputs, checked.
    fn rows_of(&self, inputs: ArrayView4<f32>) -> Result<Vec<usize>> {
        let shape = inputs.shape();
        if shape[1..] != [2, 1, 1] {
            return Err(Error::ShapeMismatch {
                what: "inputs of a model of precomputed arrays".into(),
                expected: "(N, 2, 1, 1): row numbers (score the arrays with the _precomputed \
                           methods, not a network's inputs)"
                    .into(),
                found: format!("{shape:?}"),
            });
        }
        inputs
            .outer_iter()
            .map(|input| {
                let (high, low) = (input[[0, 0, 0]], input[[1, 0, 0]]);
                let whole = |v: f32, below: f32| v >= 0.0 && v < below && v.fract() == 0.0;
                let row = high as usize * PART + low as usize;
                if !whole(high, PART as f32) || !whole(low, PART as f32) || row >= self.rows {
                    return Err(Error::invalid(
                        "input",
                        format!("({high}, {low})"),
                        format!("not one of the {} precomputed rows", self.rows),
                    ));
                }
                Ok(row)
            })
            .collect()
    }

    /// The logits of `rows`: given, or from the head; `(n, 0)` when
    /// neither (the feature detectors then see precomputed features).
    fn logits_of(&self, rows: &[usize], features: Option<&Array2<f32>>) -> Array2<f32> {
        match (self.logits, &self.head, features) {
            (Some(logits), _, _) => logits.select(Axis(0), rows),
            (None, Some((w, b)), Some(last)) => last.dot(&w.t()) + b,
            _ => Array2::zeros((rows.len(), 0)),
        }
    }
}

/// The name of the logits among a model's layers.
const LOGITS: &str = "logits";

/// Errors unless `array` has `rows` rows, at least one of them, at least
/// one column, at most [`MAX_ROWS`] rows, and finite values.
fn check_rows(rows: usize, array: ArrayView2<f32>, what: &str) -> Result<()> {
    if array.nrows() == 0 || array.ncols() == 0 {
        return Err(Error::Empty {
            what: what.into(),
            hint: "give at least one row of at least one column".into(),
        });
    }
    if array.nrows() != rows {
        return Err(Error::LengthMismatch {
            what: format!("rows of {what} vs the other arrays"),
            left: array.nrows(),
            right: rows,
        });
    }
    if rows > MAX_ROWS {
        return Err(Error::invalid(
            "rows",
            rows,
            format!("at most {MAX_ROWS} rows at once: give fewer"),
        ));
    }
    check_finite(array, what)
}

impl Model for Precomputed<'_> {
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>> {
        let rows = self.rows_of(inputs)?;
        if self.logits.is_none() && self.head.is_none() {
            return Err(Error::missing(
                "the logits",
                "this detector reads the network's logits: give them with the features (or \
                 the last layer's weights and bias to compute them)",
            ));
        }
        let last = self.layers.last().map(|l| l.select(Axis(0), &rows));
        Ok(self.logits_of(&rows, last.as_ref()))
    }

    fn as_features(&self) -> Option<&dyn FeatureModel> {
        (!self.layers.is_empty()).then_some(self as &dyn FeatureModel)
    }

    fn as_last_layer(&self) -> Option<&dyn LastLayer> {
        self.head.as_ref().map(|_| self as &dyn LastLayer)
    }

    fn records_input_shape(&self) -> bool {
        false
    }
}

impl FeatureModel for Precomputed<'_> {
    fn layer_names(&self) -> Vec<String> {
        Precomputed::layer_names(self)
    }

    fn forward_features(&self, inputs: ArrayView4<f32>, layers: &[LayerId]) -> Result<ModelOutput> {
        let positions = resolve_layers(layers, &self.layer_names())?;
        let rows = self.rows_of(inputs)?;
        let all: Vec<Array2<f32>> = self
            .layers
            .iter()
            .map(|l| l.select(Axis(0), &rows))
            .collect();
        let logits = self.logits_of(&rows, all.last());
        let features = pick_layers(&positions, &all, &logits);
        Ok(ModelOutput { features, logits })
    }

    fn gives_logits(&self) -> bool {
        self.logits.is_some() || self.head.is_some()
    }
}

impl LastLayer for Precomputed<'_> {
    fn head_parameters(&self) -> Result<(Array2<f32>, Array1<f32>)> {
        self.head.clone().ok_or_else(|| {
            Error::missing(
                "the last layer's weights and bias",
                "this detector reads the network's last linear layer: give its weights and bias",
            )
        })
    }
}

/// Batches of [`BATCH`] row numbers, in order, with their labels.
pub(crate) struct RowBatches<'a> {
    rows: usize,
    labels: Option<ArrayView1<'a, i64>>,
}

impl BatchSource for RowBatches<'_> {
    fn batches(&self) -> Result<BatchIter<'_>> {
        Ok(Box::new((0..self.rows).step_by(BATCH).map(move |start| {
            let end = (start + BATCH).min(self.rows);
            let inputs = Array4::from_shape_fn((end - start, 2, 1, 1), |(i, part, _, _)| {
                let row = start + i;
                (if part == 0 { row / PART } else { row % PART }) as f32
            });
            Ok(Batch {
                inputs,
                labels: self
                    .labels
                    .map(|l| l.slice(ndarray::s![start..end]).to_owned()),
                ood_labels: None,
            })
        })))
    }

    fn num_batches(&self) -> Option<usize> {
        Some(self.rows.div_ceil(BATCH))
    }
}
