//! Feature detectors in files: the layers, each layer's fitted state (its
//! serde form: scalars in the header, arrays under `layer.{l}.`), the
//! aggregator and the input step. A state fitted on precomputed features
//! (e.g. a [`FittedKnn`](super::FittedKnn)) saves as a fit of one unnamed
//! layer and loads from any one-layer file.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::aggregation::Aggregator;
use super::{FittedFeatures, ScoreFeatures};
use crate::detectors::file::{Reader, Stored, Writer};
use crate::detectors::{InputPerturbation, ModelShape};
use crate::error::{Error, Result};
use crate::model::LayerId;

/// One layer's fitted state, saved in detector files through serde: derive
/// `Serialize` and `Deserialize`, mark array fields
/// `#[serde(with = "oodkit::detectors::file::array")]` (see
/// [`file::array`](crate::detectors::file::array)), and a
/// [`FittedFeatures`] of it is [`Persist`](crate::detectors::Persist).
/// Loading runs [`validate`](Self::validate) — the constructor's checks —
/// on what the file holds, and checks the state's width against the
/// layer's.
pub trait StoredState: ScoreFeatures + Serialize + DeserializeOwned {
    /// The detector kinds whose files hold this state, e.g. `&["KNN"]`.
    const KINDS: &'static [&'static str];

    /// The kind this state was fitted as (one of [`KINDS`](Self::KINDS)).
    fn state_kind(&self) -> &'static str;

    /// Errors when the state is inconsistent (shapes that do not agree,
    /// values out of range): what the fitting code never produces and a
    /// file may hold.
    fn validate(&self) -> Result<()>;
}

/// The prefix of layer `l`'s arrays.
fn prefix(l: usize) -> String {
    format!("layer.{l}.")
}

/// The `detector` header entry of a feature detector's file.
#[derive(Serialize, Deserialize)]
struct Header {
    /// The layers fitted on; empty for a state fitted on precomputed
    /// features.
    layers: Vec<LayerId>,
    widths: Vec<usize>,
    /// Each layer's state (its scalars; its arrays are in the table).
    states: Vec<Value>,
    aggregation: Option<Value>,
    perturbation: Option<InputPerturbation>,
    expects: Option<ModelShape>,
}

/// Writes the layers, states, aggregator, step and model shape.
fn write_fit<S: StoredState>(
    file: &mut Writer,
    layers: &[LayerId],
    states: &[&S],
    aggregator: Option<&Aggregator>,
    perturbation: Option<InputPerturbation>,
    expects: Option<ModelShape>,
) -> Result<()> {
    let header = Header {
        layers: layers.to_vec(),
        widths: states.iter().map(|s| s.width()).collect(),
        states: states
            .iter()
            .enumerate()
            .map(|(l, s)| file.state(&prefix(l), s))
            .collect::<Result<_>>()?,
        aggregation: aggregator
            .map(|a| file.state("aggregator.", a))
            .transpose()?,
        perturbation,
        expects,
    };
    let header = serde_json::to_value(header)
        .map_err(|e| Error::custom(format!("encoding a detector's header: {e}")))?;
    file.set("detector", header);
    Ok(())
}

/// What [`write_fit`] wrote, read back and checked.
struct Fit<S> {
    name: &'static str,
    layers: Vec<LayerId>,
    states: Vec<S>,
    aggregator: Option<Aggregator>,
    perturbation: Option<InputPerturbation>,
    expects: Option<ModelShape>,
}

