//! `oodkit._native`: the Rust side of the `oodkit` Python package. Every
//! registered detector is reached by name through the registry and fitted,
//! scored and calibrated on arrays computed elsewhere
//! ([`oodkit::detectors::Precomputed`]); the metrics and the detector files
//! are oodkit's own. The Python package (`oodkit/`) wraps these functions
//! in classes, converts arrays and raises its exception classes.
//!
//! The GIL is released while Rust computes, so Python threads score in
//! parallel.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use oodkit::detectors::registry::{self, ParamValue, Params, UnfittedDetector};
use oodkit::detectors::{AnyDetector, AnyPartialFit, Precomputed};
use oodkit::metrics;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

/// An oodkit error as the Python package's exception: `InvalidInput`
/// (a `ValueError`) for what the caller gave, `FileError` (an `OSError`)
/// for files, `Error` for the rest; each carries oodkit's message.
fn raise(e: oodkit::Error) -> PyErr {
    use oodkit::Error as E;
    let class = match &e {
        E::MissingFile { .. } | E::CorruptFile { .. } | E::WrongFile { .. } | E::Io { .. } => {
            "FileError"
        }
        E::ShapeMismatch { .. }
        | E::LengthMismatch { .. }
        | E::Empty { .. }
        | E::InvalidLabel { .. }
        | E::InvalidParameter { .. }
        | E::NotANumber { .. }
        | E::MissingInput { .. }
        | E::Ndarray(_)
        | E::Unsupported { .. }
        | E::Numerical { .. } => "InvalidInput",
        _ => "Error",
    };
    raise_as(class, e.to_string())
}

/// The Python package's exception `class` (of `oodkit._errors`) with
/// `message`.
fn raise_as(class: &str, message: String) -> PyErr {
    Python::attach(
        |py| match py.import("oodkit._errors").and_then(|m| m.getattr(class)) {
            Ok(class) => PyErr::from_value(
                class
                    .call1((message.clone(),))
                    .unwrap_or_else(|err| err.into_value(py).into_bound(py).into_any()),
            ),
            Err(_) => PyException::new_err(message),
        },
    )
}

trait OrRaise<T> {
    fn or_raise(self) -> PyResult<T>;
}

impl<T> OrRaise<T> for oodkit::Result<T> {
    fn or_raise(self) -> PyResult<T> {
        self.map_err(raise)
    }
}

/// Feature layers as Python gives them: (name, float32 array) pairs.
type Layers<'py> = Option<Vec<(String, PyReadonlyArray2<'py, f32>)>>;
/// The last layer: (weights (classes, D), bias (classes,)).
type Head<'py> = Option<(PyReadonlyArray2<'py, f32>, PyReadonlyArray1<'py, f32>)>;
/// Scores and the logits the detector saw.
type Scored<'py> = (Bound<'py, PyArray1<f32>>, Bound<'py, PyArray2<f32>>);
/// Scores, p-values, verdicts and classes.
type Decided<'py> = (
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<bool>>,
    Bound<'py, PyArray1<i64>>,
);
/// P-values and verdicts.
type PValues<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<bool>>);
/// A ROC curve: fpr, tpr, thresholds.
type Curve<'py> = (
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f32>>,
);

/// The arrays of one call, borrowed from NumPy: feature layers (named),
/// logits, the head and labels.
struct Arrays<'py> {
    layers: Vec<(String, PyReadonlyArray2<'py, f32>)>,
    logits: Option<PyReadonlyArray2<'py, f32>>,
    head: Option<(Array2<f32>, Array1<f32>)>,
    labels: Option<PyReadonlyArray1<'py, i64>>,
}

impl<'py> Arrays<'py> {
    fn new(
        layers: Layers<'py>,
        logits: Option<PyReadonlyArray2<'py, f32>>,
        head: Head<'py>,
        labels: Option<PyReadonlyArray1<'py, i64>>,
    ) -> Self {
        Arrays {
            layers: layers.unwrap_or_default(),
            logits,
            head: head.map(|(w, b)| (w.as_array().to_owned(), b.as_array().to_owned())),
            labels,
        }
    }

