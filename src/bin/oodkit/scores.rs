//! Score files: `.npy` (one vector of scores) and `.csv` (one row per
//! input: score, p-value, verdict, predicted class, file).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::Array1;
use oodkit::calibration::Verdict;
use oodkit::datasets::npy;
use oodkit::{Error, Result};

/// The columns of a score CSV; the file name last, as it may hold commas.
const HEADER: &str = "score,p_value,is_ood,class,file";

/// What `oodkit score` writes.
pub enum Format {
    Npy,
    Csv,
}

/// The format of `path` by its extension.
pub fn format_of(path: &Path) -> Result<Format> {
    match extension(path).as_deref() {
        Some("npy") => Ok(Format::Npy),
        Some("csv") => Ok(Format::Csv),
        _ => Err(Error::InvalidParameter {
            name: "out",
            value: path.display().to_string(),
            reason: "score files end in .csv (score, p-value, verdict, class, file per input) \
                     or .npy (the scores alone)"
                .into(),
        }),
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension().map(|e| e.to_string_lossy().to_lowercase())
}

/// The scores of a `.npy` vector or of a score `.csv`.
pub fn read(path: &Path) -> Result<Array1<f32>> {
    match extension(path).as_deref() {
        Some("csv") => read_csv(path),
        _ => npy::read_vector(path),
    }
}

fn read_csv(path: &Path) -> Result<Array1<f32>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
            hint: "give a score file written by `oodkit score`".into(),
        },
        _ => Error::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let column = header
        .split(',')
        .position(|c| c.trim() == "score")
        .ok_or_else(|| corrupt(path, format!("no `score` column in the header {header:?}")))?;
    let mut scores = Vec::new();
    for (row, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let field = line.split(',').nth(column).unwrap_or_default().trim();
        let score = field.parse::<f32>().map_err(|_| {
            corrupt(
                path,
                format!("row {}: the score {field:?} is not a number", row + 2),
            )
        })?;
        scores.push(score);
    }
    Ok(Array1::from(scores))
}

fn corrupt(path: &Path, reason: String) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        offset: None,
        reason,
    }
}

/// Writes one row per input (`verdicts` empty when uncalibrated; classes
/// the predicted ones).
pub fn write(
    path: &Path,
    scores: &Array1<f32>,
    verdicts: &[Verdict],
    classes: &Array1<i64>,
    files: &[PathBuf],
) -> Result<()> {
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    match format_of(path)? {
        Format::Npy => npy::write_vector(path, scores.view()),
        Format::Csv => {
            let mut text = String::with_capacity(64 * scores.len());
            text.push_str(HEADER);
            text.push('\n');
            for (i, score) in scores.iter().enumerate() {
                let (p, flag) = match verdicts.get(i) {
                    Some(v) => (v.p_value.to_string(), u8::from(v.is_ood).to_string()),
                    None => (String::new(), String::new()),
                };
                let file = files
                    .get(i)
                    .map(|f| f.display().to_string())
                    .unwrap_or_default();
                let _ = writeln!(text, "{score},{p},{flag},{},{file}", classes[i]);
            }
            std::fs::write(path, text).map_err(io)
        }
    }
}
