//! Transforms of prepared batches, for
//! [`PrepareConfig::preprocess`](super::PrepareConfig::preprocess): the
//! normalisations pretrained networks expect.

use crate::batch::Batch;
use crate::error::{Error, Result};

/// The ImageNet channel means the pretrained CIFAR ResNets expect (after
/// scaling pixels to [0, 1]).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// The ImageNet channel standard deviations, likewise.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The preprocessing of ImageNet-normalised networks (the pretrained CIFAR
/// ResNets among them), for
/// [`PrepareConfig::preprocess`](crate::datasets::PrepareConfig::preprocess):
/// pixels (0-255) / 255, then minus [`IMAGENET_MEAN`] and divided by
/// [`IMAGENET_STD`] per channel. Errors unless the images have 3 channels.
pub fn imagenet_preprocess(mut batch: Batch) -> Result<Batch> {
    let channels = batch.inputs.shape()[1];
    if channels != 3 {
        return Err(Error::ShapeMismatch {
            what: "images for ImageNet normalisation".into(),
            expected: "(N, 3, H, W): RGB".into(),
            found: format!("{:?}", batch.inputs.shape()),
        });
    }
    for (c, mut plane) in batch.inputs.axis_iter_mut(ndarray::Axis(1)).enumerate() {
        let (mean, std) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
        plane.mapv_inplace(|v| (v / 255.0 - mean) / std);
    }
    Ok(batch)
}
