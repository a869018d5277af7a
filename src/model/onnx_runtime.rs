//! Any ONNX graph run by ONNX Runtime (Microsoft's engine, multi-threaded,
//! with GPU execution providers), loaded from its shared library at run
//! time: nothing is downloaded or linked at build time. Feature
//! `onnxruntime`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use ndarray::{Array1, Array2, Array4, ArrayView4};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;
use prost::Message;
use tract_onnx::pb::{GraphProto, ModelProto, ValueInfoProto};

use super::closure::LOGITS;
use super::onnx::{
    check_input, folder_of, logits_name, missing_external_data, output_rows, read_proto,
    split_outputs,
};
use super::onnx_head::{Reason, affine_head, head_unreadable, producer};
use super::{FeatureModel, LastLayer, LayerId, Model, ModelOutput, resolve_layers};
use crate::error::{Error, Result};

/// The environment variable naming ONNX Runtime's shared library
/// (`libonnxruntime.so`, `libonnxruntime.dylib`, `onnxruntime.dll`).
pub const LIBRARY_VARIABLE: &str = "ORT_DYLIB_PATH";

/// Where ONNX Runtime runs the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU, on every core (or [`RuntimeOptions::threads`]).
    #[default]
    Cpu,
    /// An NVIDIA GPU by its index, through ONNX Runtime's CUDA execution
    /// provider: it needs a CUDA build of the library (the
    /// `onnxruntime-gpu` Python package) and CUDA / cuDNN installed. A
    /// library or machine without it is an error, never a silent fall
    /// back to the CPU.
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(0) => f.write_str("cuda"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    /// `cpu`, `cuda` (the first GPU) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidParameter {
            name: "device",
            value: s.to_owned(),
            reason: "expected cpu, cuda or cuda:N (N the GPU's index)".into(),
        };
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

/// How ONNX Runtime is loaded and run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Where the graph runs.
    pub device: Device,
    /// Threads of one batch's computation; `None` is every core.
    pub threads: Option<usize>,
    /// ONNX Runtime's shared library; `None` finds it (see
    /// [`find_library`]).
    pub library: Option<PathBuf>,
}

/// The library once loaded, and the one environment ONNX Runtime allows a
/// process.
struct Runtime {
    library: PathBuf,
    environment: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises the first load (the library and the environment are set
/// once per process).
static LOADING: Mutex<()> = Mutex::new(());

/// The file name of ONNX Runtime's library on this system.
fn library_file_name(name: &str) -> bool {
    if cfg!(target_os = "windows") {
        name.eq_ignore_ascii_case("onnxruntime.dll")
    } else if cfg!(target_os = "macos") {
        name.starts_with("libonnxruntime") && name.ends_with(".dylib")
    } else {
        name == "libonnxruntime.so" || name.starts_with("libonnxruntime.so.")
    }
}

/// The library in `dir`, if one is there (the highest version when a
/// folder holds several).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_str().is_some_and(library_file_name))
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// The `onnxruntime/capi` folders of the Python installations under
/// `prefix` (`lib/python3.X/site-packages`, `dist-packages`, Windows'
/// `Lib/site-packages`).
fn python_package_dirs(prefix: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![prefix.join("Lib/site-packages/onnxruntime/capi")];
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .map(|e| e.path())
            .collect();
        pythons.sort();
        for python in pythons.iter().rev() {
            for packages in ["site-packages", "dist-packages"] {
                dirs.push(python.join(packages).join("onnxruntime/capi"));
            }
        }
    }
    dirs
}

/// ONNX Runtime's shared library: the file named by `ORT_DYLIB_PATH`
/// when it is set, else the first found in the `onnxruntime` Python
/// package (`pip install onnxruntime`, or `onnxruntime-gpu`) of the active
/// virtual environment or conda environment, of the Pythons on `PATH`,
/// of the user's and the system's Pythons, else in the system's library
/// folders (`LD_LIBRARY_PATH`, `/usr/local/lib`, `/usr/lib`).
///
/// A set `ORT_DYLIB_PATH` naming no file, or no library anywhere, is an
/// error saying how to install one.
pub fn find_library() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(LIBRARY_VARIABLE).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::MissingFile {
                path,
                hint: format!(
                    "{LIBRARY_VARIABLE} names ONNX Runtime's library, but no file is there: set \
                     it to the libonnxruntime file (the onnxruntime Python package has it in \
                     onnxruntime/capi/) or unset it to let oodkit find one"
                ),
            });
        }
        return Ok(path);
    }
    let env_dir = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(|v| env_dir(v))
        .collect();
    // The Pythons on PATH: a virtual environment's bin folder is there
    // even when it is not activated.
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.ends_with("bin")
                && let Some(prefix) = dir.parent()
            {
                prefixes.push(prefix.to_path_buf());
            }
        }
    }
    if let Some(home) = env_dir("HOME") {
        prefixes.push(home.join(".local"));
    }
    prefixes.extend(["/usr/local", "/usr", "/opt/conda"].map(PathBuf::from));
    let mut dirs: Vec<PathBuf> = prefixes
        .iter()
        .flat_map(|p| python_package_dirs(p))
        .collect();
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    dirs.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
        ]
        .map(PathBuf::from),
    );
    dirs.iter()
        .find_map(|dir| library_in(dir))
        .ok_or_else(|| Error::MissingFile {
            path: PathBuf::from(if cfg!(target_os = "windows") {
                "onnxruntime.dll"
            } else {
                "libonnxruntime.so"
            }),
            hint: format!(
                "ONNX Runtime's library was not found: install it with `pip install onnxruntime` \
                 (or onnxruntime-gpu) in the active Python environment, or set {LIBRARY_VARIABLE} \
                 to a libonnxruntime file (ONNX Runtime 1.18 or newer)"
            ),
        })
}