    /// The views, checked into a [`Precomputed`].
    fn precomputed(&self) -> oodkit::Result<Precomputed<'_>> {
        let views: Vec<(String, ArrayView2<f32>)> = self
            .layers
            .iter()
            .map(|(name, a)| (name.clone(), a.as_array()))
            .collect();
        let mut data = match (views.is_empty(), &self.logits) {
            (false, _) => Precomputed::layers(views)?,
            (true, Some(logits)) => Precomputed::logits(logits.as_array())?,
            (true, None) => {
                return Err(oodkit::Error::MissingInput {
                    what: "features or logits".into(),
                    hint: "give the features of the layers the detector reads (features=...), \
                           the logits (logits=...), or both"
                        .into(),
                });
            }
        };
        if let (false, Some(logits)) = (self.layers.is_empty(), &self.logits) {
            data = data.with_logits(logits.as_array())?;
        }
        if let Some((w, b)) = &self.head {
            data = data.with_head(w.clone(), b.clone())?;
        }
        if let Some(labels) = &self.labels {
            let labels: ArrayView1<i64> = labels.as_array();
            data = data.with_labels(labels)?;
        }
        Ok(data)
    }
}

/// A detector built by name, not fitted yet.
#[pyclass(module = "oodkit._native", name = "Unfitted", frozen)]
struct Unfitted {
    inner: UnfittedDetector,
}

#[pymethods]
impl Unfitted {
    /// The kind's name, e.g. "KNN".
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.registration().kind()
    }

    /// Fits on features (list of (layer name, array)), logits, head
    /// (weights, bias) and labels.
    #[pyo3(signature = (layers=None, logits=None, head=None, labels=None))]
    fn fit<'py>(
        &self,
        py: Python<'py>,
        layers: Layers<'py>,
        logits: Option<PyReadonlyArray2<'py, f32>>,
        head: Head<'py>,
        labels: Option<PyReadonlyArray1<'py, i64>>,
    ) -> PyResult<Detector> {
        let arrays = Arrays::new(layers, logits, head, labels);
        let data = arrays.precomputed().or_raise()?;
        let inner = py.detach(|| self.inner.fit_precomputed(&data)).or_raise()?;
        Ok(Detector { inner })
    }

    /// The first pass of a partial fit on one shard (feature detectors).
    #[pyo3(signature = (layers=None, logits=None, head=None, labels=None))]
    fn partial_fit<'py>(
        &self,
        py: Python<'py>,
        layers: Layers<'py>,
        logits: Option<PyReadonlyArray2<'py, f32>>,
        head: Head<'py>,
        labels: Option<PyReadonlyArray1<'py, i64>>,
    ) -> PyResult<Partial> {
        let arrays = Arrays::new(layers, logits, head, labels);
        let data = arrays.precomputed().or_raise()?;
        let inner = py
            .detach(|| self.inner.partial_fit_precomputed(&data))
            .or_raise()?;
        Ok(Partial { inner: Some(inner) })
    }

    /// A partial fit of this detector read from its file.
    fn load_partial(&self, py: Python<'_>, path: PathBuf) -> PyResult<Partial> {
        let inner = py.detach(|| self.inner.load_partial(&path)).or_raise()?;
        Ok(Partial { inner: Some(inner) })
    }

    /// A partial fit of this detector from its file's bytes.
    fn partial_from_bytes(&self, py: Python<'_>, bytes: &[u8]) -> PyResult<Partial> {
        let bytes = bytes.to_vec();
        let inner = py
            .detach(|| loaded_from_bytes(&bytes, |path| self.inner.load_partial(path)))
            .or_raise()?;
        Ok(Partial { inner: Some(inner) })
    }
}

/// A partial fit on some shards of the fit data; once merged into another
/// or finished, it is spent.
#[pyclass(module = "oodkit._native", name = "PartialFit")]
struct Partial {
    inner: Option<AnyPartialFit>,
}

impl Partial {
    fn live(&mut self) -> PyResult<&mut AnyPartialFit> {
        self.inner.as_mut().ok_or_else(spent)
    }
}

fn spent() -> PyErr {
    raise_as(
        "InvalidInput",
        "this partial fit was merged into another or finished: use the one it became".into(),
    )
}

