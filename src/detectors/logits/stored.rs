//! Logit detectors in files: their serde form in the header's `detector`
//! entry (array fields, e.g. KLM's templates, in the table), and for
//! [`FittedShaped`] the shaping beside them.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FittedShaped, ScoreLogits};
use crate::detectors::file::{Reader, Stored, Writer};
use crate::error::{Error, Result};
use crate::model::Shaping;

/// A logit detector (parameters, or a fitted state such as
/// [`FittedKlm`](super::FittedKlm)) saved in detector files through serde:
/// derive `Serialize` and `Deserialize` (array fields marked
/// `#[serde(with = "oodkit::detectors::file::array")]`), and it is
/// [`Persist`](crate::detectors::Persist), plain, on shaped logits and
/// calibrated. Its [`name`](ScoreLogits::name) is the kind written.
/// Loading runs [`validate`](Self::validate) — its constructor's checks —
/// on what the file holds.
pub trait StoredLogits: ScoreLogits + Serialize + DeserializeOwned {
    /// The kinds whose files hold this type, e.g. `&["Energy"]`.
    const KINDS: &'static [&'static str];

    /// Errors when a value is out of range: the checks its constructor
    /// makes.
    fn validate(&self) -> Result<()>;

    /// The detector read from a file of `kind`, for types that serve
    /// several kinds (MLS and MSP); itself by default.
    fn of_kind(self, kind: &str) -> Self {
        let _ = kind;
        self
    }
}

/// Reads the detector of a file's `detector` entry, checked.
fn read_logits<D: StoredLogits>(file: &Reader) -> Result<D> {
    let kind = file.kind();
    let detector = file
        .state::<D>("parameters", "", file.required("detector")?)?
        .of_kind(kind);
    detector
        .validate()
        .map_err(|e| file.corrupt(format!("its stored parameters are invalid: {e}")))?;
    if detector.name() != kind {
        return Err(file.corrupt(format!(
            "a {} detector read from a {kind} file",
            detector.name()
        )));
    }
    Ok(detector)
}

impl<D: StoredLogits> Stored for D {
    fn kind_name(&self) -> &'static str {
        self.name()
    }

    fn accepts(kind: &str) -> bool {
        D::KINDS.contains(&kind)
    }

    fn expected_kind() -> String {
        D::KINDS.join(" or ")
    }

    fn write(&self, file: &mut Writer) -> Result<()> {
        let params = file.state("", self)?;
        file.set("detector", params);
        Ok(())
    }

    /// Refuses a file with shaping: its scores are another detector's.
    fn read(file: &Reader) -> Result<Self> {
        if file.entry("shaping").is_some() {
            return Err(Error::WrongFile {
                path: file.path().to_path_buf(),
                expected: format!("a plain {} detector", file.kind()),
                found: format!("{} on activation-shaped logits", file.kind()),
                hint: "load it as a shaped detector (FittedShaped), or through AnyDetector".into(),
            });
        }
        read_logits(file)
    }
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
        let params = file.state("", self.detector())?;
        file.set("detector", params);
        let shaping = file.state("", &self.shaping())?;
        file.set("shaping", shaping);
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
        let shaping: Shaping = file.header("shaping", shaping)?;
        FittedShaped::new(read_logits::<D>(file)?, shaping)
            .map_err(|e| file.corrupt(format!("its stored shaping is invalid: {e}")))
    }
}
