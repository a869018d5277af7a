//! Any network exported to ONNX (from PyTorch, Keras, ...), run by `tract`
//! (pure Rust, nothing downloaded at run time). Feature `onnx`.

use std::path::Path;
use std::sync::Arc;

use ndarray::{Array1, Array2, Array4, ArrayView4, Axis, concatenate};
use rayon::prelude::*;
use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, TValue, Tensor, TypedRunnableModel, tvec,
};

use super::closure::LOGITS;
use super::onnx_head::{Reason, affine_head, head_unreadable, last_layer_input};
use super::{FeatureModel, LastLayer, LayerId, Model, ModelOutput, pick_layers, resolve_layers};
use crate::error::{Error, Result};

/// The fewest inputs a thread runs when a batch is split across threads.
const MIN_PART: usize = 8;

/// An ONNX graph as a [`Model`] and a [`FeatureModel`]: `(N, C, H, W)`
/// `f32` batches in, its first output (the logits, `(N, classes)`) out,
/// and any named intermediate outputs as features (flattened to `(N, D)`).
///
/// When the logits are a `Gemm` (or a `MatMul` then an `Add`) with constant
/// weights on the last feature layer named, as PyTorch exports a final
/// `Linear`, those weights are its
/// [`head_parameters`](LastLayer::head_parameters), so ViM runs on it.
///
/// The batch size is whatever the graph declares: a dynamic first axis
/// (`torch.onnx.export(..., dynamic_axes={"input": {0: "batch"}})`) takes
/// any batch; a fixed one takes only that size, and another batch is an
/// error saying so.
///
/// ```no_run
/// use oodkit::detectors::{Detector, Knn, Mls};
/// use oodkit::model::OnnxModel;
///
/// // Exported from PyTorch with a dynamic batch axis.
/// let model = OnnxModel::load_with_features("resnet.onnx", &["penultimate"])?;
/// let mut mls = Mls::new();
/// mls.fit(&model, None)?;
/// let mut knn = Knn::new(50)?;
/// # let fit_data: oodkit::OodDataset = unimplemented!();
/// knn.fit(&model, Some(&fit_data))?;
/// # Ok::<(), oodkit::Error>(())
/// ```
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    /// The feature outputs, then the logits.
    layer_names: Vec<String>,
    /// The batch size the graph fixes, if it does.
    fixed_batch: Option<usize>,
    /// The input's channels, height and width where the graph fixes them
    /// (the batch is `fixed_batch`'s).
    input_dims: [Option<usize>; 4],
    /// The last layer read from the graph, or why it could not be.
    head: std::result::Result<(Array2<f32>, Array1<f32>), Reason>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("layer_names", &self.layer_names)
            .field("fixed_batch", &self.fixed_batch)
            .finish_non_exhaustive()
    }
}

/// A tract error as ours, naming what was being done.
fn tract_error(what: &str, path: &Path) -> impl Fn(tract_onnx::prelude::TractError) -> Error {
    let (what, path) = (what.to_owned(), path.to_path_buf());
    move |e| Error::backend_with(format!("ONNX ({}): {what}", path.display()), e)
}

/// The folder beside the graph (its external data lives there).
pub(super) fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The graph's protobuf alone (no weights read), checked to exist.
pub(super) fn read_proto(path: &Path) -> Result<tract_onnx::pb::ModelProto> {
    if !path.is_file() {
        return Err(Error::MissingFile {
            path: path.to_path_buf(),
            hint: "give the path of an .onnx file".into(),
        });
    }
    tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| Error::corrupt(path, None, format!("not a readable ONNX graph: {e:#}")))
}

