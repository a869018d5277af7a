//! Detectors by name: what `fit` and `eval` build from `--detector`, every
//! kind of the crate's registry.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use oodkit::datasets::image_folder::ImageFolder;
use oodkit::detectors::registry::{self, Capability, Registration, UnfittedDetector};
use oodkit::detectors::{AnyModel, PrincipalDims};
use oodkit::model::LayerId;
use oodkit::{Error, Result};

/// A detector `fit` and `eval` know: a registered kind.
#[derive(Debug, Clone, Copy)]
pub struct Name(&'static Registration);

impl Name {
    /// Its name, as written on the command line.
    pub fn as_str(self) -> &'static str {
        self.0.name()
    }

    /// Whether it learns statistics of in-distribution data (and so needs
    /// fit data).
    pub fn needs_fit_data(self) -> bool {
        self.0.needs().fit_data
    }

    /// Builds it with the flags it takes (the others are for other
    /// detectors), feature detectors on `layers`.
    pub fn build(self, params: &Params, layers: &[LayerId]) -> Result<UnfittedDetector> {
        let mut given = registry::Params::new();
        if let Some(k) = params.k {
            given = given.set("k", k);
        }
        if let Some(t) = params.temperature {
            given = given.set("temperature", f64::from(t));
        }
        if let Some(f) = params.bank_fraction {
            given = given.set("bank_fraction", f);
        }
        for (name, value) in [
            ("hnsw", params.hnsw),
            ("ef_construction", params.ef_construction),
            ("ef_search", params.ef_search),
        ] {
            if let Some(value) = value {
                given = given.set(name, value);
            }
        }
        match params.vim_dims {
            Some(PrincipalDims::Count(n)) => given = given.set("dims", n),
            Some(PrincipalDims::Explained(f)) => given = given.set("dims", f),
            None => {}
        }
        if !layers.is_empty() {
            given = given.with_layers(layers.to_vec());
        }
        self.0.build(&given.only(self.0.params()))
    }
}

/// Checks, before any image is read, what `detector` needs: the network's
/// capabilities, class folders when it learns per class, and enough fit
/// images for its parameters (`fit`: the fit folder, when there is one).
/// The errors say which flag to change.
pub fn check_needs(
    name: Name,
    detector: &UnfittedDetector,
    model: &AnyModel<'_>,
    fit: Option<&ImageFolder>,
) -> Result<()> {
    let needs = detector.registration().needs();
    for &capability in needs.capabilities {
        if capability.is_offered_by(model) {
            continue;
        }
        // A graph whose last layer reads another node says which.
        if let Some(Err(Error::Unsupported { hint, .. })) = (capability == Capability::LastLayer)
            .then(|| model.as_last_layer().map(|l| l.head_parameters()))
            .flatten()
        {
            let reason = hint.split("; or give").next().unwrap_or_default();
            return Err(Error::custom(format!(
                "{} needs the network's last linear layer, which could not be read: {reason}",
                name.as_str()
            )));
        }
        return Err(Error::Unsupported {
            what: format!("{} (it needs {capability})", name.as_str()),
            hint: capability_hint(capability, name.as_str()),
        });
    }
    let Some(fit) = fit else {
        return Ok(());
    };
    if needs.labels && !fit.is_labelled() {
        return Err(Error::MissingInput {
            what: format!("class labels for {}", name.as_str()),
            hint: "it learns per-class statistics: give --fit-data as class folders (one \
                   folder per class, in the model's class order)"
                .into(),
        });
    }
    if needs.fit_data {
        detector.check_fit_size(fit.len()).map_err(|e| {
            Error::custom(format!(
                "{}: {e} (flags --bank-fraction and --k)",
                name.as_str()
            ))
        })?;
    }
    Ok(())
}

/// What to do about a capability the network lacks, in flags.
fn capability_hint(capability: Capability, name: &str) -> String {
    match capability {
        Capability::Features => {
            "the network exposes no internal layer: with --model, name one with --layer (`oodkit \
             inspect FILE.onnx` lists them)"
                .into()
        }
        Capability::LastLayer => "the network's last linear layer could not be read: check \
                                  that the graph ends in a linear layer (Gemm, or MatMul and \
                                  Add) whose weights are in the file or beside it"
            .into(),
        Capability::InputGradient => format!(
            "an ONNX graph (--model) gives no input gradients: use --resnet or --toy-convnet, \
             or leave {name} out of --detectors"
        ),
        Capability::MapEditing | Capability::StochasticPasses => format!(
            "{name} runs the network itself: use --toy-convnet (or --resnet for rankfeat), or \
             leave {name} out of --detectors"
        ),
    }
}

/// `--detector` values: every registered name, its summary in `--help`.
pub fn names() -> impl TypedValueParser<Value = Name> {
    PossibleValuesParser::new(
        registry::all()
            .iter()
            .map(|r| PossibleValue::new(r.name()).help(r.summary())),
    )
    .try_map(|name: String| registry::find(&name).map(Name))
}

/// The detectors' parameters the command line sets.
#[derive(clap::Args, Debug, Clone)]
pub struct Params {
    /// KNN's k (the neighbour whose distance is the score) [default: 50]
    /// and NNGuide's (the neighbours it averages) [default: 100].
    #[arg(long, value_name = "K")]
    pub k: Option<usize>,
    /// Energy's and ODIN's temperature [default: 1 for energy, 1000 for ODIN].
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// NNGuide's guide bank: this fraction of the fit images, in (0, 1]
    /// [default: 0.01].
    #[arg(long, value_name = "FRACTION")]
    pub bank_fraction: Option<f64>,
    /// ViM's and Residual's principal subspace: a number of dimensions (e.g. 64, below
    /// the feature width) or the fraction of variance it explains (e.g.
    /// 0.99) [default: 0.99].
    #[arg(long, value_name = "N|FRACTION", value_parser = parse_dims)]
    pub vim_dims: Option<PrincipalDims>,
    /// KNN and NNGuide search an approximate HNSW graph with M links per
    /// node (4 to 64; 16 is usual), built at the fit and saved with the
    /// detector, instead of every stored feature: for fits of hundreds of
    /// thousands of images [default: exact search].
    #[arg(long, value_name = "M")]
    pub hnsw: Option<usize>,
    /// With --hnsw: the candidates each insertion weighs [default: 128].
    #[arg(long, value_name = "EF", requires = "hnsw")]
    pub ef_construction: Option<usize>,
    /// With --hnsw: the candidates each query keeps; more find more of the
    /// true neighbours, slower [default: 256].
    #[arg(long, value_name = "EF", requires = "hnsw")]
    pub ef_search: Option<usize>,
}

/// `--vim-dims`: an integer is a count, a number in (0, 1) a fraction.
fn parse_dims(value: &str) -> std::result::Result<PrincipalDims, String> {
    if let Ok(n) = value.parse::<usize>() {
        return Ok(PrincipalDims::Count(n));
    }
    match value.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(PrincipalDims::Explained(f)),
        _ => Err(format!(
            "expected a number of dimensions (64) or a fraction of variance in (0, 1) (0.99), \
             not {value:?}"
        )),
    }
}