#[pymethods]
impl Partial {
    /// The detector's kind.
    #[getter]
    fn kind(&self) -> PyResult<&'static str> {
        self.inner
            .as_ref()
            .map(AnyPartialFit::kind)
            .ok_or_else(spent)
    }

    /// Whether its first pass has ended.
    #[getter]
    fn in_second_pass(&self) -> PyResult<bool> {
        self.inner
            .as_ref()
            .map(AnyPartialFit::in_second_pass)
            .ok_or_else(spent)
    }

    /// Merges `other` (spent afterwards) into this one.
    fn merge(slf: &Bound<'_, Self>, other: &Bound<'_, Self>) -> PyResult<()> {
        if slf.is(other) {
            return Err(raise_as(
                "InvalidInput",
                "a partial fit cannot merge with itself".into(),
            ));
        }
        let theirs = other.borrow_mut().inner.take().ok_or_else(spent)?;
        let py = slf.py();
        let mut me = slf.borrow_mut();
        let mine = me.live()?;
        py.detach(|| mine.merge(theirs)).or_raise()
    }

    /// Ends the first pass; True when a second pass over every shard is
    /// needed.
    fn end_first_pass(&mut self, py: Python<'_>) -> PyResult<bool> {
        let mine = self.live()?;
        py.detach(|| mine.end_first_pass()).or_raise()
    }

    /// Adds a shard to the pass it is in.
    #[pyo3(signature = (layers=None, logits=None, head=None, labels=None))]
    fn update<'py>(
        &mut self,
        py: Python<'py>,
        layers: Layers<'py>,
        logits: Option<PyReadonlyArray2<'py, f32>>,
        head: Head<'py>,
        labels: Option<PyReadonlyArray1<'py, i64>>,
    ) -> PyResult<()> {
        let arrays = Arrays::new(layers, logits, head, labels);
        let data = arrays.precomputed().or_raise()?;
        let mine = self.live()?;
        py.detach(|| mine.update_precomputed(&data)).or_raise()
    }

    /// The fitted detector (this partial fit is spent).
    fn finish(&mut self, py: Python<'_>) -> PyResult<Detector> {
        let mine = self.inner.take().ok_or_else(spent)?;
        let inner = py.detach(|| mine.finish()).or_raise()?;
        Ok(Detector { inner })
    }

    /// Writes the partial fit's file.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let mine = self.inner.as_ref().ok_or_else(spent)?;
        py.detach(|| mine.save(&path)).or_raise()
    }

    /// The partial fit file's bytes.
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let mine = self.inner.as_ref().ok_or_else(spent)?;
        let bytes = py
            .detach(|| saved_bytes(|path| mine.save(path)))
            .or_raise()?;
        Ok(PyBytes::new(py, &bytes))
    }
}

/// A fitted detector (calibrated or not).
#[pyclass(module = "oodkit._native", name = "Detector", frozen)]
struct Detector {
    inner: AnyDetector,
}

#[pymethods]
impl Detector {
    /// The kind's name, e.g. "KNN".
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    /// The calibration's false-alarm rate α, or None.
    #[getter]
    fn alpha(&self) -> Option<f64> {
        self.inner.calibration().map(|(_, alpha)| alpha)
    }

    /// Scores, and the logits the detector saw (N, classes; (N, 0)
    /// without logits).
    #[pyo3(signature = (layers=None, logits=None, head=None))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        layers: Layers<'py>,
        logits: Option<PyReadonlyArray2<'py, f32>>,
        head: Head<'py>,
    ) -> PyResult<Scored<'py>> {
        let arrays = Arrays::new(layers, logits, head, None);
        let data = arrays.precomputed().or_raise()?;
        let out = py
            .detach(|| self.inner.score_precomputed(&data))
            .or_raise()?;
        Ok((out.scores.into_pyarray(py), out.logits.into_pyarray(py)))
    }

    /// A copy calibrated on held-out in-distribution arrays at level α.
    #[pyo3(signature = (alpha, layers=None, logits=None, head=None))]
    fn calibrate<'py>(
        &self,
        py: Python<'py>,
        alpha: f64,
        layers: Layers<'py>,
        logits: Option<PyReadonlyArray2<'py, f32>>,
        head: Head<'py>,
    ) -> PyResult<Detector> {
        let arrays = Arrays::new(layers, logits, head, None);
        let data = arrays.precomputed().or_raise()?;
        let copy = self.copy()?;
        let inner = py
            .detach(|| copy.calibrate_precomputed(&data, alpha))
            .or_raise()?;
        Ok(Detector { inner })
    }

    /// Scores, p-values, verdicts (True: OOD) and predicted classes (-1
    /// without logits).
    #[pyo3(signature = (layers=None, logits=None, head=None))]
    fn verdicts<'py>(
        &self,
        py: Python<'py>,
        layers: Layers<'py>,
        logits: Option<PyReadonlyArray2<'py, f32>>,
        head: Head<'py>,
    ) -> PyResult<Decided<'py>> {
        let arrays = Arrays::new(layers, logits, head, None);
        let data = arrays.precomputed().or_raise()?;
        let verdicts = py
            .detach(|| self.inner.verdicts_precomputed(&data))
            .or_raise()?;
        let scores: Array1<f32> = verdicts.iter().map(|v| v.score).collect();
        let p: Array1<f64> = verdicts.iter().map(|v| v.p_value).collect();
        let ood: Array1<bool> = verdicts.iter().map(|v| v.is_ood).collect();
        let classes: Array1<i64> = verdicts.iter().map(|v| v.class).collect();
        Ok((
            scores.into_pyarray(py),
            p.into_pyarray(py),
            ood.into_pyarray(py),
            classes.into_pyarray(py),
        ))
    }

    /// Writes the detector file (atomically).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path)).or_raise()
    }

    /// The detector file's bytes (what pickling ships).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py.detach(|| file_bytes(&self.inner)).or_raise()?;
        Ok(PyBytes::new(py, &bytes))
    }
}

