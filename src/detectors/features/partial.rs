//! Partial fits: one layer's fitter fed a shard of the fit data on some
//! worker (a thread, a process, another machine), saved to a file and
//! loaded where the shards' fits merge into one detector.
//!
//! A [`PartialFit`] is the fitter of a [`FeatureDetector`] with the pass it
//! is in and the width it fits; files of partial fits are of the kind
//! `"partial fit"` (the detector is named in the header), never mistaken
//! for a fitted detector.

use std::fmt;

use ndarray::{ArrayView1, ArrayView2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::traits::{cannot_merge, check_fit_features, check_width, fit_chunks};
use super::{FeatureDetector, LayerFitter};
use crate::detectors::file::{Reader, Stored, Writer};
use crate::error::{Error, Result};
use crate::model::Model;

/// The kind of every partial fit's file.
pub(crate) const PARTIAL_KIND: &str = "partial fit";

/// A layer fitter that saves in a [`PartialFit`]'s file through serde,
/// as a [`StoredState`](super::StoredState) does in a detector's: derive
/// or write `Serialize` and `Deserialize`, arrays marked
/// `#[serde(with = "oodkit::detectors::file::array")]`. Loading runs
/// [`validate`](Self::validate) on what the file holds.
pub trait PartialState: LayerFitter + Serialize + DeserializeOwned {
    /// The detectors (their names, e.g. `&["Mahalanobis", "RMDS"]`) this
    /// fitter fits.
    const DETECTORS: &'static [&'static str];

    /// The detector this fitter fits (one of [`DETECTORS`](Self::DETECTORS)).
    fn detector(&self) -> &'static str;

    /// The width of the features it fits.
    fn width(&self) -> usize;

    /// Errors when the state is inconsistent (shapes that do not agree,
    /// counts that do not add up, settings out of range): what fitting
    /// never produces and a file may hold.
    fn validate(&self) -> Result<()>;
}

/// One layer's fit of detector `D` on part of the fit data: fitted on
/// each shard by a worker ([`FeatureDetector::partial_fit`]), saved
/// ([`Persist::save`](crate::detectors::Persist::save)) and loaded
/// ([`Persist::load`](crate::detectors::Persist::load)) where the shards
/// meet, merged, and finished into the detector one pass over all the
/// data gives (to rounding; KNN's rows in the merge order).
///
/// A detector with a second pass over the fit data (ViM) ends its first
/// pass on the merged fit ([`end_first_pass`](Self::end_first_pass)); each
/// worker then gets a copy of it (the file again) to
/// [`update`](Self::update) with its shard, and those copies merge and
/// finish.
///
/// ```
/// use ndarray::{Array1, Array2, s};
/// use oodkit::detectors::{FeatureDetector, Mahalanobis, PartialFit, Persist, ScoreFeatures};
///
/// let features = Array2::from_shape_fn((40, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
/// let labels: Array1<i64> = (0..40).map(|i| i % 2).collect();
/// let detector = Mahalanobis::new();
/// // Two workers, each with its shard, save their partial fits.
/// let dir = tempfile::tempdir()?;
/// for (k, rows) in [(0, 0..25), (1, 25..40)] {
///     let shard = detector.partial_fit(
///         features.slice(s![rows.clone(), ..]),
///         labels.slice(s![rows]),
///     )?;
///     shard.save(dir.path().join(format!("part-{k}.oodkit")))?;
/// }
/// // Where they meet: load, merge, finish.
/// let mut merged = PartialFit::<Mahalanobis>::load(dir.path().join("part-0.oodkit"))?;
/// merged.merge(PartialFit::load(dir.path().join("part-1.oodkit"))?)?;
/// let fitted = merged.finish()?;
/// let whole = detector.fit_features(features.view(), labels.view())?;
/// let (a, b) = (fitted.score_features(features.view())?, whole.score_features(features.view())?);
/// assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PartialFit<D: FeatureDetector> {
    fitter: D::Fitter,
    width: usize,
    second_pass: bool,
}

impl<D: FeatureDetector> Clone for PartialFit<D> {
    fn clone(&self) -> Self {
        PartialFit {
            fitter: self.fitter.clone(),
            width: self.width,
            second_pass: self.second_pass,
        }
    }
}

impl<D: FeatureDetector> fmt::Debug for PartialFit<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialFit")
            .field("detector", &std::any::type_name::<D>())
            .field("width", &self.width)
            .field("second_pass", &self.second_pass)
            .finish_non_exhaustive()
    }
}

impl<D: FeatureDetector> PartialFit<D> {
    /// A fit of `width`-wide features by `detector` that has seen nothing
    /// yet (a worker's shard can be empty).
    pub fn new(detector: &D, width: usize) -> Result<Self> {
        Self::through(detector, width, None)
    }

    /// [`new`](Self::new), the fitter reading what it needs of `model`
    /// (the head).
    pub(crate) fn through(detector: &D, width: usize, model: Option<&dyn Model>) -> Result<Self> {
        if width == 0 {
            return Err(Error::invalid(
                "width",
                0,
                "features have at least one column",
            ));
        }
        Ok(PartialFit {
            fitter: detector.fitter(width, model)?,
            width,
            second_pass: false,
        })
    }

    /// The width of the features it fits.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Whether its first pass has ended: [`update`](Self::update) feeds
    /// the second.
    pub fn in_second_pass(&self) -> bool {
        self.second_pass
    }

