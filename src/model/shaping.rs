//! Activation shaping of the penultimate layer: ReAct, ASH-S and SCALE.
//!
//! The shaped activations go through the network's last layer again, and
//! any logit detector (MLS, MSP, Energy, Entropy, GEN, ODIN) scores the
//! logits that come out. A burn network is shaped with
//! [`BurnModel::with_shaping`](super::BurnModel::with_shaping); precomputed
//! penultimate features with [`Shaping::shape_features`] and
//! [`Shaping::logits`].

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

use super::{CheckedFeatures, LayerId, Model, features_of};
use crate::datasets::{BatchSource, require_fit_data};
use crate::error::{Error, Result};

/// How the penultimate activations are shaped before the last layer. In
/// files: `{"kind": "react", "threshold": ...}`, `{"kind": "ash",
/// "percentile": ...}`, `{"kind": "scale", "percentile": ...}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shaping {
    /// ReAct (Sun et al. 2021): activations clipped at `threshold`, a
    /// quantile of the ID activations ([`Shaping::react`] fits it).
    React {
        /// The clipping value.
        threshold: f32,
    },
    /// ASH-S (Djurisic et al. 2023): per sample, activations below the
    /// sample's `percentile` are zeroed and the rest scaled by
    /// exp(Σ all / Σ kept).
    Ash {
        /// Share of each sample's activations pruned, in [0, 1).
        percentile: f32,
    },
    /// SCALE (Xu et al. 2024): ASH-S's scaling without the pruning.
    Scale {
        /// Share of each sample's activations left out of the kept sum, in
        /// [0, 1).
        percentile: f32,
    },
}

impl Shaping {
    /// ReAct with its threshold at the `quantile` (in (0, 1], default 0.9)
    /// of all the penultimate activations of `fit_data` (ID data, e.g. part
    /// of the training set) through `model`. Without fit data: an error.
    ///
    /// All the activations are kept to take an exact quantile: fit on a
    /// subset (a few thousand images) when the layer is wide.
    pub fn react(
        model: &dyn Model,
        fit_data: Option<&dyn BatchSource>,
        quantile: f32,
    ) -> Result<Self> {
        check_react_quantile(quantile)?;
        let fit_data = require_fit_data(fit_data, "ReAct fits its threshold on ID activations")?;
        let penultimate = [LayerId::Index(-2)];
        let mut checked = CheckedFeatures::new(features_of(model, "ReAct")?, &penultimate)?;
        let mut values = Vec::new();
        let mut offset = 0;
        for batch in fit_data.batches()? {
            let batch = batch?;
            let n = batch.len();
            let output = checked
                .forward(batch.inputs)
                .map_err(|e| e.in_batch_at(offset))?;
            values.extend(output.features[0].iter().copied());
            offset += n;
        }
        if values.is_empty() {
            return Err(Error::Empty {
                what: "fit data".into(),
                hint: "ReAct needs ID activations to fit its threshold".into(),
            });
        }
        let k = ((quantile * values.len() as f32).ceil() as usize).clamp(1, values.len()) - 1;
        let (_, &mut threshold, _) = values.select_nth_unstable_by(k, f32::total_cmp);
        let react = Shaping::React { threshold };
        react.validate()?;
        Ok(react)
    }

