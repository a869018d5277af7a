//! Writing what a command reports.

use std::path::Path;

use oodkit::{Error, Result};

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::custom(format!("encoding the report: {e}")))?;
    oodkit::datasets::write_atomically(path, (text + "\n").as_bytes())?;
    println!("report written to {}", path.display());
    Ok(())
}
