//! Classification accuracy over plain logits and labels, and the argmax
//! every prediction in the crate goes through.

use ndarray::{ArrayView1, ArrayView2};

use crate::error::{Error, Result};

/// The predicted class of a row of logits: the index of its first largest
/// value (NaN never wins; an all-NaN row predicts class 0).
pub(crate) fn argmax(values: impl IntoIterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.into_iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Errors unless every label names one of `classes` outputs.
pub(crate) fn check_labels(labels: ArrayView1<i64>, classes: usize) -> Result<()> {
    match labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
        Some(&label) => Err(Error::InvalidLabel {
            label,
            reason: format!(
                "the network has {classes} outputs, so labels must be in 0..{classes}; \
                 relabel the classes (e.g. digits 5-9 as 0-4) or build the network with more outputs"
            ),
        }),
        None => Ok(()),
    }
}

/// How many rows of `logits` `(N, classes)` have their largest value at
/// their label, after the checks of [`accuracy`].
pub(crate) fn count_correct(logits: ArrayView2<f32>, labels: ArrayView1<i64>) -> Result<usize> {
    if logits.nrows() != labels.len() {
        return Err(Error::LengthMismatch {
            what: "rows of logits vs labels".into(),
            left: logits.nrows(),
            right: labels.len(),
        });
    }
    if logits.ncols() == 0 {
        return Err(Error::ShapeMismatch {
            what: "logits".into(),
            expected: "(N, num_classes) with at least one class".into(),
            found: format!("{:?}", logits.shape()),
        });
    }
    check_labels(labels, logits.ncols())?;
    Ok(logits
        .rows()
        .into_iter()
        .zip(labels)
        .filter(|(row, label)| argmax(row.iter().copied()) == **label as usize)
        .count())
}

/// The share of rows of `logits` `(N, num_classes)` whose largest value is
/// at their label (the first largest on ties).
///
/// Errors when the lengths differ, there is no row or no class, or a label
/// is outside `0..num_classes`.
///
/// ```
/// use ndarray::array;
/// use oodkit::metrics::accuracy;
///
/// let logits = array![[2.0_f32, 0.0], [0.0, 1.0], [3.0, 3.0]];
/// // Rows predict 0, 1 and (a tie, the first) 0.
/// assert_eq!(accuracy(logits.view(), array![0_i64, 1, 1].view())?, 2.0 / 3.0);
/// assert!(accuracy(logits.view(), array![0_i64, 1, 2].view()).is_err());
/// # Ok::<(), oodkit::Error>(())
/// ```
pub fn accuracy(logits: ArrayView2<f32>, labels: ArrayView1<i64>) -> Result<f64> {
    let correct = count_correct(logits, labels)?;
    if labels.is_empty() {
        return Err(Error::Empty {
            what: "the logits to measure the accuracy of".into(),
            hint: "give at least one row".into(),
        });
    }
    Ok(correct as f64 / labels.len() as f64)
}