    /// Adds precomputed features `(N, D)` and their labels to the pass it
    /// is in, in chunks. Errors on no rows, another width, labels of
    /// another length, and values that are not finite.
    pub fn update(&mut self, features: ArrayView2<f32>, labels: ArrayView1<i64>) -> Result<()> {
        let what = "the features of a partial fit";
        check_fit_features(features, labels, what)?;
        check_width(self.width, features, what)?;
        for batch in fit_chunks(features, labels) {
            if self.second_pass {
                self.fitter.update_second(&batch)?;
            } else {
                self.fitter.update(&batch)?;
            }
        }
        Ok(())
    }

    /// Merges `other`, a fit of the same detector (the same settings) on
    /// another shard, in the same pass: the result is the fit of both
    /// shards, this one's rows first.
    pub fn merge(&mut self, other: Self) -> Result<()> {
        let name = std::any::type_name::<D>()
            .rsplit("::")
            .next()
            .unwrap_or("the detector");
        if self.width != other.width {
            return Err(cannot_merge(
                name,
                format!(
                    "they fit features of {} and of {} columns",
                    self.width, other.width
                ),
            ));
        }
        if self.second_pass != other.second_pass {
            return Err(cannot_merge(
                name,
                "one has ended its first pass and the other has not (end the first pass on the \
                 merged fit of every shard, then give each shard a copy of it)",
            ));
        }
        self.fitter.merge(other.fitter)
    }

    /// Ends the first pass (on the merged fit of every shard); `true` when
    /// the detector needs a second pass over the same fit data: give each
    /// worker a copy, [`update`](Self::update) it with the worker's shard,
    /// merge the copies, then [`finish`](Self::finish). An error when the
    /// first pass has already ended.
    pub fn end_first_pass(&mut self) -> Result<bool> {
        if self.second_pass {
            return Err(Error::custom(
                "this partial fit's first pass has already ended: update it with the shard's \
                 features, merge the shards' copies and finish",
            ));
        }
        self.second_pass = self.fitter.end_first_pass()?;
        Ok(self.second_pass)
    }

    /// The fitted state of the layer. Ends the first pass when it has not
    /// ended; an error when the detector then needs a second pass.
    pub fn finish(mut self) -> Result<D::Fitted> {
        if !self.second_pass && self.end_first_pass()? {
            return Err(Error::custom(
                "this detector needs a second pass over the fit data: end the first pass on \
                 the merged fit of every shard (end_first_pass), update a copy of it with each \
                 shard, merge the copies, then finish",
            ));
        }
        self.fitter.finish()
    }
}

/// The `partial` entry of a partial fit's file header.
#[derive(Serialize, Deserialize)]
struct Header {
    detector: String,
    width: usize,
    second_pass: bool,
    /// The fitter's scalars; its arrays are under `fitter.`.
    state: serde_json::Value,
}

const PREFIX: &str = "fitter.";

impl<D> Stored for PartialFit<D>
where
    D: FeatureDetector,
    D::Fitter: PartialState,
{
    fn kind_name(&self) -> &'static str {
        PARTIAL_KIND
    }

    fn accepts(kind: &str) -> bool {
        kind == PARTIAL_KIND
    }

    fn expected_kind() -> String {
        format!("partial fit of {}", D::Fitter::DETECTORS.join(" or "))
    }

    fn write(&self, file: &mut Writer) -> Result<()> {
        let header = Header {
            detector: self.fitter.detector().to_owned(),
            width: self.width,
            second_pass: self.second_pass,
            state: file.state(PREFIX, &self.fitter)?,
        };
        let header = serde_json::to_value(header)
            .map_err(|e| Error::custom(format!("encoding a partial fit's header: {e}")))?;
        file.set("partial", header);
        Ok(())
    }

    fn read(file: &Reader) -> Result<Self> {
        let header: Header = file.header("header", file.required("partial")?)?;
        if !D::Fitter::DETECTORS.contains(&header.detector.as_str()) {
            return Err(Error::WrongFile {
                path: file.path().to_path_buf(),
                expected: Self::expected_kind(),
                found: format!("a partial fit of {}", header.detector),
                hint: "load it as a partial fit of its own detector".into(),
            });
        }
        let fitter: D::Fitter = file.state("partial fit", PREFIX, &header.state)?;
        fitter
            .validate()
            .map_err(|e| file.corrupt(format!("its partial fit is invalid: {e}")))?;
        if fitter.detector() != header.detector || fitter.width() != header.width {
            return Err(file.corrupt(format!(
                "the header names a partial fit of {} on {} columns, the state is one of {} on {}",
                header.detector,
                header.width,
                fitter.detector(),
                fitter.width()
            )));
        }
        if header.width == 0 {
            return Err(file.corrupt("its partial fit has no feature column"));
        }
        Ok(PartialFit {
            fitter,
            width: header.width,
            second_pass: header.second_pass,
        })
    }
}

/// Errors unless `count` can be a number of fit samples: counts far past
/// any data set (a corrupt file's) would overflow the sums of counts.
pub(crate) fn check_count(count: u64, what: &str) -> Result<()> {
    if count > 1 << 53 {
        return Err(Error::custom(format!(
            "{what} counts {count} samples, more than any fit holds"
        )));
    }
    Ok(())
}

/// Errors unless `labels` ascend strictly (the classes of a fit, each
/// once).
pub(crate) fn check_classes(labels: &[i64]) -> Result<()> {
    if labels.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::custom(
            "its class labels are not each listed once, in ascending order",
        ));
    }
    Ok(())
}

/// Errors unless `found == expected`, naming `what`.
pub(crate) fn check_len(what: &str, found: usize, expected: usize) -> Result<()> {
    if found != expected {
        return Err(Error::custom(format!(
            "{what} has {found} entries where {expected} were expected"
        )));
    }
    Ok(())
}
