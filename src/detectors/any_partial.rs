//! Partial fits of any feature detector built by name: what a cluster's
//! workers fit on their shards of precomputed features
//! ([`UnfittedDetector::partial_fit_precomputed`](super::registry::UnfittedDetector::partial_fit_precomputed)),
//! save, and the driver loads
//! ([`UnfittedDetector::load_partial`](super::registry::UnfittedDetector::load_partial)),
//! merges and finishes into an [`AnyDetector`] — the typed
//! [`PartialFit`] behind one type.

use std::any::Any;
use std::fmt;
use std::path::Path;

use super::features::{FeatureDetector, FittedFeatures, PartialFit, PartialState, StoredState};
use super::file::Persist;
use super::{AnyDetector, Precomputed};
use crate::calibration::Calibrated;
use crate::detectors::any::Erasing;
use crate::error::{Error, Result};
use crate::model::{LayerId, resolve_layers};

/// A [`PartialFit`] of some feature detector, its layer fixed.
pub(crate) trait ErasedPartial: Send + Sync {
    fn merge(&mut self, other: Box<dyn ErasedPartial>) -> Result<()>;
    fn end_first_pass(&mut self) -> Result<bool>;
    fn in_second_pass(&self) -> bool;
    fn update(&mut self, data: &Precomputed<'_>) -> Result<()>;
    fn finish(self: Box<Self>) -> Result<AnyDetector>;
    fn save(&self, path: &Path) -> Result<()>;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// A partial fit of `D` and the layer it reads.
pub(crate) struct Typed<D: FeatureDetector> {
    partial: PartialFit<D>,
    name: &'static str,
    layer: LayerId,
    needs_labels: bool,
}

/// The labels of `data`; zeros (one class) for a detector that does not
/// read them, an error for one that does.
fn labels_for(data: &Precomputed<'_>, needs: bool, name: &str) -> Result<ndarray::Array1<i64>> {
    match data.labels() {
        Some(labels) => Ok(labels.to_owned()),
        None if !needs => Ok(ndarray::Array1::zeros(data.len())),
        None => Err(Error::MissingInput {
            what: "class labels of the fit data".into(),
            hint: format!("{name} fits class-conditional statistics: give the labels"),
        }),
    }
}

/// The one layer `detector` reads: partial fits take one.
fn one_layer<D: FeatureDetector>(detector: &D) -> Result<LayerId> {
    match detector.layers() {
        [layer] => Ok(layer.clone()),
        _ => Err(Error::Unsupported {
            what: format!("a partial fit of {} on several layers", detector.name()),
            hint: "fit each layer's partial fits apart, or the whole data at once".into(),
        }),
    }
}

/// The features of `layer` among `data`'s; `name` (the detector's) in the
/// error when `data` has none there.
fn features_of<'a>(
    data: &Precomputed<'a>,
    layer: &LayerId,
    name: &str,
) -> Result<ndarray::ArrayView2<'a, f32>> {
    let position = resolve_layers(std::slice::from_ref(layer), &data.layer_names())?[0];
    data.layer(position)
        .ok_or_else(|| Error::missing("features", format!("{name} fits on features: give them")))
}

impl<D> Typed<D>
where
    D: FeatureDetector,
{
    pub(crate) fn fit(detector: &D, data: &Precomputed<'_>) -> Result<Self> {
        let layer = one_layer(detector)?;
        let features = features_of(data, &layer, detector.name())?;
        let labels = labels_for(data, detector.needs_labels(), detector.name())?;
        // The fitter reads the head (ViM, DICE, ...) of the arrays.
        let mut partial = PartialFit::through(detector, features.ncols(), Some(data))?;
        partial.update(features, labels.view())?;
        Ok(Typed {
            partial,
            name: detector.name(),
            layer,
            needs_labels: detector.needs_labels(),
        })
    }

    pub(crate) fn load(detector: &D, path: &Path) -> Result<Self>
    where
        D::Fitter: PartialState,
    {
        Ok(Typed {
            layer: one_layer(detector)?,
            partial: PartialFit::<D>::load(path)?,
            name: detector.name(),
            needs_labels: detector.needs_labels(),
        })
    }
}

