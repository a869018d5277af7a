//! Feature detectors in files: the layers, each layer's fitted state (its
//! arrays under `layer.{l}.`), the aggregator and the input step. A state
//! fitted on precomputed features (e.g. a [`FittedKnn`](super::FittedKnn))
//! saves as a fit of one unnamed layer and loads from any one-layer file.

use serde_json::{Value, json};

use super::aggregation::Aggregator;
use super::{FittedFeatures, ScoreFeatures};
use crate::detectors::file::{Reader, Stored, Writer, shape_json};
use crate::detectors::{InputPerturbation, ModelShape};
use crate::error::{Error, Result};
use crate::model::LayerId;

/// One layer's fitted state in a file.
pub(crate) trait StoredState: ScoreFeatures + Sized {
    /// The detector kinds whose files hold this state.
    const KINDS: &'static [&'static str];
    /// The kind this state was fitted as.
    fn state_kind(&self) -> &'static str;
    /// Writes its arrays under `prefix` and returns its parameters.
    fn write_state(&self, file: &mut Writer, prefix: &str) -> Result<Value>;
    /// Reads it back: its parameters, its arrays under `prefix`, checked
    /// against the layer's `width` and the file's `kind`.
    fn read_state(
        file: &Reader,
        prefix: &str,
        params: &Value,
        width: usize,
        kind: &str,
    ) -> Result<Self>;
}

/// The prefix of layer `l`'s arrays.
fn prefix(l: usize) -> String {
    format!("layer.{l}.")
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
    let params: Vec<Value> = states
        .iter()
        .enumerate()
        .map(|(l, s)| s.write_state(file, &prefix(l)))
        .collect::<Result<_>>()?;
    let aggregation = aggregator.map(|a| a.write(file, "aggregator."));
    file.set(
        "detector",
        json!({
            "layers": layers.iter().map(layer_json).collect::<Vec<_>>(),
            "widths": states.iter().map(|s| s.width()).collect::<Vec<_>>(),
            "states": params,
            "aggregation": aggregation,
            "perturbation": perturbation.map(|p| json!({
                "temperature": f64::from(p.temperature()),
                "epsilon": f64::from(p.epsilon()),
            })),
            "expects": shape_json(expects),
        }),
    );
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
    let detector = file.required("detector")?;
    let list = |field: &str| -> Result<&Vec<Value>> {
        file.field(detector, field)?
            .as_array()
            .ok_or_else(|| file.corrupt(format!("the header's \"{field}\" is not a list")))
    };
    let layers = list("layers")?
        .iter()
        .map(|v| match v {
            Value::String(name) => Ok(LayerId::Name(name.clone())),
            other => other
                .as_i64()
                .and_then(|i| isize::try_from(i).ok())
                .map(LayerId::Index)
                .ok_or_else(|| {
                    file.corrupt(format!("a layer is neither a name nor an index: {other}"))
                }),
        })
        .collect::<Result<Vec<_>>>()?;
    let widths = list("widths")?;
    let params = list("states")?;
    if params.is_empty() || widths.len() != params.len() {
        return Err(file.corrupt(format!(
            "{} layer states for {} widths",
            params.len(),
            widths.len()
        )));
    }
    let states = params
        .iter()
        .zip(widths)
        .enumerate()
        .map(|(l, (params, width))| {
            let width = width
                .as_u64()
                .and_then(|w| usize::try_from(w).ok())
                .filter(|&w| w > 0)
                .ok_or_else(|| {
                    file.corrupt(format!("layer {l}'s width is not a positive integer"))
                })?;
            S::read_state(file, &prefix(l), params, width, kind)
        })
        .collect::<Result<Vec<_>>>()?;
    let aggregator = match file.field(detector, "aggregation")? {
        Value::Null => None,
        params => Some(Aggregator::read(file, "aggregator.", params, states.len())?),
    };
    let perturbation = match file.field(detector, "perturbation")? {
        Value::Null => None,
        step => Some(
            InputPerturbation::new(
                file.number(step, "temperature")? as f32,
                file.number(step, "epsilon")? as f32,
            )
            .map_err(|e| file.corrupt(format!("the stored input step is invalid: {e}")))?,
        ),
    };
    let expects = file.model_shape(file.field(detector, "expects")?)?;
    Ok(Fit {
        name,
        layers,
        states,
        aggregator,
        perturbation,
        expects,
    })
}

fn layer_json(layer: &LayerId) -> Value {
    match layer {
        LayerId::Index(i) => json!(i),
        LayerId::Name(name) => json!(name),
    }
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