/// Errors naming the file when a tensor's external data (the `.onnx.data`
/// today's PyTorch exporter writes) is not beside the graph.
pub(super) fn missing_external_data(
    proto: &tract_onnx::pb::ModelProto,
    dir: &Path,
    path: &Path,
) -> Result<()> {
    let Some(graph) = proto.graph.as_ref() else {
        return Ok(());
    };
    for tensor in &graph.initializer {
        let Some(location) = tensor
            .external_data
            .iter()
            .find(|e| e.key == "location")
            .map(|e| e.value.as_str())
        else {
            continue;
        };
        let data = dir.join(location);
        if data.exists() && !data.is_file() {
            return Err(Error::InvalidParameter {
                name: "external data",
                value: data.display().to_string(),
                reason: format!(
                    "{} keeps its weights there, but it is not a regular file (a folder, a pipe \
                     or a device): put the graph's .data file there",
                    path.display()
                ),
            });
        }
        if !data.is_file() {
            return Err(Error::MissingFile {
                path: dir.join(location),
                hint: format!(
                    "{} keeps its weights in this file: copy it beside the graph (or export \
                     with external_data=False to keep them inside)",
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// The name of the graph's first output: the logits.
pub(super) fn logits_name(graph: &tract_onnx::pb::GraphProto, path: &Path) -> Result<String> {
    graph
        .output
        .first()
        .map(|o| o.name.clone())
        .ok_or_else(|| Error::corrupt(path, None, "the graph has no output"))
}

/// One output of a run over `n` inputs as `(N, D)`: its `values` in
/// standard layout, of `shape`, which must have a row per input. The
/// `logits` (the graph's first output) must be `(N, K)`, `K >= 2`: a graph
/// whose first output is something else is an error, never scored.
pub(super) fn output_rows(
    what: &str,
    n: usize,
    shape: &[usize],
    values: Vec<f32>,
    logits: bool,
) -> Result<Array2<f32>> {
    if shape.first().copied().unwrap_or(0) != n {
        return Err(Error::ShapeMismatch {
            what: what.into(),
            expected: format!("({n}, ...): one row per input"),
            found: format!("{shape:?}"),
        });
    }
    if logits && (shape.len() != 2 || shape[1] < 2) {
        return Err(Error::ShapeMismatch {
            what: format!("{what}, the graph's first output, read as its logits"),
            expected: format!(
                "({n}, K): one logit per class (K at least 2); export the classifier with its \
                 logits as the first output (before softmax; no probabilities, no single score)"
            ),
            found: format!("{shape:?}"),
        });
    }
    let width = values.len() / n.max(1);
    Ok(Array2::from_shape_vec((n, width), values)?)
}

/// Checks a batch of `shape` against the graph's input `dims` (`None`
/// where the graph leaves a dimension free): a clash is an error that
/// says what the graph takes and how to give it that.
pub(super) fn check_input(dims: &[Option<usize>; 4], shape: &[usize]) -> Result<()> {
    if !dims
        .iter()
        .zip(shape)
        .any(|(dim, &size)| dim.is_some_and(|d| d != size))
    {
        return Ok(());
    }
    let show = |d: &Option<usize>| d.map_or("any".to_owned(), |d| d.to_string());
    let batch = dims[0].is_some_and(|d| d != shape[0]);
    let advice = if batch {
        "the graph fixes its batch size: export it with a dynamic batch axis"
    } else {
        "the images' channels and size must be the graph's: --channels grey|rgb and \
         --size HxW on the command line (ImageFolder::channels and ImageFolder::fit)"
    };
    Err(Error::ShapeMismatch {
        what: "input batch (N, C, H, W) for the ONNX graph".into(),
        expected: format!(
            "({}, {}, {}, {}); {advice}",
            show(&dims[0]),
            show(&dims[1]),
            show(&dims[2]),
            show(&dims[3]),
        ),
        found: format!("{shape:?}"),
    })
}

/// The outputs of a run (the feature layers, then the logits) as the
/// layers at `positions` and the logits.
pub(super) fn split_outputs(mut all: Vec<Array2<f32>>, positions: &[usize]) -> Result<ModelOutput> {
    let logits = all
        .pop()
        .ok_or_else(|| Error::backend("the ONNX graph returned nothing"))?;
    let features = pick_layers(positions, &all, &logits);
    Ok(ModelOutput { features, logits })
}

/// The node of `model` that a layer `name` designates: a node of that
/// name, else the node computing a value of that name (its first output).
fn node_of(
    model: &tract_onnx::prelude::InferenceModel,
    graph: Option<&tract_onnx::pb::GraphProto>,
    name: &str,
    path: &Path,
) -> Result<String> {
    if model.node_by_name(name).is_ok() {
        return Ok(name.to_owned());
    }
    let node = graph.and_then(|g| super::onnx_head::producer(g, name));
    match node {
        Some(node) if node.output.first().is_some_and(|o| o == name) => {
            if model.node_by_name(&node.name).is_ok() {
                Ok(node.name.clone())
            } else {
                Err(Error::InvalidParameter {
                    name: "layer",
                    value: name.to_owned(),
                    reason: format!("its node has no name tract knows in {}", path.display()),
                })
            }
        }
        Some(node) => Err(Error::InvalidParameter {
            name: "layer",
            value: name.to_owned(),
            reason: format!(
                "is not the first output of its node {:?}: name a node or a first output",
                node.name
            ),
        }),
        None => Err(Error::InvalidParameter {
            name: "layer",
            value: name.to_owned(),
            reason: format!(
                "no node or value of that name in {} (`oodkit inspect` lists them)",
                path.display()
            ),
        }),
    }
}

impl OnnxModel {
    /// Loads the graph at `path`; its first output is the logits.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_features(path, &[])
    }

    /// Loads the graph at `path` and also exposes the outputs of the nodes
    /// named in `features` (in that order) as feature layers, before the
    /// logits (the graph's first output). An unknown name is an error.
    pub fn load_with_features(path: impl AsRef<Path>, features: &[&str]) -> Result<Self> {
        let path = path.as_ref();
        let unreadable = |e: tract_onnx::prelude::TractError| {
            Error::corrupt(path, None, format!("not a readable ONNX graph: {e:#}"))
        };
        let onnx = tract_onnx::onnx();
        let proto = read_proto(path)?;
        let dir = folder_of(path);
        missing_external_data(&proto, dir, path)?;
        // The folder resolves weights stored beside the graph.
        let parsed = onnx.parse(&proto, dir.to_str()).map_err(unreadable)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(Error::corrupt(
                path,
                None,
                format!(
                    "its graph reads undefined values {:?}",
                    parsed.unresolved_inputs
                ),
            ));
        }
        let mut model = parsed.model;
        let logits = model
            .output_outlets()
            .map_err(tract_error("reading its outputs", path))?
            .first()
            .copied()
            .ok_or_else(|| Error::corrupt(path, None, "the graph has no output"))?;
        let logits_name = model
            .outlet_labels
            .get(&logits)
            .cloned()
            .unwrap_or_else(|| model.node(logits.node).name.clone());
        let mut names: Vec<String> = features.iter().map(|s| (*s).to_owned()).collect();
        // A layer is a node's name or the name of a value a node computes
        // (e.g. an output named at export): the node is what tract selects.
        let graph = proto.graph.as_ref();
        let mut outputs = names
            .iter()
            .map(|name| node_of(&model, graph, name, path))
            .collect::<Result<Vec<String>>>()?;
        let head = match graph.and_then(|g| Some((g, g.output.first()?))) {
            Some((graph, output)) => {
                affine_head(graph, dir, &output.name, features.last().copied())
            }
            None => Err("the graph declares no output".to_owned()),
        };
        outputs.push(logits_name);
        model
            .select_outputs_by_name(&outputs)
            .map_err(tract_error("selecting the outputs", path))?;
        let typed = model
            .into_optimized()
            .map_err(tract_error("analysing the graph", path))?;
        let input = typed
            .input_fact(0)
            .map_err(tract_error("reading its input", path))?;
        if input.rank() != 4 {
            return Err(Error::Unsupported {
                what: format!("an ONNX input of rank {}", input.rank()),
                hint: "OnnxModel takes image batches (N, C, H, W)".into(),
            });
        }
        let fixed_batch = input.shape[0].to_i64().ok().map(|b| b as usize);
        // The batch is checked on its own (a fixed batch is run in parts).
        let mut input_dims = [None; 4];
        for (k, dim) in input_dims.iter_mut().enumerate().skip(1) {
            *dim = input.shape[k].to_i64().ok().map(|d| d as usize);
        }
        let plan = typed
            .into_runnable()
            .map_err(tract_error("planning the graph", path))?;
        names.push(LOGITS.to_owned());
        Ok(OnnxModel {
            plan,
            layer_names: names,
            fixed_batch,
            input_dims,
            head,
        })
    }

    /// The value the graph's last linear layer reads — the features it maps
    /// to the logits (the graph's first output): the default feature layer
    /// of a graph. Errors saying why when the logits do not come from a
    /// `Gemm` (or a `MatMul` then an `Add`).
    pub fn last_layer_input(path: impl AsRef<Path>) -> Result<String> {
        let path = path.as_ref();
        let proto = read_proto(path)?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| Error::corrupt(path, None, "the file holds no graph"))?;
        last_layer_input(graph, &logits_name(graph, path)?)
            .map(|(input, _)| input)
            .map_err(|reason| Error::Unsupported {
                what: format!("finding the feature layer of {}", path.display()),
                hint: format!("{reason}; name the layer explicitly"),
            })
    }

    /// The batch size the graph fixes, `None` when it is dynamic.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// Runs the graph; every output flattened to `(N, D)`.
    /// Runs the graph on a batch: tract runs a graph on one thread, so a
    /// batch of a dynamic-batch graph is cut into one part per thread of
    /// rayon's pool (parts of at least [`MIN_PART`] inputs), run side by
    /// side and joined in order.
    fn run(&self, inputs: Array4<f32>) -> Result<Vec<Array2<f32>>> {
        let n = inputs.shape()[0];
        let parts = rayon::current_num_threads().min(n / MIN_PART).max(1);
        if parts < 2 || self.fixed_batch.is_some() {
            return self.run_one(inputs);
        }
        let size = n.div_ceil(parts);
        let pieces: Vec<Array4<f32>> = inputs
            .axis_chunks_iter(Axis(0), size)
            .map(|part| part.to_owned())
            .collect();
        drop(inputs);
        let outputs = pieces
            .into_par_iter()
            .map(|part| self.run_one(part))
            .collect::<Result<Vec<_>>>()?;
        let count = outputs.first().map_or(0, Vec::len);
        (0..count)
            .map(|k| {
                let views: Vec<_> = outputs.iter().map(|o| o[k].view()).collect();
                Ok(concatenate(Axis(0), &views)?)
            })
            .collect()
    }

    fn run_one(&self, inputs: Array4<f32>) -> Result<Vec<Array2<f32>>> {
        let n = inputs.shape()[0];
        if let Some(fixed) = self.fixed_batch
            && fixed != n
        {
            return Err(Error::ShapeMismatch {
                what: "batch for the ONNX graph".into(),
                expected: format!(
                    "{fixed} inputs: the graph fixes its batch size (prepare batches of \
                     {fixed}, or export it with a dynamic batch axis)"
                ),
                found: format!("{n}"),
            });
        }
        let shape = inputs.shape().to_vec();
        check_input(&self.input_dims, &shape)?;
        let failed = || format!("the ONNX graph failed on inputs of shape {shape:?}");
        // tract panics on some shapes it cannot compute (e.g. a size that
        // overflows): an error for the caller, not the end of the process.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.plan.run(tvec![TValue::from(Tensor::from(inputs))])
        }));
        let outputs = match run {
            Ok(outputs) => outputs.map_err(|e| Error::backend_with(failed(), e))?,
            Err(_) => {
                return Err(Error::backend(format!(
                    "{} (tract stopped on them): check that the images' channels and size \
                     are the graph's (oodkit inspect shows its input)",
                    failed()
                )));
            }
        };
        let last = outputs.len().saturating_sub(1);
        outputs
            .iter()
            .enumerate()
            .map(|(k, value)| {
                let view = value
                    .to_plain_array_view::<f32>()
                    .map_err(|e| Error::backend_with("an ONNX output is not f32", e))?;
                let values = match view.as_slice() {
                    Some(values) => values.to_vec(),
                    None => view.iter().copied().collect(),
                };
                output_rows("ONNX output", n, view.shape(), values, k == last)
            })
            .collect()
    }
}

