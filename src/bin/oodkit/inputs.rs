//! The options every command that runs a network shares: which network,
//! and how the images of a folder become its inputs.

use std::path::{Path, PathBuf};

use oodkit::datasets::image_folder::{Channels, Fit, FolderBatches, ImageFolder};
use oodkit::datasets::transforms::imagenet_preprocess;
use oodkit::detectors::AnyModel;
use oodkit::model::{BurnModel, Device, LayerId, OnnxModel, OnnxRuntimeModel, RuntimeOptions};
use oodkit::nets::{CifarResNet, ToyConvnetConfig};
use oodkit::{Batch, Error, PrepareConfig, Result};
use serde_json::{Value, json};

/// The network: exactly one of `--model`, `--resnet`, `--toy-convnet`.
#[derive(clap::Args, Debug, Clone)]
#[group(id = "network", required = true, multiple = false)]
pub struct NetworkArgs {
    /// An ONNX graph (its first output the logits; export with a dynamic
    /// batch axis). The node feature detectors read is `fit`'s and `eval`'s
    /// --layer; `score` takes it from the detector file.
    #[arg(long, value_name = "FILE.onnx", group = "network")]
    pub model: Option<PathBuf>,
    /// A pretrained CIFAR ResNet: a PyTorch state dict saved as
    /// safetensors (ImageNet normalisation by default).
    #[arg(long, value_name = "FILE.safetensors", group = "network")]
    pub resnet: Option<PathBuf>,
    /// The toy convnet of oodkit's trainer: a checkpoint (.bpk) it saved
    /// (grey images by default; the image size is read from the data).
    #[arg(long, value_name = "FILE.bpk", group = "network")]
    pub toy_convnet: Option<PathBuf>,
}

/// Options of the network and of the inputs it takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Depth of the --resnet (20, 32, 44, 56, 110).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub depth: usize,
    /// Number of classes of the --toy-convnet.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub classes: usize,
    /// Channels each image is converted to [default: grey for
    /// --toy-convnet, else rgb].
    #[arg(long, value_enum)]
    pub channels: Option<ChannelArg>,
    /// Resize every image to HEIGHTxWIDTH (e.g. 32x32).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// With --size: keep the aspect ratio, resize the shorter side and cut
    /// the centre (torchvision's Resize + CenterCrop).
    #[arg(long, requires = "size")]
    pub crop: bool,
    /// Pixel normalisation [default: imagenet for --resnet, else unit].
    #[arg(long, value_enum)]
    pub normalize: Option<Normalize>,
    /// Skip images that cannot be decoded (they are counted and listed)
    /// instead of stopping at the first.
    #[arg(long)]
    pub skip_unreadable: bool,
    /// Images per batch.
    #[arg(long, default_value_t = 128, value_name = "N", value_parser = positive)]
    pub batch_size: usize,
    /// The most memory one image may take while it is decoded and
    /// converted, in MiB: a larger image is an error naming it, found from
    /// its header before its pixels are read.
    #[arg(long, default_value_t = 1024, value_name = "MiB", value_parser = positive)]
    pub max_image_mb: usize,
    /// What runs a --model graph: tract (built in) or onnxruntime (ONNX
    /// Runtime's library, several times faster, GPUs: `pip install
    /// onnxruntime`, found in the active or PATH Python, or named by
    /// ORT_DYLIB_PATH).
    #[arg(long, value_enum, default_value_t = Engine::Tract)]
    pub engine: Engine,
    /// Where --engine onnxruntime runs the graph: cpu, cuda (the first
    /// GPU; needs onnxruntime-gpu) or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE", value_parser = parse_device)]
    pub device: Device,
}

/// `--engine`: what runs an ONNX graph.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// tract: pure Rust, nothing to install; runs batches across the cores.
    Tract,
    /// ONNX Runtime, loaded from its library at run time.
    Onnxruntime,
}