fn read_fit<S: StoredState>(file: &Reader) -> Result<Fit<S>> {
    let kind = file.kind();
    let name = S::KINDS
        .iter()
        .copied()
        .find(|k| *k == kind)
        .ok_or_else(|| file.corrupt(format!("unknown feature detector kind \"{kind}\"")))?;
    let header: Header = file.header("header", file.required("detector")?)?;
    if header.states.is_empty() || header.widths.len() != header.states.len() {
        return Err(file.corrupt(format!(
            "{} layer states for {} widths",
            header.states.len(),
            header.widths.len()
        )));
    }
    let states = header
        .states
        .iter()
        .zip(&header.widths)
        .enumerate()
        .map(|(l, (json, &width))| {
            let state: S = file.state(&format!("layer {l}'s state"), &prefix(l), json)?;
            state
                .validate()
                .map_err(|e| file.corrupt(format!("layer {l}'s stored state is invalid: {e}")))?;
            if state.width() != width || width == 0 {
                return Err(file.corrupt(format!(
                    "layer {l}'s state has the shape of {} features, the header says {width}",
                    state.width()
                )));
            }
            if state.state_kind() != kind {
                return Err(file.corrupt(format!(
                    "layer {l}'s state is a {} state in a {kind} file",
                    state.state_kind()
                )));
            }
            Ok(state)
        })
        .collect::<Result<Vec<_>>>()?;
    let aggregator = match &header.aggregation {
        None => None,
        Some(json) => {
            let aggregator: Aggregator = file.state("aggregator", "aggregator.", json)?;
            aggregator
                .validate(states.len())
                .map_err(|e| file.corrupt(format!("its stored aggregator is invalid: {e}")))?;
            Some(aggregator)
        }
    };
    Ok(Fit {
        name,
        layers: header.layers,
        states,
        aggregator,
        perturbation: header.perturbation,
        expects: header.expects,
    })
}

impl<S: StoredState> Stored for FittedFeatures<S> {
    fn kind_name(&self) -> &'static str {
        self.name
    }

    fn accepts(kind: &str) -> bool {
        S::KINDS.contains(&kind)
    }

    fn expected_kind() -> String {
        S::KINDS.join(" or ")
    }

    fn write(&self, file: &mut Writer) -> Result<()> {
        let states: Vec<&S> = self.states.iter().collect();
        write_fit(
            file,
            &self.layers,
            &states,
            self.aggregator.as_ref(),
            self.perturbation,
            self.expects,
        )
    }

    fn read(file: &Reader) -> Result<Self> {
        let fit = read_fit::<S>(file)?;
        if fit.layers.len() != fit.states.len() {
            return Err(Error::WrongFile {
                path: file.path().to_path_buf(),
                expected: "a detector fitted through a model (on named layers)".into(),
                found: "a layer state fitted on precomputed features".into(),
                hint: format!(
                    "load it as the state itself ({}::load) and score precomputed features",
                    std::any::type_name::<S>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("the state")
                ),
            });
        }
        FittedFeatures::from_parts(
            fit.name,
            fit.layers,
            fit.states,
            fit.aggregator,
            fit.perturbation,
            fit.expects,
        )
        .map_err(|e| file.corrupt(e.to_string()))
    }
}

/// A layer state on its own: a one-layer file.
macro_rules! stored_state {
    ($($state:ty),*) => {$(
        impl Stored for $state {
            fn kind_name(&self) -> &'static str {
                self.state_kind()
            }

            fn accepts(kind: &str) -> bool {
                <$state as StoredState>::KINDS.contains(&kind)
            }

            fn expected_kind() -> String {
                <$state as StoredState>::KINDS.join(" or ")
            }

            fn write(&self, file: &mut Writer) -> Result<()> {
                write_fit(file, &[], &[self], None, None, None)
            }

            fn read(file: &Reader) -> Result<Self> {
                let mut fit = read_fit::<$state>(file)?;
                match fit.states.len() {
                    1 => Ok(fit.states.remove(0)),
                    n => Err(Error::WrongFile {
                        path: file.path().to_path_buf(),
                        expected: "one layer's state".into(),
                        found: format!("a fit on {n} layers"),
                        hint: "load it as FittedFeatures and score through the model".into(),
                    }),
                }
            }
        }
    )*};
}

stored_state!(
    super::FittedMahalanobis,
    super::FittedKnn,
    super::FittedVim,
    super::FittedShe,
    super::FittedGram,
    super::FittedDice,
    super::FittedVra,
    super::FittedFdbd,
    super::FittedNci,
    super::FittedGradNorm,
    super::FittedResidual,
    super::FittedNnGuide,
    super::FittedGmm
);
