//! A logit detector on activation-shaped logits, as a fitted value: the
//! shaping (ReAct's threshold, ASH / SCALE's percentile) travels with the
//! detector, into its file too.

use super::ScoreLogits;
use crate::batch::Batch;
use crate::datasets::BatchSource;
use crate::detectors::{Detector, FittedDetector, ScoreOutput};
use crate::error::{Error, Result};
use crate::model::{
    CheckedFeatures, LayerId, Model, Shaping, check_logits, check_react_quantile, features_of,
    last_layer_of,
};

/// Who needs the model's capabilities, in errors.
const SHAPED: &str = "a detector on activation-shaped logits";

/// The penultimate layer, which shaping acts on.
const PENULTIMATE: [LayerId; 1] = [LayerId::Index(-2)];

/// A detector on logits (MLS, MSP, Energy, Entropy, GEN) scoring the
/// logits of shaped penultimate activations, as parameters: the model's
/// layer `-2` shaped by a [`Shaping`], then its last layer
/// ([`LastLayer::head_parameters`](crate::model::LastLayer::head_parameters)).
/// The same scores as the detector on a shaped
/// [`BurnModel`](crate::model::BurnModel::with_shaping), for any model with
/// named layers and an affine head. Fitting gives a [`FittedShaped`], whose
/// shaping (ReAct's threshold fitted on the fit data, ASH / SCALE's
/// percentile) saves and loads with the detector.
///
/// The logits it returns (and the predicted classes of verdicts) are the
/// network's own: shaping changes the OOD score, not the prediction.
///
/// ```
/// use ndarray::{Array1, Array2, Array4, ArrayView4, array};
/// use oodkit::detectors::{Detector, Energy, Shaped};
/// use oodkit::model::{Shaping, from_fn_with_features};
///
/// // Penultimate features = the inputs; head = identity.
/// let model = from_fn_with_features(["features"], |x: ArrayView4<f32>| {
///     let f = x.to_shape((x.shape()[0], 2))?.to_owned();
///     Ok((vec![f.clone()], f))
/// })
/// .with_head(Array2::eye(2), Array1::zeros(2))?;
/// let energy = Shaped::new(Energy::default(), Shaping::React { threshold: 1.0 })?;
/// let scorer = energy.fit(&model, None)?;
/// let batch = oodkit::Batch::new(array![[[[5.0_f32, 0.0]]]]);
/// // Clipped at 1: -ln(e¹ + e⁰).
/// let expected = -(1.0_f32.exp() + 1.0).ln();
/// assert!((scorer.score_batch(batch)?.scores[0] - expected).abs() < 1e-6);
///
/// // ReAct fits its threshold, the 0.5 quantile of the fit activations.
/// let fit = oodkit::OodDataset::from_arrays(
///     Array4::from_shape_vec((2, 1, 1, 2), vec![1.0, 2.0, 3.0, 4.0])?,
///     Array1::zeros(2),
/// )?;
/// let react = Shaped::react(Energy::default(), 0.5)?.fit(&model, Some(&fit))?;
/// assert_eq!(react.fitted().shaping(), Shaping::React { threshold: 2.0 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shaped<D> {
    detector: D,
    shaping: ShapingParams,
}

/// A shaping as parameters: fixed, or ReAct's threshold to fit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ShapingParams {
    Fixed(Shaping),
    React { quantile: f32 },
}

impl<D: ScoreLogits> Shaped<D> {
    /// `detector` on logits shaped by `shaping` (ASH, SCALE, or ReAct at
    /// a known threshold). ODIN with a step (ε > 0) is refused: its input
    /// gradient would have to run through the shaping; shape a
    /// [`BurnModel`](crate::model::BurnModel::with_shaping) for it.
    pub fn new(detector: D, shaping: Shaping) -> Result<Self> {
        shaping.validate()?;
        refuse_input_step(&detector)?;
        Ok(Shaped {
            detector,
            shaping: ShapingParams::Fixed(shaping),
        })
    }

    /// ReAct: `detector` on logits of activations clipped at the
    /// `quantile` (in (0, 1], default 0.9) of the penultimate activations
    /// of the fit data, fitted by [`fit`](Detector::fit)
    /// ([`Shaping::react`]).
    pub fn react(detector: D, quantile: f32) -> Result<Self> {
        check_react_quantile(quantile)?;
        refuse_input_step(&detector)?;
        Ok(Shaped {
            detector,
            shaping: ShapingParams::React { quantile },
        })
    }

    /// The detector on the shaped logits.
    pub fn detector(&self) -> &D {
        &self.detector
    }
}

impl<D: ScoreLogits + Clone> Detector for Shaped<D> {
    type Fitted = FittedShaped<D>;

    /// The shaping (ReAct's threshold fitted on `fit_data`, which it then
    /// requires), after checking the model has a penultimate layer and a
    /// last layer.
    fn fit_model(
        &self,
        model: &dyn Model,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<FittedShaped<D>> {
        let shaping = match self.shaping {
            ShapingParams::Fixed(shaping) => shaping,
            ShapingParams::React { quantile } => Shaping::react(model, fit_data, quantile)?,
        };
        let fitted = FittedShaped::new(self.detector.clone(), shaping)?;
        fitted.check_model(model)?;
        Ok(fitted)
    }
}

/// A [`Shaped`] detector fitted: the detector on logits and its shaping
/// (ReAct's threshold fitted). Saves and loads with both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FittedShaped<D> {
    detector: D,
    shaping: Shaping,
}

impl<D: ScoreLogits> FittedShaped<D> {
    /// `detector` on logits shaped by `shaping`, checked as
    /// [`Shaped::new`] checks them.
    pub fn new(detector: D, shaping: Shaping) -> Result<Self> {
        shaping.validate()?;
        refuse_input_step(&detector)?;
        Ok(FittedShaped { detector, shaping })
    }

    /// The detector on the shaped logits.
    pub fn detector(&self) -> &D {
        &self.detector
    }

    /// The shaping.
    pub fn shaping(&self) -> Shaping {
        self.shaping
    }
}

/// ODIN with a step (ε > 0) on shaped logits: its input gradient would
/// have to run through the shaping.
fn refuse_input_step(detector: &impl ScoreLogits) -> Result<()> {
    if detector.perturbs_inputs() {
        return Err(Error::Unsupported {
            what: format!("{} with an input step on shaped logits", detector.name()),
            hint: "shape the network itself (BurnModel::with_shaping), or set ε = 0".into(),
        });
    }
    Ok(())
}

impl<D: ScoreLogits> FittedDetector for FittedShaped<D> {
    fn kind(&self) -> &'static str {
        self.detector.name()
    }

    /// Checks the model has a penultimate layer and an affine head.
    fn check_model(&self, model: &dyn Model) -> Result<()> {
        CheckedFeatures::new(features_of(model, SHAPED)?, &PENULTIMATE)?;
        last_layer_of(model, SHAPED).map(|_| ())
    }

    fn score_batch(&self, model: &dyn Model, batch: Batch) -> Result<ScoreOutput> {
        let n = batch.len();
        let out = CheckedFeatures::new(features_of(model, SHAPED)?, &PENULTIMATE)?
            .forward(batch.inputs)?;
        let (weights, bias) = last_layer_of(model, SHAPED)?;
        let shaped = self
            .shaping
            .logits(out.features[0].view(), weights.t(), bias.view())?;
        check_logits(&shaped, n)?;
        Ok(ScoreOutput {
            scores: self.detector.score_logits(shaped.view())?,
            logits: out.logits,
            labels: batch.labels,
        })
    }
}
