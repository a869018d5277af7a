//! Detectors by name: what `fit` and `eval` build from `--detector`.

use oodkit::Result;
use oodkit::calibration::Calibrated;
use oodkit::detectors::Family;
use oodkit::detectors::{
    AnyModel, Detector, Dice, Energy, Entropy, Fdbd, FeatureDetector, Features, FittedDetector,
    Gen, Gmm, GradNorm, Gram, Klm, Knn, Logits, Mahalanobis, McDropout, Mls, Nci, NnGuide, Odin,
    OpenMax, Persist, PrincipalDims, RankFeat, Residual, Rmds, She, TemperatureScaling, Vim, Vra,
};
use oodkit::model::{LayerId, Model};

/// A detector `fit` and `eval` know.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// Maximum logit score (logits only).
    Mls,
    /// Maximum softmax probability (logits only).
    Msp,
    /// Energy, temperature --temperature (logits only).
    Energy,
    /// Softmax entropy (logits only).
    Entropy,
    /// Generalised entropy, GEN (logits only).
    Gen,
    /// MSP at the temperature fitted on the fit data by likelihood
    /// (logits; fit data labelled).
    TempScaling,
    /// KL matching to the mean softmax of each predicted class (logits;
    /// fit data).
    Klm,
    /// OpenMax: Weibull models of the distance to each class's mean
    /// logits, an unknown class (logits; fit data labelled).
    Openmax,
    /// RankFeat: the energy once the top rank-1 part of the last feature
    /// map is removed (needs the network itself: the crate's networks, not
    /// ONNX).
    Rankfeat,
    /// Monte Carlo dropout: the entropy of the mean softmax of 30 passes
    /// with dropout active (needs the network itself, with dropout).
    Mcdropout,
    /// ODIN: tempered softmax and an input step (needs the network's input
    /// gradients: the crate's networks, not ONNX).
    Odin,
    /// Mahalanobis distance to class means (features; fit data labelled).
    Mahalanobis,
    /// Relative Mahalanobis distance, RMDS (features; fit data labelled).
    Rmds,
    /// k-th nearest neighbour distance, KNN (features).
    Knn,
    /// Virtual logit matching, ViM (features and the last layer's weights:
    /// through ONNX, the logits must be a Gemm, or MatMul then Add, of the
    /// --layer node).
    Vim,
    /// Simplified Hopfield energy, SHE (features; fit data labelled).
    She,
    /// Gram matrices (features).
    Gram,
    /// DICE: the energy of the last layer sparsified by its contributions
    /// (features and the last layer's weights, as ViM).
    Dice,
    /// VRA: the energy of features clipped between two fit percentiles
    /// (features and the last layer).
    Vra,
    /// fDBD: distance to the decision boundaries over distance to the
    /// mean feature (features and the last layer).
    Fdbd,
    /// NCI: alignment with the predicted class's weights plus an L1 norm
    /// (features and the last layer).
    Nci,
    /// NNGuide: energy guided by the --k most similar of a bank of
    /// --bank-fraction of the fit features (features).
    Nnguide,
    /// GradNorm: the norm of the last layer's gradient (features and the
    /// last layer; needs no fit data).
    Gradnorm,
    /// Residual: the norm off the principal subspace of the fit features
    /// (features and the last layer; --vim-dims sets the subspace).
    Residual,
    /// Class-conditional Gaussians, one covariance per class, GMM
    /// (features; fit data labelled).
    Gmm,
}

impl Name {
    /// Its lowercase name, as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Name::Mls => "mls",
            Name::Msp => "msp",
            Name::Energy => "energy",
            Name::Entropy => "entropy",
            Name::Gen => "gen",
            Name::Odin => "odin",
            Name::TempScaling => "temp-scaling",
            Name::Klm => "klm",
            Name::Openmax => "openmax",
            Name::Rankfeat => "rankfeat",
            Name::Mcdropout => "mcdropout",
            Name::Mahalanobis => "mahalanobis",
            Name::Rmds => "rmds",
            Name::Knn => "knn",
            Name::Vim => "vim",
            Name::She => "she",
            Name::Gram => "gram",
            Name::Dice => "dice",
            Name::Vra => "vra",
            Name::Fdbd => "fdbd",
            Name::Nci => "nci",
            Name::Nnguide => "nnguide",
            Name::Gradnorm => "gradnorm",
            Name::Residual => "residual",
            Name::Gmm => "gmm",
        }
    }

    /// Whether it learns statistics of in-distribution features (and so
    /// needs fit data).
    pub fn needs_fit_data(self) -> bool {
        !matches!(
            self,
            Name::Mls
                | Name::Msp
                | Name::Energy
                | Name::Entropy
                | Name::Gen
                | Name::Odin
                | Name::Rankfeat
                | Name::Mcdropout
                | Name::Gradnorm
        )
    }
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