/// The process's ONNX Runtime, loaded from `library` (or the one
/// [`find_library`] gives) the first time. A process loads one library:
/// asking for another afterwards is an error.
fn runtime(library: Option<&Path>) -> Result<&'static Runtime> {
    let _first = LOADING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(runtime) = RUNTIME.get() {
        return match library {
            Some(asked) if !same_file(asked, &runtime.library) => Err(Error::InvalidParameter {
                name: "ONNX Runtime library",
                value: asked.display().to_string(),
                reason: format!(
                    "this process already runs ONNX Runtime from {}, and a process loads one",
                    runtime.library.display()
                ),
            }),
            _ => Ok(runtime),
        };
    }
    let library = match library {
        Some(path) if path.is_file() => path.to_path_buf(),
        Some(path) => {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                hint: "give the path of ONNX Runtime's libonnxruntime file".into(),
            });
        }
        None => find_library()?,
    };
    // Absolute: ort resolves a relative path against the executable.
    let library = std::path::absolute(&library).map_err(|source| Error::Io {
        path: library.clone(),
        source,
    })?;
    let loading = |e: &dyn std::fmt::Display| Error::Backend {
        what: format!(
            "loading ONNX Runtime from {}: {e} (oodkit needs ONNX Runtime 1.18 or newer: \
             `pip install -U onnxruntime`, or set {LIBRARY_VARIABLE} to another \
             libonnxruntime file)",
            library.display()
        ),
        source: None,
    };
    let environment = ort::init_from(&library)
        .map_err(|e| loading(&e))?
        .with_name("oodkit")
        .build()
        .map_err(|e| loading(&e))?;
    // Its warnings (unused initialisers, ...) are not the user's concern.
    environment.set_log_level(ort::logging::LogLevel::Error);
    Ok(RUNTIME.get_or_init(|| Runtime {
        library,
        environment,
    }))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The value a layer `name` designates in `graph`: a value of that name