impl Detector {
    /// An independent copy (through its file: detectors are not `Clone`).
    fn copy(&self) -> PyResult<AnyDetector> {
        let bytes = file_bytes(&self.inner).or_raise()?;
        detector_from_bytes(&bytes).or_raise()
    }
}

/// The bytes of `detector`'s file.
fn file_bytes(detector: &AnyDetector) -> oodkit::Result<Vec<u8>> {
    saved_bytes(|path| detector.save(path))
}

/// A detector read from a file's bytes.
fn detector_from_bytes(bytes: &[u8]) -> oodkit::Result<AnyDetector> {
    loaded_from_bytes(bytes, |path| AnyDetector::load(path))
}

/// What `save` writes to a temporary file, as bytes (the crate's writers
/// take paths).
fn saved_bytes(save: impl FnOnce(&Path) -> oodkit::Result<()>) -> oodkit::Result<Vec<u8>> {
    let dir = tempfile::tempdir().map_err(|e| io_error("creating a temporary folder", e))?;
    let path = dir.path().join("file.oodkit");
    save(&path)?;
    std::fs::read(&path).map_err(|e| io_error("reading the temporary file", e))
}

/// What `load` reads from `bytes` written to a temporary file (the
/// crate's readers take paths).
fn loaded_from_bytes<T>(
    bytes: &[u8],
    load: impl FnOnce(&Path) -> oodkit::Result<T>,
) -> oodkit::Result<T> {
    let dir = tempfile::tempdir().map_err(|e| io_error("creating a temporary folder", e))?;
    let path = dir.path().join("file.oodkit");
    std::fs::write(&path, bytes).map_err(|e| io_error("writing the temporary file", e))?;
    load(&path)
}

fn io_error(what: &str, e: std::io::Error) -> oodkit::Error {
    oodkit::Error::custom(format!("{what}: {e}"))
}

/// Conformal calibration of any scores: held-out in-distribution scores
/// give each new score its p-value and, at a level α, a verdict.
#[pyclass(module = "oodkit._native", name = "Calibration", frozen)]
struct Calibration {
    inner: oodkit::calibration::Calibration,
}

#[pymethods]
impl Calibration {
    #[new]
    fn new(py: Python<'_>, id_scores: PyReadonlyArray1<'_, f32>) -> PyResult<Self> {
        let scores = id_scores.as_array();
        let inner = py
            .detach(|| oodkit::calibration::Calibration::fit(scores))
            .or_raise()?;
        Ok(Calibration { inner })
    }

    /// The number of calibration scores.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The score above which a share α of the calibration scores lie.
    fn threshold(&self, alpha: f64) -> PyResult<f32> {
        self.inner.threshold(alpha).or_raise()
    }

    /// P-values and verdicts (True: OOD at level α) of `scores`.
    fn decide<'py>(
        &self,
        py: Python<'py>,
        scores: PyReadonlyArray1<'py, f32>,
        alpha: f64,
    ) -> PyResult<PValues<'py>> {
        let scores = scores.as_array();
        let verdicts = py
            .detach(|| self.inner.verdicts(scores, None, alpha))
            .or_raise()?;
        let p: Array1<f64> = verdicts.iter().map(|v| v.p_value).collect();
        let ood: Array1<bool> = verdicts.iter().map(|v| v.is_ood).collect();
        Ok((p.into_pyarray(py), ood.into_pyarray(py)))
    }
}