impl<D> ErasedPartial for Typed<D>
where
    D: FeatureDetector + Send + Sync + 'static,
    D::Fitter: PartialState + Send + Sync + 'static,
    D::Fitted: StoredState + 'static,
    FittedFeatures<D::Fitted>: Persist,
    Calibrated<FittedFeatures<D::Fitted>>: Persist,
{
    fn merge(&mut self, other: Box<dyn ErasedPartial>) -> Result<()> {
        let other = other.into_any().downcast::<Self>().map_err(|_| {
            Error::custom(format!(
                "cannot merge these partial fits: the other is not one of {} (merge only the \
                 partial fits of one detector, built with the same parameters)",
                self.name
            ))
        })?;
        if other.layer != self.layer {
            return Err(Error::custom(format!(
                "cannot merge partial fits of {} on layers {} and {}",
                self.name, self.layer, other.layer
            )));
        }
        self.partial.merge(other.partial)
    }

    fn end_first_pass(&mut self) -> Result<bool> {
        self.partial.end_first_pass()
    }

    fn in_second_pass(&self) -> bool {
        self.partial.in_second_pass()
    }

    fn update(&mut self, data: &Precomputed<'_>) -> Result<()> {
        let features = features_of(data, &self.layer, self.name)?;
        let labels = labels_for(data, self.needs_labels, self.name)?;
        self.partial.update(features, labels.view())
    }

    fn finish(self: Box<Self>) -> Result<AnyDetector> {
        let state = self.partial.finish()?;
        let fitted =
            FittedFeatures::from_parts(self.name, vec![self.layer], vec![state], None, None, None)?;
        Ok(AnyDetector::fitted(Erasing::boxed(fitted)))
    }

    fn save(&self, path: &Path) -> Result<()> {
        self.partial.save(path)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// A partial fit of a feature detector built by name: merge the shards'
/// (in the shards' order), end the first pass, [`finish`](Self::finish).
/// See [`PartialFit`] for the typed one and the protocol.
pub struct AnyPartialFit {
    pub(crate) inner: Box<dyn ErasedPartial>,
    pub(crate) kind: &'static str,
}

impl fmt::Debug for AnyPartialFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyPartialFit")
            .field("kind", &self.kind)
            .field("second_pass", &self.inner.in_second_pass())
            .finish_non_exhaustive()
    }
}

impl AnyPartialFit {
    /// The detector's kind, e.g. `"KNN"`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Merges the partial fit of another shard (the same detector and
    /// parameters, the same pass).
    pub fn merge(&mut self, other: AnyPartialFit) -> Result<()> {
        self.inner.merge(other.inner)
    }

    /// Ends the first pass (on the merged fit); `true` when a second pass
    /// over every shard is needed (ViM): give each worker a copy (the
    /// file), [`update`](Self::update_precomputed) it with its shard,
    /// merge the copies, then finish.
    pub fn end_first_pass(&mut self) -> Result<bool> {
        self.inner.end_first_pass()
    }

    /// Whether the first pass has ended.
    pub fn in_second_pass(&self) -> bool {
        self.inner.in_second_pass()
    }

    /// Adds a shard's precomputed features (and labels) to the pass it is
    /// in.
    pub fn update_precomputed(&mut self, data: &Precomputed<'_>) -> Result<()> {
        self.inner.update(data)
    }

    /// The fitted detector (ends the first pass when it has not ended; an
    /// error when a second pass is then needed).
    pub fn finish(self) -> Result<AnyDetector> {
        self.inner.finish()
    }

    /// Writes the partial fit's file (kind `"partial fit"`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.inner.save(path.as_ref())
    }
}