/// computed by a node, else the first output of the node of that name —
/// what `--layer` takes, as for tract.
fn value_of(graph: &GraphProto, name: &str, path: &Path) -> Result<String> {
    if producer(graph, name).is_some() {
        return Ok(name.to_owned());
    }
    match graph.node.iter().find(|n| n.name == name) {
        Some(node) => {
            node.output.first().cloned().ok_or_else(|| {
                Error::corrupt(path, None, format!("its node {name:?} has no output"))
            })
        }
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

/// An ONNX graph run by ONNX Runtime, as a [`Model`], a [`FeatureModel`]
/// and (when its logits are an affine layer of the last feature layer) a
/// [`LastLayer`] — what [`OnnxModel`](super::OnnxModel) gives through
/// tract, several times faster on a CPU and runnable on a GPU.
///
/// `(N, C, H, W)` `f32` batches in, the graph's first output (the logits)
/// out; the layers named at load (node names or value names, the feature
/// layers) are added to the graph's outputs, so one run gives them all.
/// ONNX Runtime's library is loaded when the first model is
/// ([`find_library`]); weights in external data (`net.onnx.data`) are read
/// from the graph's folder.
///
/// ```no_run
/// use oodkit::detectors::{Detector, Knn};
/// use oodkit::model::{Device, OnnxRuntimeModel, RuntimeOptions};
///
/// let options = RuntimeOptions { device: Device::Cpu, ..Default::default() };
/// let model = OnnxRuntimeModel::load_with_features("resnet.onnx", &["penultimate"], &options)?;
/// let mut knn = Knn::new(50)?;
/// # let fit_data: oodkit::OodDataset = unimplemented!();
/// knn.fit(&model, Some(&fit_data))?;
/// # Ok::<(), oodkit::Error>(())
/// ```
pub struct OnnxRuntimeModel {
    /// ONNX Runtime runs a session from one thread at a time (its own
    /// threads split the work).
    session: Mutex<Session>,
    input: String,
    /// The graph values fetched: the feature layers, then the logits.
    outputs: Vec<String>,
    /// The layers as named at load, then [`LOGITS`].
    layer_names: Vec<String>,
    /// The input's dimensions, `None` where the graph leaves one free.
    input_dims: [Option<usize>; 4],
    head: std::result::Result<(Array2<f32>, Array1<f32>), Reason>,
    device: Device,
}

impl fmt::Debug for OnnxRuntimeModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxRuntimeModel")
            .field("layer_names", &self.layer_names)
            .field("input_dims", &self.input_dims)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// An ONNX Runtime error as ours, naming what was being done.
fn runtime_error(what: String) -> impl FnOnce(ort::Error) -> Error {
    move |e| Error::Backend {
        what: format!("ONNX Runtime, {what}: {e}"),
        source: None,
    }
}

impl OnnxRuntimeModel {
    /// Loads the graph at `path` on the CPU (every core); its first output
    /// is the logits.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_features(path, &[], &RuntimeOptions::default())
    }

    /// Loads the graph at `path` and also exposes the values named in
    /// `features` (node names or value names, in that order) as feature
    /// layers, before the logits (the graph's first output). An unknown
    /// name, a graph that is not an image classifier, a library that
    /// cannot be loaded or a device it cannot use is an error.
    pub fn load_with_features(
        path: impl AsRef<Path>,
        features: &[&str],
        options: &RuntimeOptions,
    ) -> Result<Self> {
        let path = path.as_ref();
        if options.threads == Some(0) {
            return Err(Error::InvalidParameter {
                name: "threads",
                value: "0".into(),
                reason: "give at least one thread (or none for every core)".into(),
            });
        }
        let mut proto: ModelProto = read_proto(path)?;
        let dir = folder_of(path);
        missing_external_data(&proto, dir, path)?;
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| Error::corrupt(path, None, "the file holds no graph"))?;
        let logits = logits_name(graph, path)?;
        let mut outputs = features
            .iter()
            .map(|name| value_of(graph, name, path))
            .collect::<Result<Vec<String>>>()?;
        let head = affine_head(graph, dir, &logits, features.last().copied());
        for value in &outputs {
            if !graph.output.iter().any(|o| &o.name == value) {
                graph.output.push(ValueInfoProto {
                    name: value.clone(),
                    ..Default::default()
                });
            }
        }
        outputs.push(logits);
        let bytes = proto.encode_to_vec();
        drop(proto);

        let runtime = runtime(options.library.as_deref())?;
        let threads = match options.threads {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let building = |what: &str| {
            let what = format!("{what} for {}", path.display());
            move |e: ort::Error<ort::session::builder::SessionBuilder>| Error::Backend {
                what: format!("ONNX Runtime, {what}: {e}"),
                source: None,
            }
        };
        let folder = dir.to_str().ok_or_else(|| Error::InvalidParameter {
            name: "model path",
            value: path.display().to_string(),
            reason: "ONNX Runtime takes folders named in UTF-8: move the graph".into(),
        })?;
        let mut builder = Session::builder(&runtime.environment)
            .map_err(runtime_error("creating a session".into()))?
            .with_intra_threads(threads)
            .map_err(building("setting its threads"))?
            // The graph is given from memory: its external data is read
            // from the graph's own folder.
            .with_config_entry(
                "session.model_external_initializers_file_folder_path",
                folder,
            )
            .map_err(building("naming the folder of its external data"))?;
        if let Device::Cuda(index) = options.device {
            let index = i32::try_from(index).map_err(|_| Error::InvalidParameter {
                name: "device",
                value: options.device.to_string(),
                reason: "no GPU has such an index".into(),
            })?;
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(index)
                    .build()
                    .error_on_failure()])
                .map_err(|e| Error::Backend {
                    what: format!(
                        "ONNX Runtime from {} cannot run on {} ({e}): install onnxruntime-gpu \
                         with the CUDA and cuDNN versions it names, or run on the cpu",
                        runtime.library.display(),
                        options.device
                    ),
                    source: None,
                })?;
        }
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| Error::corrupt(path, None, format!("ONNX Runtime cannot run it: {e}")))?;
        let input_dims = Self::input_dims(&session, path)?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name().to_owned())
            .ok_or_else(|| Error::corrupt(path, None, "the graph has no input"))?;
        let mut layer_names: Vec<String> = features.iter().map(|s| (*s).to_owned()).collect();
        layer_names.push(LOGITS.to_owned());
        Ok(OnnxRuntimeModel {
            session: Mutex::new(session),
            input,
            outputs,
            layer_names,
            input_dims,
            head,
            device: options.device,
        })
    }

    /// The graph's one input: an `f32` image batch `(N, C, H, W)`.
    fn input_dims(session: &Session, path: &Path) -> Result<[Option<usize>; 4]> {
        let inputs = session.inputs();
        let [input] = inputs else {
            return Err(Error::Unsupported {
                what: format!("a graph with {} inputs ({})", inputs.len(), path.display()),
                hint: "oodkit runs image classifiers of one input, (N, C, H, W)".into(),
            });
        };
        let dtype = input.dtype();
        let (Some(shape), Some(ty)) = (dtype.tensor_shape(), dtype.tensor_type()) else {
            return Err(Error::Unsupported {
                what: format!("an ONNX input that is not a tensor ({})", path.display()),
                hint: "oodkit runs image classifiers of one input, (N, C, H, W)".into(),
            });
        };
        if ty != ort::value::TensorElementType::Float32 || shape.len() != 4 {
            return Err(Error::Unsupported {
                what: format!(
                    "an ONNX input of type {ty} and rank {} ({})",
                    shape.len(),
                    path.display()
                ),
                hint: "oodkit runs image classifiers of one f32 input, (N, C, H, W)".into(),
            });
        }
        let mut dims = [None; 4];
        for (dim, &size) in dims.iter_mut().zip(shape.iter()) {
            *dim = usize::try_from(size).ok();
        }
        Ok(dims)
    }

    /// The batch size the graph fixes, `None` when it is dynamic.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.input_dims[0]
    }

    /// Where the graph runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The ONNX Runtime library this process runs, once a model is loaded.
    pub fn library() -> Option<&'static Path> {
        RUNTIME.get().map(|r| r.library.as_path())
    }

    /// Runs the graph on a batch; every fetched output flattened to
    /// `(N, D)`, the logits last.
    fn run(&self, inputs: ArrayView4<f32>) -> Result<Vec<Array2<f32>>> {
        let shape = inputs.shape();
        let n = shape[0];
        check_input(&self.input_dims, shape)?;
        let inputs = inputs.as_standard_layout();
        let tensor = TensorRef::from_array_view(inputs.view())
            .map_err(runtime_error("taking the input batch".into()))?;
        let mut session = self.session.lock().map_err(|_| {
            Error::backend("an earlier run of this ONNX Runtime session panicked; load it again")
        })?;
        let results = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(runtime_error(format!(
                "running the graph on inputs of shape {shape:?}"
            )))?;
        let last = self.outputs.len().saturating_sub(1);
        self.outputs
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let value = results.get(name.as_str()).ok_or_else(|| {
                    Error::backend(format!("ONNX Runtime returned no output {name:?}"))
                })?;
                let (shape, values) =
                    value
                        .try_extract_tensor::<f32>()
                        .map_err(|e| Error::Backend {
                            what: format!("the ONNX output {name:?} is not f32: {e}"),
                            source: None,
                        })?;
                let shape: Vec<usize> = shape
                    .iter()
                    .map(|&d| usize::try_from(d).unwrap_or(0))
                    .collect();
                output_rows(
                    &format!("ONNX output {name:?}"),
                    n,
                    &shape,
                    values.to_vec(),
                    k == last,
                )
            })
            .collect()
    }
}