/// Builds the kind named `name` with `params` (numbers or words) and,
/// for a feature detector, the layers it reads (names or indices).
#[pyfunction]
#[pyo3(signature = (name, params, layers=None))]
fn build(
    name: &str,
    params: &Bound<'_, PyDict>,
    layers: Option<Vec<Bound<'_, PyAny>>>,
) -> PyResult<Unfitted> {
    let registration = registry::find(name).or_raise()?;
    let mut built = Params::new();
    for (key, value) in params.iter() {
        let key: String = key.extract()?;
        let value = if let Ok(text) = value.extract::<String>() {
            ParamValue::Text(text)
        } else if let (false, Ok(number)) = (
            value.is_instance_of::<pyo3::types::PyBool>(),
            value.extract::<f64>(),
        ) {
            ParamValue::Number(number)
        } else {
            return Err(raise_as(
                "InvalidInput",
                format!("invalid value for {key}: {value} (give a number or a word)"),
            ));
        };
        built = built.set(&key, value);
    }
    if let Some(layers) = layers {
        let ids = layers
            .iter()
            .map(|layer| {
                if let Ok(index) = layer.extract::<isize>() {
                    Ok(oodkit::model::LayerId::from(index))
                } else {
                    layer
                        .extract::<String>()
                        .map(oodkit::model::LayerId::from)
                        .map_err(|_| {
                            raise_as(
                                "InvalidInput",
                                format!(
                                    "invalid layer {layer}: name each layer by its name or its \
                                     index (-2: the penultimate)"
                                ),
                            )
                        })
                }
            })
            .collect::<PyResult<Vec<_>>>()?;
        built = built.with_layers(ids);
    }
    Ok(Unfitted {
        inner: registration.build(&built).or_raise()?,
    })
}

/// Every registered kind: (name, kind, summary, [(parameter, doc)],
/// needs fit data, needs labels).
#[pyfunction]
fn kinds(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let rows: Vec<_> = registry::all()
        .into_iter()
        .map(|r| {
            let params: Vec<(&str, &str)> = r.params().iter().map(|p| (p.name, p.doc)).collect();
            let needs = r.needs();
            (
                r.name(),
                r.kind(),
                r.summary(),
                params,
                needs.fit_data,
                needs.labels,
            )
        })
        .collect();
    PyList::new(py, rows)
}

/// Reads a detector file of any kind.
#[pyfunction]
fn load(py: Python<'_>, path: PathBuf) -> PyResult<Detector> {
    let inner = py.detach(|| AnyDetector::load(&path)).or_raise()?;
    Ok(Detector { inner })
}

/// A detector from its file's bytes (unpickling).
#[pyfunction]
fn from_bytes(py: Python<'_>, bytes: &[u8]) -> PyResult<Detector> {
    let bytes = bytes.to_vec();
    let inner = py.detach(|| detector_from_bytes(&bytes)).or_raise()?;
    Ok(Detector { inner })
}

/// The named metrics of ID scores against OOD scores, in order.
#[pyfunction]
fn bench_metrics(
    py: Python<'_>,
    scores_in: PyReadonlyArray1<'_, f32>,
    scores_out: PyReadonlyArray1<'_, f32>,
    names: Vec<String>,
) -> PyResult<Vec<(String, f64)>> {
    let (a, b) = (scores_in.as_array(), scores_out.as_array());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let report = py
        .detach(|| metrics::bench_metrics(a, b, &names))
        .or_raise()?;
    Ok(report.iter().map(|(n, v)| (n.to_owned(), v)).collect())
}

/// The ROC curve: (fpr, tpr, thresholds).
#[pyfunction]
fn roc_curve<'py>(
    py: Python<'py>,
    scores_in: PyReadonlyArray1<'py, f32>,
    scores_out: PyReadonlyArray1<'py, f32>,
) -> PyResult<Curve<'py>> {
    let (a, b) = (scores_in.as_array(), scores_out.as_array());
    let curve = py.detach(|| metrics::roc_curve(a, b)).or_raise()?;
    Ok((
        Array1::from(curve.fpr).into_pyarray(py),
        Array1::from(curve.tpr).into_pyarray(py),
        Array1::from(curve.thresholds).into_pyarray(py),
    ))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Unfitted>()?;
    m.add_class::<Detector>()?;
    m.add_class::<Partial>()?;
    m.add_class::<Calibration>()?;
    m.add_function(wrap_pyfunction!(build, m)?)?;
    m.add_function(wrap_pyfunction!(kinds, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(from_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(bench_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(roc_curve, m)?)?;
    Ok(())
}
