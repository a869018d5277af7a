//! [`OodDataset`]: a labelled image dataset held in memory.

use std::collections::BTreeSet;

use ndarray::{Array1, Array4, Axis, concatenate};

use crate::error::{Error, Result};

/// A labelled image dataset in memory: inputs `(N, C, H, W)` as `f32`, class
/// labels as `i64`, and optional OOD labels (`0` = in-distribution, `1` = OOD
/// by default).
///
/// Build one from arrays with [`OodDataset::from_arrays`] or from the files
/// users download with the loaders in [`crate::datasets`] (MNIST, CIFAR-10,
/// SVHN). Split it into in-distribution and OOD parts with
/// [`split_by_class`](OodDataset::split_by_class), merge two with
/// [`add_out_data`](OodDataset::add_out_data), and stream it in batches with
/// [`prepare`](OodDataset::prepare).
///
/// ```
/// use ndarray::{Array1, Array4};
/// use oodkit::datasets::OodDataset;
///
/// // Six 1x2x2 "images" of classes 0, 1 and 2.
/// let inputs = Array4::from_shape_fn((6, 1, 2, 2), |(n, _, _, _)| n as f32);
/// let labels = Array1::from(vec![0, 1, 2, 0, 1, 2]);
/// let ds = OodDataset::from_arrays(inputs, labels)?;
/// assert_eq!(ds.len(), 6);
/// assert_eq!(ds.classes(), vec![0, 1, 2]);
/// assert_eq!(ds.input_shape(), [1, 2, 2]);
///
/// // Classes 0 and 1 are in-distribution, the rest is OOD.
/// let (ds_in, ds_out) = ds.split_by_class(&[0, 1])?;
/// assert_eq!(ds_in.labels().to_vec(), vec![0, 1, 0, 1]);
/// assert_eq!(ds_out.labels().to_vec(), vec![2, 2]);
///
/// // Both together, with OOD labels 0 (ID) and 1 (OOD).
/// let mixed = ds_in.add_out_data(&ds_out)?;
/// assert_eq!(mixed.ood_labels().unwrap().to_vec(), vec![0, 0, 0, 0, 1, 1]);
/// # Ok::<(), oodkit::Error>(())
/// ```
#[doc(alias = "OODDataset")]
#[derive(Debug, Clone, PartialEq)]
pub struct OodDataset {
    inputs: Array4<f32>,
    labels: Array1<i64>,
    ood_labels: Option<Array1<u8>>,
    class_names: Option<Vec<String>>,
}

impl OodDataset {
    /// A dataset from inputs `(N, C, H, W)` and one class label per input.
    ///
    /// Errors when the number of labels differs from the number of inputs,
    /// or when there is no sample at all.
    pub fn from_arrays(inputs: Array4<f32>, labels: Array1<i64>) -> Result<Self> {
        if inputs.shape()[0] != labels.len() {
            return Err(Error::LengthMismatch {
                what: "inputs (first axis) and labels".into(),
                left: inputs.shape()[0],
                right: labels.len(),
            });
        }
        if labels.is_empty() {
            return Err(Error::Empty {
                what: "dataset".into(),
                hint: "from_arrays needs at least one sample".into(),
            });
        }
        Ok(OodDataset {
            inputs,
            labels,
            ood_labels: None,
            class_names: None,
        })
    }

    /// The same dataset with OOD labels attached (one per sample; by
    /// convention `0` = in-distribution, `1` = OOD).
    pub fn with_ood_labels(mut self, ood_labels: Array1<u8>) -> Result<Self> {
        if ood_labels.len() != self.len() {
            return Err(Error::LengthMismatch {
                what: "samples and OOD labels".into(),
                left: self.len(),
                right: ood_labels.len(),
            });
        }
        self.ood_labels = Some(ood_labels);
        Ok(self)
    }

