//! Writing what a command reports.

use std::path::Path;

use oodkit::{Error, Result};

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::custom(format!("encoding the report: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    println!("report written to {}", path.display());
    Ok(())
}