    /// Errors unless the parameters are ones the constructors give: a
    /// ReAct threshold finite and not negative (it clips post-ReLU
    /// activations), an ASH or SCALE percentile in [0, 1). Shaping a
    /// detector ([`Shaped::new`](crate::detectors::Shaped::new)) and
    /// loading one check it.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Shaping::React { threshold } if !(threshold.is_finite() && threshold >= 0.0) => {
                Err(Error::invalid(
                    "ReAct threshold",
                    threshold,
                    "must be finite and at least 0: ReAct clips non-negative (post-ReLU) \
                     penultimate activations; fit it on the network's ID activations",
                ))
            }
            Shaping::React { .. } => Ok(()),
            Shaping::Ash { percentile } | Shaping::Scale { percentile } => {
                check_percentile(percentile)
            }
        }
    }

    /// ASH-S pruning the `percentile` (in [0, 1), default 0.9) smallest
    /// activations of each sample.
    pub fn ash(percentile: f32) -> Result<Self> {
        check_percentile(percentile)?;
        Ok(Shaping::Ash { percentile })
    }

    /// SCALE with the kept sum over the activations above the `percentile`
    /// (in [0, 1), default 0.85).
    pub fn scale(percentile: f32) -> Result<Self> {
        check_percentile(percentile)?;
        Ok(Shaping::Scale { percentile })
    }

    /// The shaped activations of penultimate features `(N, D)`.
    ///
    /// ```
    /// use ndarray::array;
    /// use oodkit::model::Shaping;
    ///
    /// let features = array![[1.0_f32, 2.0, 3.0, 4.0]];
    /// let clipped = Shaping::React { threshold: 2.5 }.shape_features(features.view());
    /// assert_eq!(clipped.row(0).to_vec(), vec![1.0, 2.0, 2.5, 2.5]);
    /// // Half pruned: 3 and 4 kept, scaled by exp(10 / 7).
    /// let ash = Shaping::ash(0.5)?.shape_features(features.view());
    /// let s = (10.0_f32 / 7.0).exp();
    /// assert_eq!(ash.row(0).to_vec(), vec![0.0, 0.0, 3.0 * s, 4.0 * s]);
    /// # Ok::<(), oodkit::Error>(())
    /// ```
    pub fn shape_features(&self, features: ArrayView2<f32>) -> Array2<f32> {
        let mut shaped = features.to_owned();
        match *self {
            Shaping::React { threshold } => shaped.mapv_inplace(|v| v.min(threshold)),
            Shaping::Ash { percentile } | Shaping::Scale { percentile } => {
                let prune = matches!(self, Shaping::Ash { .. });
                for mut row in shaped.rows_mut() {
                    let threshold = row_percentile(row.view(), percentile);
                    let total: f32 = row.sum();
                    let kept: f32 = row.iter().filter(|&&v| v >= threshold).sum();
                    let factor = (total / kept.max(f32::MIN_POSITIVE)).exp();
                    row.mapv_inplace(|v| {
                        if prune && v < threshold {
                            0.0
                        } else {
                            v * factor
                        }
                    });
                }
            }
        }
        shaped
    }

    /// The logits of shaped `features (N, D)` through a linear last layer:
    /// shaped · `weights (D, K)` + `bias (K)`. For features computed once.
    pub fn logits(
        &self,
        features: ArrayView2<f32>,
        weights: ArrayView2<f32>,
        bias: ArrayView1<f32>,
    ) -> Result<Array2<f32>> {
        if features.ncols() != weights.nrows() || weights.ncols() != bias.len() {
            return Err(Error::ShapeMismatch {
                what: "features · weights + bias".into(),
                expected: "features (N, D), weights (D, K), bias (K)".into(),
                found: format!(
                    "features {:?}, weights {:?}, bias {:?}",
                    features.shape(),
                    weights.shape(),
                    bias.shape()
                ),
            });
        }
        Ok(self.shape_features(features).dot(&weights) + bias.insert_axis(Axis(0)))
    }
}

/// The value at `percentile` of a row: its `⌊percentile · D⌋`-th smallest.
/// A row without activations has none to prune: any threshold will do.
fn row_percentile(row: ArrayView1<f32>, percentile: f32) -> f32 {
    let mut sorted: Vec<f32> = row.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    sorted
        .get(percentile_index(percentile, sorted.len()))
        .copied()
        .unwrap_or(0.0)
}

/// The index of the `percentile` in `len` sorted values.
pub(crate) fn percentile_index(percentile: f32, len: usize) -> usize {
    ((percentile * len as f32).floor() as usize).min(len.saturating_sub(1))
}

/// Errors unless ReAct's `quantile` is in (0, 1].
pub(crate) fn check_react_quantile(quantile: f32) -> Result<()> {
    if quantile > 0.0 && quantile <= 1.0 {
        Ok(())
    } else {
        Err(Error::invalid("quantile", quantile, "must be in (0, 1]"))
    }
}

fn check_percentile(percentile: f32) -> Result<()> {
    if (0.0..1.0).contains(&percentile) {
        Ok(())
    } else {
        Err(Error::invalid(
            "percentile",
            percentile,
            "must be in [0, 1)",
        ))
    }
}

#[cfg(feature = "burn")]
mod tensor {
    use burn::tensor::{Tensor, s};

    use super::{Shaping, percentile_index};

    impl Shaping {
        /// [`shape_features`](Shaping::shape_features) on a burn tensor, so
        /// autodiff runs through it (the thresholds count as constants).
        pub(crate) fn shape_tensor(&self, features: Tensor<2>) -> Tensor<2> {
            match *self {
                Shaping::React { threshold } => features.clamp_max(threshold),
                Shaping::Ash { percentile } | Shaping::Scale { percentile } => {
                    let [n, d] = features.dims();
                    let k = percentile_index(percentile, d);
                    let threshold = features
                        .clone()
                        .detach()
                        .sort(1)
                        .slice(s![.., k..k + 1])
                        .expand([n, d]);
                    let keep = features.clone().greater_equal(threshold).float();
                    let kept = features.clone() * keep.clone();
                    let factor = (features.clone().sum_dim(1)
                        / kept.clone().sum_dim(1).clamp_min(f32::MIN_POSITIVE))
                    .exp();
                    match self {
                        Shaping::Ash { .. } => kept * factor,
                        _ => features * factor,
                    }
                }
            }
        }
    }
}