    /// The same dataset with human-readable class names, indexed by label
    /// (`names[k]` names class `k`). Every label must index a name.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        if let Some(&bad) = self
            .labels
            .iter()
            .find(|&&l| l < 0 || l as usize >= names.len())
        {
            return Err(Error::InvalidLabel {
                label: bad,
                reason: format!("there are only {} class names", names.len()),
            });
        }
        self.class_names = Some(names);
        Ok(self)
    }

    /// Inputs, `(N, C, H, W)`.
    pub fn inputs(&self) -> &Array4<f32> {
        &self.inputs
    }

    /// Class labels, one per sample.
    pub fn labels(&self) -> &Array1<i64> {
        &self.labels
    }

    /// OOD labels, if the dataset has them.
    pub fn ood_labels(&self) -> Option<&Array1<u8>> {
        self.ood_labels.as_ref()
    }

    /// Class names indexed by label, if the source provided them.
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    /// The dataset's parts: inputs, labels and OOD labels.
    pub fn into_arrays(self) -> (Array4<f32>, Array1<i64>, Option<Array1<u8>>) {
        (self.inputs, self.labels, self.ood_labels)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset holds no sample (a split can leave one side empty).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Shape of one input, `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        let s = self.inputs.shape();
        [s[1], s[2], s[3]]
    }

    /// The distinct class labels present, in increasing order.
    pub fn classes(&self) -> Vec<i64> {
        let set: BTreeSet<i64> = self.labels.iter().copied().collect();
        set.into_iter().collect()
    }

    /// Number of distinct class labels present.
    pub fn num_classes(&self) -> usize {
        self.classes().len()
    }

    /// The samples at `indices`, in that order (repeats allowed).
    ///
    /// Errors when an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::InvalidParameter {
                name: "indices",
                value: bad.to_string(),
                reason: format!("the dataset has {} samples", self.len()),
            });
        }
        Ok(self.take(indices))
    }

    /// Gathers rows; indices are known to be in range.
    pub(crate) fn take(&self, indices: &[usize]) -> Self {
        OodDataset {
            inputs: self.inputs.select(Axis(0), indices),
            labels: self.labels.select(Axis(0), indices),
            ood_labels: self.ood_labels.as_ref().map(|o| o.select(Axis(0), indices)),
            class_names: self.class_names.clone(),
        }
    }

    /// Splits into in-distribution (labels in `in_labels`) and OOD (every
    /// other sample), keeping the original order and labels.
    ///
    /// Errors when `in_labels` names a class that does not occur.
    pub fn split_by_class(&self, in_labels: &[i64]) -> Result<(Self, Self)> {
        self.check_classes_occur(in_labels)?;
        let (ids_in, ids_out): (Vec<usize>, Vec<usize>) =
            (0..self.len()).partition(|&i| in_labels.contains(&self.labels[i]));
        Ok((self.take(&ids_in), self.take(&ids_out)))
    }

    /// Splits into in-distribution (labels in `in_labels`) and OOD (labels in
    /// `out_labels`). Samples whose class is in neither list are dropped.
    ///
    /// Errors when a list names a class that does not occur, or when a class
    /// is in both lists.
    pub fn split_by_classes(&self, in_labels: &[i64], out_labels: &[i64]) -> Result<(Self, Self)> {
        self.check_classes_occur(in_labels)?;
        self.check_classes_occur(out_labels)?;
        if let Some(&both) = in_labels.iter().find(|l| out_labels.contains(l)) {
            return Err(Error::InvalidLabel {
                label: both,
                reason: "the class is in both the ID and the OOD list".into(),
            });
        }
        let pick = |wanted: &[i64]| -> Vec<usize> {
            (0..self.len())
                .filter(|&i| wanted.contains(&self.labels[i]))
                .collect()
        };
        Ok((self.take(&pick(in_labels)), self.take(&pick(out_labels))))
    }

    fn check_classes_occur(&self, wanted: &[i64]) -> Result<()> {
        let present = self.classes();
        match wanted.iter().find(|l| present.binary_search(l).is_err()) {
            Some(&missing) => Err(Error::InvalidLabel {
                label: missing,
                reason: format!("no sample has this class; the classes present are {present:?}"),
            }),
            None => Ok(()),
        }
    }

    /// A new dataset holding `self` followed by `out`, with OOD labels `0`
    /// for the samples of `self` and `1` for those of `out`.
    ///
    /// Errors when the input shapes differ.
    pub fn add_out_data(&self, out: &OodDataset) -> Result<Self> {
        self.add_out_data_with(out, 0, 1)
    }

    /// Like [`add_out_data`](Self::add_out_data) with chosen OOD label values
    /// for the in-distribution (`self`) and OOD (`out`) samples.
    pub fn add_out_data_with(&self, out: &OodDataset, in_value: u8, out_value: u8) -> Result<Self> {
        if self.input_shape() != out.input_shape() {
            return Err(Error::ShapeMismatch {
                what: "add_out_data: input shape of the OOD dataset".into(),
                expected: format!("{:?}", self.input_shape()),
                found: format!("{:?}", out.input_shape()),
            });
        }
        let inputs = concatenate(Axis(0), &[self.inputs.view(), out.inputs.view()])?;
        let labels = concatenate(Axis(0), &[self.labels.view(), out.labels.view()])?;
        let ood_labels = std::iter::repeat_n(in_value, self.len())
            .chain(std::iter::repeat_n(out_value, out.len()))
            .collect();
        // Class names carry over only when both sides agree on them.
        let class_names = if self.class_names == out.class_names {
            self.class_names.clone()
        } else {
            None
        };
        Ok(OodDataset {
            inputs,
            labels,
            ood_labels: Some(ood_labels),
            class_names,
        })
    }
}
