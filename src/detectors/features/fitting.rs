//! The fitting driver: every feature detector's [`Detector`] impl, which
//! streams the fit data through the model once per pass (statistics, the
//! second pass some need, the aggregator's fit scores).

use ndarray::ArrayView1;

use super::aggregation::Aggregator;
use super::traits::score_in_parts;
use super::{FeatureDetector, FittedFeatures, LayerBatch, LayerFitter};
use crate::batch::Batch;
use crate::datasets::{BatchSource, require_fit_data};
use crate::detectors::{Detector, ModelShape};
use crate::error::{Error, Result};
use crate::model::{CheckedFeatures, FeatureModel, LayerId, Model, features_of, input_gradient_of};

impl<D: FeatureDetector> Detector for D {
    type Fitted = FittedFeatures<D::Fitted>;

    /// Fits every layer of the options on `fit_data` (required) through
    /// `model`, streaming over its batches.
    fn fit_model(
        &self,
        model: &dyn Model,
        fit_data: Option<&dyn BatchSource>,
    ) -> Result<Self::Fitted> {
        fit_layers(self, model, fit_data)
    }

    fn check_fit_size(&self, fit_samples: usize) -> Result<()> {
        FeatureDetector::check_fit_size(self, fit_samples)
    }
}

/// Fits `detector` on every layer it names, on `fit_data` through `model`:
/// one streaming pass for the statistics, a second when a layer's fitter
/// asks for one (ViM), and one for the aggregator's fit scores when
/// there are several layers.
fn fit_layers<D: FeatureDetector>(
    detector: &D,
    model: &dyn Model,
    fit_data: Option<&dyn BatchSource>,
) -> Result<FittedFeatures<D::Fitted>> {
    let name = detector.name();
    let layers = detector.layers();
    let features = features_of(model, name)?;
    if detector.options().perturbation.is_some() {
        input_gradient_of(model, &format!("{name} with an input step"))?;
    }
    if fit_data.is_none()
        && layers.len() == 1
        && let Some(state) = detector.fit_without_data(model)
    {
        let state = state?;
        CheckedFeatures::new(features, layers)?;
        return FittedFeatures::from_parts(
            name,
            layers.to_vec(),
            vec![state],
            None,
            detector.options().perturbation,
            None,
        );
    }
    let data = require_fit_data(
        fit_data,
        &format!("{name} fits statistics of in-distribution features"),
    )?;
    let mut fitters: Vec<Option<D::Fitter>> = layers.iter().map(|_| None).collect();
    let mut pass = Pass::new(features, layers, name)?;
    pass.run(data, 0, detector.needs_labels(), |l, batch| {
        let fitter = match &mut fitters[l] {
            Some(f) => f,
            slot => slot.insert(detector.fitter(batch.features.ncols(), Some(model))?),
        };
        fitter.update(batch)
    })?;
    let mut fitters = fitters
        .into_iter()
        .map(|f| {
            f.ok_or_else(|| Error::Empty {
                what: format!("the fit data of {name}"),
                hint: "it gave no batch".into(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut second = false;
    for fitter in &mut fitters {
        second |= fitter.end_first_pass()?;
    }
    if second {
        pass.run(data, 1, false, |l, batch| fitters[l].update_second(batch))?;
    }
    let states = fitters
        .into_iter()
        .map(LayerFitter::finish)
        .collect::<Result<Vec<_>>>()?;
    let aggregator = if states.len() > 1 {
        let mut scores: Vec<Vec<f32>> = vec![Vec::new(); states.len()];
        pass.run(data, 2, false, |l, batch| {
            scores[l].extend(score_in_parts(&states[l], batch)?);
            Ok(())
        })?;
        let views: Vec<_> = scores.iter().map(ArrayView1::from).collect();
        Some(Aggregator::fit(detector.options().aggregation, &views)?)
    } else {
        None
    };
    Ok(FittedFeatures {
        name,
        layers: layers.to_vec(),
        states,
        aggregator,
        perturbation: detector.options().perturbation,
        expects: pass.shape.filter(|_| model.records_input_shape()),
    })
}

/// Passes of a model over the fit data, layer by layer, through the
/// checked boundary (the widths of the first pass hold for the others).
struct Pass<'a> {
    checked: CheckedFeatures<'a>,
    detector: &'static str,
    /// The first batch's input shape and classes.
    shape: Option<ModelShape>,
}

impl<'a> Pass<'a> {
    fn new(
        model: &'a dyn FeatureModel,
        layers: &'a [LayerId],
        detector: &'static str,
    ) -> Result<Self> {
        Ok(Pass {
            checked: CheckedFeatures::new(model, layers)?,
            detector,
            shape: None,
        })
    }

    /// Runs the model on every batch of pass `pass` of `data` and hands
    /// each layer's batch to `each(layer, batch)`.
    fn run(
        &mut self,
        data: &dyn BatchSource,
        pass: usize,
        needs_labels: bool,
        mut each: impl FnMut(usize, &LayerBatch) -> Result<()>,
    ) -> Result<()> {
        let mut offset = 0;
        for batch in data.batches_for_pass(pass as u64)? {
            let Batch { inputs, labels, .. } = batch?;
            let n = inputs.shape()[0];
            let step = || -> Result<()> {
                if needs_labels && labels.is_none() {
                    return Err(Error::missing(
                        "class labels of the fit batches",
                        format!(
                            "{} fits class-conditional statistics: fit on a labelled dataset",
                            self.detector
                        ),
                    ));
                }
                if let Some(labels) = &labels
                    && labels.len() != n
                {
                    return Err(Error::LengthMismatch {
                        what: "inputs vs labels of a fit batch".into(),
                        left: n,
                        right: labels.len(),
                    });
                }
                let input_shape = inputs.shape().to_vec();
                let out = self.checked.forward(inputs)?;
                if self.shape.is_none() {
                    self.shape = ModelShape::of(&input_shape, &out.logits);
                }
                for (l, features) in out.features.iter().enumerate() {
                    each(
                        l,
                        &LayerBatch {
                            features: features.view(),
                            labels: labels.as_ref().map(|l| l.view()),
                            // A model of arrays computed elsewhere may have no
                            // logits: its batches are precomputed features.
                            logits: (out.logits.ncols() > 0).then(|| out.logits.view()),
                        },
                    )?;
                }
                Ok(())
            };
            step().map_err(|e| e.in_batch_at(offset))?;
            offset += n;
        }
        Ok(())
    }
}