/// `cpu`, `cuda` or `cuda:N`.
fn parse_device(value: &str) -> std::result::Result<Device, String> {
    value
        .parse::<Device>()
        .map_err(|_| format!("expected cpu, cuda or cuda:N (N the GPU's index), not {value:?}"))
}

/// `--channels`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelArg {
    /// One channel (luma).
    Grey,
    /// Red, green, blue.
    Rgb,
}

/// `--normalize`: what is done to the pixels (0-255) before the network.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Pixels as they are, 0-255.
    None,
    /// Divided by 255, to [0, 1].
    Unit,
    /// Divided by 255, then the ImageNet channel mean and standard
    /// deviation (what torchvision's pretrained networks expect).
    Imagenet,
}

impl Normalize {
    /// Its name on the command line.
    fn name(self) -> &'static str {
        match self {
            Normalize::None => "none",
            Normalize::Unit => "unit",
            Normalize::Imagenet => "imagenet",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Normalize::None, Normalize::Unit, Normalize::Imagenet]
            .into_iter()
            .find(|n| n.name() == name)
    }
}

/// A positive integer.
pub fn positive(value: &str) -> std::result::Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, not {value:?}")),
    }
}

/// `HxW`, both positive.
fn parse_size(value: &str) -> std::result::Result<(u32, u32), String> {
    let parsed = value
        .split_once(['x', 'X'])
        .and_then(|(h, w)| Some((h.trim().parse::<u32>().ok()?, w.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((h, w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(format!(
            "expected HEIGHTxWIDTH such as 32x32, not {value:?}"
        )),
    }
}

/// A network, ready to score through.
pub type Network = Box<AnyModel<'static>>;

impl ModelArgs {
    fn channels(&self) -> Channels {
        let default = if self.network.toy_convnet.is_some() {
            ChannelArg::Grey
        } else {
            ChannelArg::Rgb
        };
        match self.channels.unwrap_or(default) {
            ChannelArg::Grey => Channels::Grey,
            ChannelArg::Rgb => Channels::Rgb,
        }
    }

    fn normalize(&self) -> Normalize {
        let default = if self.network.resnet.is_some() {
            Normalize::Imagenet
        } else {
            Normalize::Unit
        };
        self.normalize.unwrap_or(default)
    }

    /// The folder at `dir` (ImageFolder layout or flat), with the channels
    /// and size asked for.
    pub fn open(&self, dir: &Path) -> Result<ImageFolder> {
        let folder = ImageFolder::open(dir)?
            .channels(self.channels())
            .skip_unreadable(self.skip_unreadable)
            .image_budget((self.max_image_mb as u64).saturating_mul(1 << 20));
        match self.size {
            Some((h, w)) if self.crop => folder.fit(Fit::ResizeCrop(h, w)),
            Some((h, w)) => folder.fit(Fit::Resize(h, w)),
            None => Ok(folder),
        }
    }

    /// Batches of `--batch-size`, normalised as asked; labels kept when the
    /// folder has them.
    pub fn batches(&self) -> PrepareConfig {
        let config = PrepareConfig::new(self.batch_size);
        match self.normalize() {
            Normalize::None => config,
            Normalize::Unit => config.preprocess(|mut batch: Batch| {
                batch.inputs /= 255.0;
                Ok(batch)
            }),
            Normalize::Imagenet => config.preprocess(imagenet_preprocess),
        }
    }

    /// How images become the network's inputs, as saved with a detector:
    /// the effective `--channels`, `--size`, `--crop` and `--normalize`.
    pub fn recipe(&self) -> Value {
        json!({
            "channels": match self.channels() {
                Channels::Grey => "grey",
                Channels::Rgb => "rgb",
            },
            "size": self.size.map(|(h, w)| vec![h, w]),
            "crop": self.crop,
            "normalize": self.normalize().name(),
        })
    }

    /// Takes the input options a detector was fitted with (`recipe`, from
    /// its file) where none is given; one given that differs is an error
    /// saying what the detector was fitted with. A file without a recipe
    /// (saved by the library) changes nothing.
    pub fn follow(&mut self, recipe: &Value) -> Result<()> {
        let differs = |flag: &str, fitted: String, given: String| Error::InvalidParameter {
            name: "input option",
            value: format!("--{flag} {given}"),
            reason: format!(
                "the detector was fitted on images prepared with --{flag} {fitted}: drop \
                 --{flag} (the detector's is used) or pass --{flag} {fitted}"
            ),
        };
        if let Some(channels) = recipe["channels"].as_str() {
            let fitted = match channels {
                "grey" => ChannelArg::Grey,
                _ => ChannelArg::Rgb,
            };
            match self.channels {
                Some(given) if given != fitted => {
                    return Err(differs(
                        "channels",
                        channels.into(),
                        format!("{given:?}").to_lowercase(),
                    ));
                }
                _ => self.channels = Some(fitted),
            }
        }
        if let Some(normalize) = recipe["normalize"].as_str() {
            let fitted = Normalize::from_name(normalize).ok_or_else(|| {
                Error::custom(format!(
                    "the detector file's input recipe names an unknown normalisation {normalize:?}"
                ))
            })?;
            match self.normalize {
                Some(given) if given != fitted => {
                    return Err(differs("normalize", normalize.into(), given.name().into()));
                }
                _ => self.normalize = Some(fitted),
            }
        }
        let fitted_size = recipe["size"].as_array().and_then(|hw| {
            Some((
                u32::try_from(hw.first()?.as_u64()?).ok()?,
                u32::try_from(hw.get(1)?.as_u64()?).ok()?,
            ))
        });
        // Fitted at the images' own size: the input shape check that
        // follows names the size the detector expects.
        match (self.size, fitted_size) {
            (Some(given), Some(fitted)) if given != fitted => {
                let show = |(h, w): (u32, u32)| format!("{h}x{w}");
                return Err(differs("size", show(fitted), show(given)));
            }
            (None, fitted) => self.size = fitted,
            _ => {}
        }
        if let Some(crop) = recipe["crop"].as_bool() {
            if self.crop && !crop {
                return Err(differs("crop", "(off)".into(), "(on)".into()));
            }
            self.crop = crop;
        }
        Ok(())
    }

    /// The files of the network, as inputs a command must not write over.
    pub fn inputs(&self) -> crate::outputs::Inputs<'_> {
        crate::outputs::Inputs::default()
            .with("--model", self.network.model.as_deref())
            .with("--resnet", self.network.resnet.as_deref())
            .with("--toy-convnet", self.network.toy_convnet.as_deref())
    }

    /// --engine and --device apply to an ONNX graph, and a GPU to ONNX
    /// Runtime.
    fn check_engine(&self) -> Result<()> {
        let flag = |name: &str, value: String, reason: &str| Error::InvalidParameter {
            name: "option",
            value: format!("--{name} {value}"),
            reason: reason.into(),
        };
        if self.network.model.is_none() {
            if self.engine != Engine::Tract {
                return Err(flag(
                    "engine",
                    "onnxruntime".into(),
                    "it runs ONNX graphs: use it with --model FILE.onnx",
                ));
            }
            if self.device != Device::Cpu {
                return Err(flag(
                    "device",
                    self.device.to_string(),
                    "it applies to --model FILE.onnx with --engine onnxruntime (the crate's \
                     networks run on the CPU)",
                ));
            }
        } else if self.engine == Engine::Tract && self.device != Device::Cpu {
            return Err(flag(
                "device",
                self.device.to_string(),
                "tract runs on the CPU: add --engine onnxruntime to run on a GPU",
            ));
        }
        Ok(())
    }

    /// The feature layers to expose: `--layer` values as given, or for an
    /// ONNX graph without any, the value its last linear layer reads (none
    /// when the graph's logits are not an affine layer: the feature
    /// detectors then ask for --layer).
    pub fn feature_layers(&self, layers: &[String]) -> Vec<String> {
        match (&self.network.model, layers.is_empty()) {
            (Some(path), true) => OnnxModel::last_layer_input(path).into_iter().collect(),
            _ => layers.to_vec(),
        }
    }

    /// Loads the network. `layers` are the feature layers a detector
    /// reads: ONNX node names are exposed as outputs; the crate's networks
    /// have theirs already. `sample` (a folder of the data) gives the toy
    /// convnet its image size.
    pub fn load(&self, layers: &[String], sample: Option<&ImageFolder>) -> Result<Network> {
        let device = burn::tensor::Device::flex();
        self.check_engine()?;
        if let Some(path) = &self.network.model {
            let names: Vec<&str> = layers.iter().map(String::as_str).collect();
            return Ok(match self.engine {
                Engine::Tract => Box::new(OnnxModel::load_with_features(path, &names)?),
                Engine::Onnxruntime => {
                    let options = RuntimeOptions {
                        device: self.device,
                        ..RuntimeOptions::default()
                    };
                    Box::new(OnnxRuntimeModel::load_with_features(
                        path, &names, &options,
                    )?)
                }
            });
        }
        if let Some(path) = &self.network.resnet {
            let net = CifarResNet::from_safetensors(path, self.depth, &device)?;
            return Ok(Box::new(BurnModel::new(net, &device)));
        }
        if let Some(path) = &self.network.toy_convnet {
            let size = image_size(self.size, sample)?;
            let channels = match self.channels() {
                Channels::Grey => 1,
                Channels::Rgb => 3,
            };
            let net = ToyConvnetConfig::new(channels, size, self.classes).init(&device)?;
            let net = oodkit::training::load_checkpoint(net, path)?;
            return Ok(Box::new(BurnModel::new(net, &device)));
        }
        Err(Error::MissingInput {
            what: "the network".into(),
            hint: "pass --model FILE.onnx, --resnet FILE.safetensors or --toy-convnet FILE.bpk"
                .into(),
        })
    }
}

/// The layers a feature detector reads: `--layer` values (ONNX node names,
/// or the crate's networks' layer names or positions, negative from the
/// end), by default the penultimate layer.
pub fn layer_ids(layers: &[String]) -> Vec<LayerId> {
    if layers.is_empty() {
        return vec![LayerId::Index(-2)];
    }
    layers
        .iter()
        .map(|l| match l.parse::<isize>() {
            Ok(i) => LayerId::Index(i),
            Err(_) => LayerId::Name(l.clone()),
        })
        .collect()
}

/// The side of the toy convnet's square inputs: `--size`, else the first
/// image's.
fn image_size(size: Option<(u32, u32)>, sample: Option<&ImageFolder>) -> Result<usize> {
    let (h, w) = match (size, sample.and_then(|s| s.files().first())) {
        (Some(hw), _) => hw,
        (None, None) => {
            return Err(Error::MissingInput {
                what: "the image size of the toy convnet".into(),
                hint: "pass --size NxN".into(),
            });
        }
        (None, Some((first, _))) => {
            let (w, h) = image::image_dimensions(first).map_err(|e| Error::CorruptFile {
                path: first.clone(),
                offset: None,
                reason: format!("not a readable image: {e}"),
            })?;
            (h, w)
        }
    };
    if h != w {
        return Err(Error::Unsupported {
            what: format!("{h}x{w} images for the toy convnet"),
            hint: "it takes square images: pass --size NxN".into(),
        });
    }
    Ok(h as usize)
}

/// Says on stderr which images of `batches` were skipped as unreadable
/// (with --skip-unreadable), so that no image goes missing silently.
pub fn report_skipped(batches: &FolderBatches<'_>) {
    let skipped = batches.skipped();
    if skipped.is_empty() {
        return;
    }
    eprintln!("skipped {} unreadable images:", skipped.len());
    for file in &skipped {
        eprintln!("  {}", file.display());
    }
}
