//! A model's accuracy on labelled batches: [`evaluate`].

use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::metrics::count_correct;

use super::{Model, check_logits};

/// The share of samples whose largest logit is their label, over all
/// `batches` (which must carry labels), through any [`Model`]: a burn
/// network, an ONNX graph or a closure. Streams batch by batch; the
/// counting is [`metrics::accuracy`](crate::metrics::accuracy)'s.
///
/// Errors on batches without labels, labels outside the model's classes,
/// logits of the wrong shape, and no samples at all.
///
/// ```
/// use ndarray::{Array1, Array2, Array4};
/// use oodkit::datasets::OodDataset;
/// use oodkit::model::{evaluate, from_fn};
///
/// // A "model" that always predicts class 1.
/// let model = from_fn(|x| Ok(Array2::from_shape_fn((x.shape()[0], 2), |(_, j)| j as f32)));
/// let data = OodDataset::from_arrays(Array4::zeros((4, 1, 1, 1)), Array1::from(vec![1, 1, 1, 0]))?;
/// assert_eq!(evaluate(&model, &data)?, 0.75);
/// # Ok::<(), oodkit::Error>(())
/// ```
pub fn evaluate(model: &dyn Model, batches: &dyn BatchSource) -> Result<f64> {
    let (mut correct, mut samples) = (0_usize, 0_usize);
    for batch in batches.batches()? {
        let batch = batch?;
        let labels = batch.labels.ok_or_else(|| {
            Error::missing(
                "class labels of the evaluation batches",
                "accuracy needs labels: prepare a labelled dataset (with_labels(true))",
            )
        })?;
        let n = labels.len();
        let logits = model.forward_owned(batch.inputs)?;
        check_logits(&logits, n)?;
        correct += count_correct(logits.view(), labels.view())?;
        samples += n;
    }
    if samples == 0 {
        return Err(Error::Empty {
            what: "evaluation batches".into(),
            hint: "there is nothing to measure the accuracy on".into(),
        });
    }
    Ok(correct as f64 / samples as f64)
}
