//! Logit detectors in files: their parameters (no arrays), and for
//! [`FittedShaped`] the shaping beside them.

use serde_json::{Value, json};

use ndarray::Array2;

use super::{
    Energy, Entropy, FittedKlm, FittedOpenMax, FittedShaped, FittedTemperatureScaling, Gen,
    McDropout, McStatistic, Mls, Odin, OutputActivation, RankFeat, ScoreLogits, Weibull,
};
use crate::detectors::file::{Reader, Stored, Writer};
use crate::error::{Error, Result};
use crate::model::Shaping;

/// A logit detector's parameters in a file's header.
pub(crate) trait StoredLogits: ScoreLogits + Sized {
    /// The kinds its files name.
    const KINDS: &'static [&'static str];
    /// The parameters as JSON.
    fn params(&self) -> Value;
    /// The detector from its parameters, validated.
    fn from_params(file: &Reader, kind: &str, params: &Value) -> Result<Self>;
}

/// Numbers as `f64` of the exact `f32`, so they read back bit for bit.
fn num(v: f32) -> Value {
    json!(f64::from(v))
}

/// A parameter the detector's constructor refused.
fn invalid(file: &Reader, e: Error) -> Error {
    file.corrupt(format!("its stored parameters are invalid: {e}"))
}

impl StoredLogits for Mls {
    const KINDS: &'static [&'static str] = &["MLS", "MSP"];

    fn params(&self) -> Value {
        json!({})
    }

    fn from_params(_file: &Reader, kind: &str, _params: &Value) -> Result<Self> {
        Ok(Mls::with_activation(if kind == "MSP" {
            OutputActivation::Softmax
        } else {
            OutputActivation::Identity
        }))
    }
}

impl StoredLogits for Energy {
    const KINDS: &'static [&'static str] = &["Energy"];

    fn params(&self) -> Value {
        json!({ "temperature": num(self.temperature()) })
    }

    fn from_params(file: &Reader, _kind: &str, params: &Value) -> Result<Self> {
        Energy::new(file.number(params, "temperature")? as f32).map_err(|e| invalid(file, e))
    }
}

impl StoredLogits for Entropy {
    const KINDS: &'static [&'static str] = &["Entropy"];

    fn params(&self) -> Value {
        json!({})
    }

    fn from_params(_file: &Reader, _kind: &str, _params: &Value) -> Result<Self> {
        Ok(Entropy::new())
    }
}

impl StoredLogits for Gen {
    const KINDS: &'static [&'static str] = &["GEN"];

    fn params(&self) -> Value {
        json!({ "gamma": num(self.gamma()), "top_k": self.top_k() })
    }

    fn from_params(file: &Reader, _kind: &str, params: &Value) -> Result<Self> {
        Gen::new(
            file.number(params, "gamma")? as f32,
            file.count(params, "top_k")?,
        )
        .map_err(|e| invalid(file, e))
    }
}

impl StoredLogits for Odin {
    const KINDS: &'static [&'static str] = &["ODIN"];

    fn params(&self) -> Value {
        json!({ "temperature": num(self.temperature()), "epsilon": num(self.epsilon()) })
    }

    fn from_params(file: &Reader, _kind: &str, params: &Value) -> Result<Self> {
        Odin::new(
            file.number(params, "temperature")? as f32,
            file.number(params, "epsilon")? as f32,
        )
        .map_err(|e| invalid(file, e))
    }
}

impl StoredLogits for FittedTemperatureScaling {
    const KINDS: &'static [&'static str] = &["TemperatureScaling"];

    fn params(&self) -> Value {
        json!({ "temperature": num(self.temperature()) })
    }

    fn from_params(file: &Reader, _kind: &str, params: &Value) -> Result<Self> {
        FittedTemperatureScaling::new(file.number(params, "temperature")? as f32)
            .map_err(|e| invalid(file, e))
    }
}