impl Model for OnnxRuntimeModel {
    fn forward(&self, inputs: ArrayView4<f32>) -> Result<Array2<f32>> {
        let mut outputs = self.run(inputs)?;
        outputs
            .pop()
            .ok_or_else(|| Error::backend("the ONNX graph returned nothing"))
    }

    fn forward_owned(&self, inputs: Array4<f32>) -> Result<Array2<f32>> {
        self.forward(inputs.view())
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

impl FeatureModel for OnnxRuntimeModel {
    fn layer_names(&self) -> Vec<String> {
        self.layer_names.clone()
    }

    fn forward_features(&self, inputs: ArrayView4<f32>, layers: &[LayerId]) -> Result<ModelOutput> {
        let positions = resolve_layers(layers, &self.layer_names)?;
        split_outputs(self.run(inputs)?, &positions)
    }
}

impl LastLayer for OnnxRuntimeModel {
    /// The last layer, read from the graph's constants when the logits are
    /// a `Gemm` (or a `MatMul` then an `Add`) of the last feature layer
    /// named at load; else an [`Error::Unsupported`] saying why.
    fn head_parameters(&self) -> Result<(Array2<f32>, Array1<f32>)> {
        self.head.clone().map_err(|reason| head_unreadable(&reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_from_their_names() {
        assert_eq!("cpu".parse::<Device>().ok(), Some(Device::Cpu));
        assert_eq!("cuda".parse::<Device>().ok(), Some(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>().ok(), Some(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            assert!(bad.parse::<Device>().is_err(), "{bad:?} parsed");
        }
        for device in [Device::Cpu, Device::Cuda(0), Device::Cuda(2)] {
            assert_eq!(device.to_string().parse::<Device>().ok(), Some(device));
        }
    }

    #[test]
    fn library_names_are_recognised() {
        if cfg!(target_os = "linux") {
            assert!(library_file_name("libonnxruntime.so"));
            assert!(library_file_name("libonnxruntime.so.1.30.0"));
            assert!(!library_file_name("libonnxruntime_providers_shared.so"));
            assert!(!library_file_name("onnxruntime_pybind11_state.so"));
        }
    }

    #[test]
    fn a_library_is_found_in_a_python_environment() {
        let prefix = tempfile::tempdir().unwrap();
        let capi = prefix
            .path()
            .join("lib/python3.12/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        assert!(python_package_dirs(prefix.path()).contains(&capi));
        if cfg!(target_os = "linux") {
            assert_eq!(library_in(&capi), None);
            std::fs::write(capi.join("libonnxruntime.so.1.30.0"), b"").unwrap();
            std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").unwrap();
            assert_eq!(
                library_in(&capi),
                Some(capi.join("libonnxruntime.so.1.30.0"))
            );
        }
    }
}