/// A model as the family of a detector sees it.
pub trait FromAny: Family {
    fn from_any<'a, 'm>(model: &'a AnyModel<'m>) -> &'a Self::Model<'m>;
}

impl FromAny for Logits {
    fn from_any<'a, 'm>(model: &'a AnyModel<'m>) -> &'a (dyn Model + Send + Sync + 'm) {
        model
    }
}

impl FromAny for Features {
    fn from_any<'a, 'm>(model: &'a AnyModel<'m>) -> &'a AnyModel<'m> {
        model
    }
}

/// Something done with a detector, whatever its type.
pub trait Action {
    type Out;
    fn run<D>(self, detector: D) -> Result<Self::Out>
    where
        D: Detector,
        D::Fitted: Persist + 'static,
        Calibrated<D::Fitted>: Persist,
        <D::Fitted as FittedDetector>::Family: FromAny;
}

/// Builds detector `name` with `params` (feature detectors on `layers`)
/// and runs `action` on it.
pub fn with_detector<A: Action>(
    name: Name,
    params: &Params,
    layers: &[LayerId],
    action: A,
) -> Result<A::Out> {
    let layers = layers.to_vec();
    match name {
        Name::Mls => action.run(Mls::new()),
        Name::Msp => action.run(Mls::msp()),
        Name::Energy => action.run(Energy::new(params.temperature.unwrap_or(1.0))?),
        Name::Entropy => action.run(Entropy::new()),
        Name::Gen => action.run(Gen::default()),
        Name::Odin => {
            let default = Odin::default();
            match params.temperature {
                Some(t) => action.run(Odin::new(t, default.epsilon())?),
                None => action.run(default),
            }
        }
        Name::TempScaling => action.run(TemperatureScaling::new()),
        Name::Klm => action.run(Klm::new()),
        Name::Openmax => action.run(OpenMax::default()),
        Name::Rankfeat => action.run(RankFeat::default()),
        Name::Mcdropout => action.run(McDropout::default()),
        Name::Mahalanobis => action.run(Mahalanobis::new().with_layers(layers)?),
        Name::Rmds => action.run(Rmds::new().with_layers(layers)?),
        Name::Knn => action.run(Knn::new(params.k.unwrap_or(50))?.with_layers(layers)?),
        Name::Vim => {
            let vim = match params.vim_dims {
                Some(dims) => Vim::new(dims)?,
                None => Vim::default(),
            };
            action.run(vim.with_layers(layers)?)
        }
        Name::She => action.run(She::new().with_layers(layers)?),
        Name::Gram => action.run(Gram::default().with_layers(layers)?),
        Name::Dice => action.run(Dice::default().with_layers(layers)?),
        Name::Vra => action.run(Vra::default().with_layers(layers)?),
        Name::Fdbd => action.run(Fdbd::default().with_layers(layers)?),
        Name::Nci => action.run(Nci::default().with_layers(layers)?),
        Name::Nnguide => {
            let default = NnGuide::default();
            let k = params.k.unwrap_or(default.k());
            let fraction = params.bank_fraction.unwrap_or(default.bank_fraction());
            action.run(NnGuide::new(k, fraction)?.with_layers(layers)?)
        }
        Name::Gradnorm => action.run(GradNorm::new().with_layers(layers)?),
        Name::Residual => {
            let residual = match params.vim_dims {
                Some(dims) => Residual::new(dims)?,
                None => Residual::default(),
            };
            action.run(residual.with_layers(layers)?)
        }
        Name::Gmm => action.run(Gmm::default().with_layers(layers)?),
    }
}
