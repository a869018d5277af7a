//! [`Batch`]: what a prepared dataset yields and a model consumes.

use ndarray::{Array1, Array4};

/// One batch of samples: inputs laid out `(N, C, H, W)`, and, when asked for,
/// their class labels and OOD labels (`0` = in-distribution, `1` = OOD by
/// default), row-aligned with the inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Inputs, `(N, C, H, W)`.
    pub inputs: Array4<f32>,
    /// Class labels, one per input, when the batch stream carries them.
    pub labels: Option<Array1<i64>>,
    /// OOD labels, one per input, when the batch stream carries them.
    pub ood_labels: Option<Array1<u8>>,
}

impl Batch {
    /// A batch of inputs alone.
    pub fn new(inputs: Array4<f32>) -> Self {
        Batch {
            inputs,
            labels: None,
            ood_labels: None,
        }
    }

    /// Number of samples in the batch.
    pub fn len(&self) -> usize {
        self.inputs.shape()[0]
    }

    /// Whether the batch holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
