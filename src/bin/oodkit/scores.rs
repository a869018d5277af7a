//! Score files: `.npy` (one vector of scores) and `.csv` (one row per
//! input: score, p-value, verdict, predicted class, file).

use std::path::{Path, PathBuf};

use ndarray::Array1;
use oodkit::calibration::Verdict;
use oodkit::datasets::npy;
use oodkit::{Error, Result};

/// The columns of a score CSV (file names holding commas, quotes or line
/// breaks are quoted).
const HEADER: [&str; 5] = ["score", "p_value", "is_ood", "class", "file"];

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

/// The scores of a `.npy` vector or of a score `.csv`: at least one, each
/// a finite number (errors name the file).
pub fn read(path: &Path) -> Result<Array1<f32>> {
    let scores = match extension(path).as_deref() {
        Some("csv") => read_csv(path)?,
        _ => npy::read_vector(path)?,
    };
    if scores.is_empty() {
        return Err(Error::Empty {
            what: format!("the score file {}", path.display()),
            hint: "it holds no score: give the file `oodkit score` wrote for a folder of \
                   images"
                .into(),
        });
    }
    if let Some((i, v)) = scores.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(corrupt(
            path,
            format!(
                "score {} of {} is {v}: scores must be finite numbers",
                i + 1,
                scores.len()
            ),
        ));
    }
    Ok(scores)
}

fn read_csv(path: &Path) -> Result<Array1<f32>> {
    let bytes =
        oodkit::datasets::read_regular_file(path, "a score file written by `oodkit score`")?;
    let mut reader = csv::ReaderBuilder::new().from_reader(bytes.as_slice());
    let header = reader
        .headers()
        .map_err(|e| corrupt(path, format!("its header is not CSV: {e}")))?
        .clone();
    let column = header
        .iter()
        .position(|c| c.trim() == "score")
        .ok_or_else(|| corrupt(path, format!("no `score` column in the header {header:?}")))?;
    let mut scores = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| corrupt(path, format!("row {}: {e}", row + 2)))?;
        let field = record.get(column).unwrap_or_default().trim();
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
    match format_of(path)? {
        Format::Npy => npy::write_vector(path, scores.view()),
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(Vec::with_capacity(64 * scores.len()));
            let encode = |e: csv::Error| Error::custom(format!("encoding the score CSV: {e}"));
            csv.write_record(HEADER).map_err(encode)?;
            for (i, score) in scores.iter().enumerate() {
                let (p, flag) = match verdicts.get(i) {
                    Some(v) => (v.p_value.to_string(), u8::from(v.is_ood).to_string()),
                    None => (String::new(), String::new()),
                };
                let file = files
                    .get(i)
                    .map(|f| f.display().to_string())
                    .unwrap_or_default();
                csv.write_record([score.to_string(), p, flag, classes[i].to_string(), file])
                    .map_err(encode)?;
            }
            let bytes = csv
                .into_inner()
                .map_err(|e| Error::custom(format!("encoding the score CSV: {e}")))?;
            oodkit::datasets::write_atomically(path, &bytes)
        }
    }
}