impl Model for OnnxModel {
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>> {
        self.forward_owned(inputs.to_owned())
    }

    fn forward_owned(&self, inputs: Array4<f32>) -> Result<Array2<f32>> {
        let mut outputs = self.run(inputs)?;
        outputs
            .pop()
            .ok_or_else(|| Error::backend("the ONNX graph returned nothing"))
    }

    fn as_features(&self) -> Option<&dyn FeatureModel> {
        Some(self)
    }

    /// Always: reading it says why when the graph's last layer is not a
    /// `Gemm` (or `MatMul` then `Add`) of the named feature layer.
    fn as_last_layer(&self) -> Option<&dyn LastLayer> {
        Some(self)
    }
}

impl FeatureModel for OnnxModel {
    fn layer_names(&self) -> Vec<String> {
        self.layer_names.clone()
    }

    fn forward_features(&self, inputs: ArrayView4<f32>, layers: &[LayerId]) -> Result<ModelOutput> {
        self.forward_features_owned(inputs.to_owned(), layers)
    }

    fn forward_features_owned(
        &self,
        inputs: Array4<f32>,
        layers: &[LayerId],
    ) -> Result<ModelOutput> {
        let positions = resolve_layers(layers, &self.layer_names)?;
        split_outputs(self.run(inputs)?, &positions)
    }
}

impl LastLayer for OnnxModel {
    /// The last layer, read from the graph's constants when the logits are
    /// a `Gemm` (or a `MatMul` then an `Add`) of the last feature layer
    /// named at load; else an [`Error::Unsupported`] saying why.
    fn head_parameters(&self) -> Result<(Array2<f32>, Array1<f32>)> {
        self.head.clone().map_err(|reason| head_unreadable(&reason))
    }
}
