//! RankFeat (Song et al., NeurIPS 2022): the energy once the dominant
//! rank-1 component of the last feature map is removed.

use serde::{Deserialize, Serialize};

use ndarray::{Array1, Array4, ArrayView2, Axis};

use super::{ScoreLogits, StoredLogits, score_rows, tempered_exps};
use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::detectors::registry::{Capability, Needs, Param, Registration, built, load_as};
use crate::detectors::{Detector, ScoreOutput};
use crate::error::{Error, Result};
use crate::linalg::without_top_rank;
use crate::model::{Model, check_logits, map_editing_of};

/// RankFeat: each input's last convolutional feature map, as a matrix
/// `(C, H·W)`, loses its largest singular component σ₁u₁v₁ᵀ (an exact
/// SVD per sample); the rest of the network runs on what is left, and
/// score = −T · logsumexp(logits / T) of the result (the energy, higher =
/// more OOD).
///
/// As OpenOOD v1.5's `rankfeat` postprocessor with its defaults (exact
/// SVD, `accelerate: False`; temperature 1), on the last feature map only:
/// OpenOOD's ResNet-50 also averages the logits of the same removal on the
/// third block's map, which the CIFAR ResNets' three stages do not have a
/// counterpart of. It needs the network itself
/// ([`MapEditing::forward_editing_map`](crate::model::MapEditing::forward_editing_map): a `BurnModel` of `CifarResNet`,
/// `ToyConvnet`, or a module implementing
/// `BurnClassifier::last_feature_map`); other models are an
/// [`Error::Unsupported`] saying so, and so is scoring precomputed logits.
/// It learns nothing: `fit(&model, None)`.
///
/// ```
/// # #[cfg(feature = "burn")] {
/// use burn::tensor::Device;
/// use oodkit::detectors::{Detector, RankFeat};
/// use oodkit::model::BurnModel;
/// use oodkit::nets::ToyConvnetConfig;
///
/// let device = Device::flex();
/// let model = BurnModel::new(ToyConvnetConfig::new(1, 28, 5).init(&device)?, &device);
/// let scorer = RankFeat::default().fit(&model, None)?;
/// let batch = oodkit::Batch::new(ndarray::Array4::ones((2, 1, 28, 28)));
/// assert_eq!(scorer.score(&batch)?.scores.len(), 2);
/// # }
/// # Ok::<(), oodkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RankFeat {
    temperature: f32,
}

impl Default for RankFeat {
    /// Temperature 1 (OpenOOD's).
    fn default() -> Self {
        RankFeat { temperature: 1.0 }
    }
}

impl RankFeat {
    /// RankFeat with the energy at `temperature` (finite, > 0).
    pub fn new(temperature: f32) -> Result<Self> {
        let rankfeat = RankFeat { temperature };
        rankfeat.validate()?;
        Ok(rankfeat)
    }

    /// The temperature of the energy.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// The energy of logits at the temperature.
    fn energy(&self, logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        let t = self.temperature;
        score_rows(logits, |row| {
            let (max, exps) = tempered_exps(row, t);
            -(max + t * exps.iter().sum::<f32>().ln())
        })
    }
}

/// Each sample's map `(C, H, W)` minus its top rank-1 component as a
/// `(C, H·W)` matrix.
pub(crate) fn remove_rank_one(mut maps: Array4<f32>) -> Result<Array4<f32>> {
    let (_, c, h, w) = maps.dim();
    for (i, mut map) in maps.axis_iter_mut(Axis(0)).enumerate() {
        // A NaN would reach the SVD as a failure to converge: say what it is.
        if map.iter().any(|v| v.is_nan()) {
            return Err(Error::NotANumber {
                what: "RankFeat's feature map (index = sample)".into(),
                index: i,
                hint: "the network produced NaN for this input; check its inputs and weights"
                    .into(),
            });
        }
        let matrix = map.to_shape((c, h * w))?.to_owned();
        let rest = without_top_rank(matrix.view(), "RankFeat's feature map")?;
        map.assign(&rest.into_shape_with_order((c, h, w))?);
    }
    Ok(maps)
}

impl Detector for RankFeat {
    type Fitted = RankFeat;

    /// Keeps the parameters: RankFeat learns nothing of the data. Errors
    /// when the model cannot edit its last feature map.
    fn fit_model(
        &self,
        model: &dyn Model,
        _fit_data: Option<&dyn BatchSource>,
    ) -> Result<RankFeat> {
        self.check_model(model)?;
        Ok(*self)
    }
}

impl ScoreLogits for RankFeat {
    fn name(&self) -> &'static str {
        "RankFeat"
    }

    /// An error: RankFeat edits the network's feature map, so it scores
    /// only through the model.
    fn score_logits(&self, _logits: ArrayView2<f32>) -> Result<Array1<f32>> {
        Err(Error::Unsupported {
            what: "RankFeat on precomputed logits".into(),
            hint: "it edits the network's last feature map: score through the model".into(),
        })
    }

    /// The model's logits (returned as they are) and those of the edited
    /// map (scored).
    fn score_logit_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput> {
        let n = batch.len();
        let edited = map_editing_of(model, "RankFeat")?
            .forward_editing_map(batch.inputs.view(), &remove_rank_one)?;
        check_logits(&edited, n)?;
        let scores = self.energy(edited.view())?;
        let logits = model.forward_owned(batch.inputs)?;
        check_logits(&logits, n)?;
        Ok(ScoreOutput {
            scores,
            logits,
            labels: batch.labels,
        })
    }

    /// It needs the whole network, not only its logits.
    fn perturbs_inputs(&self) -> bool {
        true
    }

    fn check_model(&self, model: &dyn Model) -> Result<()> {
        map_editing_of(model, "RankFeat").map(|_| ())
    }
}

impl StoredLogits for RankFeat {
    const KINDS: &'static [&'static str] = &["RankFeat"];

    fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !(t > 0.0 && t.is_finite()) {
            return Err(Error::invalid(
                "temperature",
                t,
                "must be finite and > 0 (OpenOOD uses 1)",
            ));
        }
        Ok(())
    }
}

/// RankFeat in the registry.
pub(crate) const REGISTRATION: Registration = Registration::new(
    "RankFeat",
    "rankfeat",
    "RankFeat: the energy once the top rank-1 part of the last feature map is removed (needs \
     the network itself: the crate's networks, not ONNX)",
    &[Param {
        name: "temperature",
        doc: "the energy's temperature [default: 1]",
    }],
    Needs {
        fit_data: false,
        labels: false,
        capabilities: &[Capability::MapEditing],
    },
    |p| match p.number_f32("temperature")? {
        Some(t) => built(RankFeat::new(t)?),
        None => built(RankFeat::default()),
    },
    load_as::<RankFeat>,
);