impl StoredLogits for RankFeat {
    const KINDS: &'static [&'static str] = &["RankFeat"];

    fn params(&self) -> Value {
        json!({ "temperature": num(self.temperature()) })
    }

    fn from_params(file: &Reader, _kind: &str, params: &Value) -> Result<Self> {
        RankFeat::new(file.number(params, "temperature")? as f32).map_err(|e| invalid(file, e))
    }
}

impl StoredLogits for McDropout {
    const KINDS: &'static [&'static str] = &["MCDropout"];

    fn params(&self) -> Value {
        let statistic = match self.statistic() {
            McStatistic::Entropy => "entropy",
            McStatistic::Msp => "msp",
        };
        json!({ "passes": self.passes(), "statistic": statistic, "seed": self.seed() })
    }

    fn from_params(file: &Reader, _kind: &str, params: &Value) -> Result<Self> {
        let statistic = match file.text(params, "statistic")? {
            "entropy" => McStatistic::Entropy,
            "msp" => McStatistic::Msp,
            other => return Err(file.corrupt(format!("unknown McDropout statistic \"{other}\""))),
        };
        let seed = file
            .field(params, "seed")?
            .as_u64()
            .ok_or_else(|| file.corrupt("McDropout's seed is not a non-negative integer"))?;
        McDropout::new(file.count(params, "passes")?, statistic)
            .map(|d| d.with_seed(seed))
            .map_err(|e| invalid(file, e))
    }
}

/// Reads the detector of a file's `detector` entry.
fn read_logits<D: StoredLogits>(file: &Reader) -> Result<D> {
    D::from_params(file, file.kind(), file.required("detector")?)
}

macro_rules! stored_logits {
    ($($detector:ty),*) => {$(
        impl Stored for $detector {
            fn kind_name(&self) -> &'static str {
                self.name()
            }

            fn accepts(kind: &str) -> bool {
                <$detector as StoredLogits>::KINDS.contains(&kind)
            }

            fn expected_kind() -> String {
                <$detector as StoredLogits>::KINDS.join(" or ")
            }

            fn write(&self, file: &mut Writer) -> Result<()> {
                file.set("detector", self.params());
                Ok(())
            }

            /// Refuses a file with shaping: its scores are another
            /// detector's.
            fn read(file: &Reader) -> Result<Self> {
                if file.entry("shaping").is_some() {
                    return Err(Error::WrongFile {
                        path: file.path().to_path_buf(),
                        expected: format!("a plain {} detector", file.kind()),
                        found: format!("{} on activation-shaped logits", file.kind()),
                        hint: format!("load it as FittedShaped<{}>", stringify!($detector)),
                    });
                }
                read_logits(file)
            }
        }
    )*};
}

stored_logits!(
    Mls,
    Energy,
    Entropy,
    Gen,
    Odin,
    FittedTemperatureScaling,
    RankFeat,
    McDropout
);

/// A fitted logit detector with arrays (KLM's templates, OpenMax's means
/// and Weibull models): `write_arrays` / `read_arrays` beside its header.
macro_rules! stored_fitted_logits {
    ($detector:ty, $kind:literal, $write:expr, $read:expr) => {
        impl Stored for $detector {
            fn kind_name(&self) -> &'static str {
                $kind
            }

            fn accepts(kind: &str) -> bool {
                kind == $kind
            }

            fn expected_kind() -> String {
                $kind.into()
            }

            fn write(&self, file: &mut Writer) -> Result<()> {
                let write: fn(&$detector, &mut Writer) -> Value = $write;
                let params = write(self, file);
                file.set("detector", params);
                Ok(())
            }

            fn read(file: &Reader) -> Result<Self> {
                let read: fn(&Reader, &Value) -> Result<$detector> = $read;
                read(file, file.required("detector")?).map_err(|e| match e {
                    e @ (Error::CorruptFile { .. } | Error::WrongFile { .. }) => e,
                    e => invalid(file, e),
                })
            }
        }
    };
}

