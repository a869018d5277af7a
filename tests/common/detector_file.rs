//! Editing a detector file's header and arrays, for tests of what loading
//! refuses.

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

/// The arrays of a file: name, element type, shape, bytes.
pub type Arrays = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrites the file at `path` from `bytes` with its header JSON and
/// arrays changed by `edit`, their checksums made to match (as a file
/// crafted by hand would have them): what loading checks beyond them.
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
    let crc = |bytes: &[u8]| format!("{:08x}", crc32fast::hash(bytes));
    if header.get("checksums").is_some() {
        header["checksums"] = arrays
            .iter()
            .map(|(name, _, _, bytes)| (name.clone(), crc(bytes).into()))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    let views: Vec<_> = arrays
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let text = header.to_string();
    let meta = HashMap::from([
        ("oodkit.crc32".to_owned(), crc(text.as_bytes())),
        ("oodkit".to_owned(), text),
    ]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}
