//! Editing a detector file's header and arrays, for tests of what loading
//! refuses.

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

/// The arrays of a file: name, element type, shape, bytes.
pub type Arrays = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrites the file at `path` from `bytes` with its header JSON and
/// arrays changed by `edit`.
pub fn rewrite(path: &Path, bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value, &mut Arrays)) {
    let tensors = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut header: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["oodkit"]).unwrap();
    let mut arrays: Vec<_> = tensors
        .iter()
        .map(|(name, view)| {
            (
                name.to_owned(),
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    edit(&mut header, &mut arrays);
    let views: Vec<_> = arrays
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("oodkit".to_owned(), header.to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}