stored_fitted_logits!(
    FittedKlm,
    "KLM",
    |klm, file| {
        file.array("templates", klm.templates().view());
        json!({})
    },
    |file, _params| FittedKlm::new(file.array("templates", &[None, None])?)
);

stored_fitted_logits!(
    FittedOpenMax,
    "OpenMax",
    |openmax, file| {
        file.array("means", openmax.means().view());
        // A class without a model: a row of zeros, flagged 0 in "fitted".
        let weibulls = Array2::from_shape_fn((openmax.weibulls().len(), 3), |(k, p)| {
            openmax.weibulls()[k].map_or(0.0, |w| [w.shape(), w.scale(), w.shift()][p])
        });
        let fitted: ndarray::Array1<i64> = openmax
            .weibulls()
            .iter()
            .map(|w| i64::from(w.is_some()))
            .collect();
        file.array("weibulls", weibulls.view());
        file.array("fitted", fitted.view());
        json!({ "alpha": openmax.alpha() })
    },
    |file, params| {
        let means: Array2<f64> = file.array("means", &[None, None])?;
        let weibulls: Array2<f64> = file.array("weibulls", &[Some(means.nrows()), Some(3)])?;
        let fitted: ndarray::Array1<i64> = file.array("fitted", &[Some(means.nrows())])?;
        let weibulls = weibulls
            .rows()
            .into_iter()
            .zip(&fitted)
            .map(|(r, &f)| match f {
                0 => Ok(None),
                1 => Weibull::new(r[0], r[1], r[2]).map(Some),
                _ => Err(file.corrupt("OpenMax's \"fitted\" flags are not 0 or 1")),
            })
            .collect::<Result<Vec<_>>>()?;
        FittedOpenMax::new(means, weibulls, file.count(params, "alpha")?)
    }
);

fn shaping_json(shaping: Shaping) -> Value {
    match shaping {
        Shaping::React { threshold } => json!({"kind": "react", "threshold": num(threshold)}),
        Shaping::Ash { percentile } => json!({"kind": "ash", "percentile": num(percentile)}),
        Shaping::Scale { percentile } => json!({"kind": "scale", "percentile": num(percentile)}),
    }
}

fn read_shaping(file: &Reader, value: &Value) -> Result<Shaping> {
    let shaping = match file.text(value, "kind")? {
        "react" => {
            let react = Shaping::React {
                threshold: file.number(value, "threshold")? as f32,
            };
            react.validate().map_err(|e| invalid(file, e))?;
            react
        }
        "ash" => {
            Shaping::ash(file.number(value, "percentile")? as f32).map_err(|e| invalid(file, e))?
        }
        "scale" => Shaping::scale(file.number(value, "percentile")? as f32)
            .map_err(|e| invalid(file, e))?,
        other => return Err(file.corrupt(format!("unknown activation shaping \"{other}\""))),
    };
    Ok(shaping)
}

impl<D: StoredLogits> Stored for FittedShaped<D> {
    fn kind_name(&self) -> &'static str {
        self.detector().name()
    }

    fn accepts(kind: &str) -> bool {
        D::KINDS.contains(&kind)
    }

    fn expected_kind() -> String {
        format!("shaped {}", D::KINDS.join(" or "))
    }

    fn write(&self, file: &mut Writer) -> Result<()> {
        file.set("detector", self.detector().params());
        file.set("shaping", shaping_json(self.shaping()));
        Ok(())
    }

    fn read(file: &Reader) -> Result<Self> {
        let Some(shaping) = file.entry("shaping") else {
            return Err(Error::WrongFile {
                path: file.path().to_path_buf(),
                expected: format!("{} on activation-shaped logits", file.kind()),
                found: format!("a plain {} detector", file.kind()),
                hint: "load it as the detector alone".into(),
            });
        };
        let shaping = read_shaping(file, shaping)?;
        FittedShaped::new(read_logits::<D>(file)?, shaping).map_err(|e| invalid(file, e))
    }
}
