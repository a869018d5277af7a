//! Arrays in detector files through serde: mark an array field of a
//! detector's state `#[serde(with = "oodkit::detectors::file::array")]` and
//! it is stored in the file's safetensors table, not in the JSON header.
//!
//! The field's name says where: a state saved under the prefix `layer.0.`
//! puts its field `features` at `layer.0.features` (a logit detector's
//! arrays have no prefix). A list of arrays (`Vec<Array1<f64>>`, marked
//! with [`list`]) is stored as `name.0`, `name.1`, .... Reading back checks
//! each array's element type and number of dimensions and that every value
//! is finite; the state's own `validate` checks the shapes agree.
//!
//! Arrays must be direct fields of the value saved (or of a field marked
//! `#[serde(flatten)]`): one nested in another field is refused when the
//! detector is saved. Outside [`Persist::save`](super::Persist::save) and
//! [`Persist::load`](super::Persist::load) (e.g. `serde_json::to_string`
//! on the state) a marked field is an error, never a silent copy.
//!
//! ```
//! use ndarray::{Array1, Array2};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Centroid {
//!     /// In the JSON header.
//!     scale: f64,
//!     /// In the arrays: `layer.{l}.centre`.
//!     #[serde(with = "oodkit::detectors::file::array")]
//!     centre: Array1<f32>,
//! }
//! ```
//!
//! How: while a state is written, each marked field is replaced in the
//! JSON by a placeholder and its bytes are set aside; the writer then moves
//! them to the table under the field's name. While one is read, the reader
//! puts placeholders naming the arrays under the prefix back in the JSON
//! and the marked fields decode them. Both run on the calling thread only
//! (a thread-local table, set for the call's duration).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::rc::Rc;

use ndarray::{Array, ArrayBase, Data, Dimension, IxDyn};
use safetensors::tensor::Dtype;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Starts every placeholder; no parameter of oodkit's begins with \u{1}.
const MARK: &str = "\u{1}oodkit-array:";

/// An array being written: element type, shape, little-endian bytes
/// (opaque: made by [`ToArray`]).
#[derive(Debug)]
pub struct Encoded {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) bytes: Vec<u8>,
}

/// The arrays of a file being read: the open file and where each array
/// lies in it (checked by the safetensors parser against the file's
/// length). Arrays are read from the file when decoded, a chunk at a time,
/// so loading holds each array once, never the file's bytes beside it.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) file: RefCell<File>,
    pub(crate) index: HashMap<String, (Dtype, Vec<usize>, Range<u64>)>,
}

/// Bytes read from a file per chunk: a multiple of every element's size.
const CHUNK: u64 = 1 << 20;

impl Table {
    /// Passes the bytes of `range` of the file to `each`, a chunk at a
    /// time, in order.
    pub(crate) fn stream(
        &self,
        range: Range<u64>,
        mut each: impl FnMut(&[u8]),
    ) -> std::io::Result<()> {
        let mut file = self.file.borrow_mut();
        file.seek(SeekFrom::Start(range.start))?;
        let mut left = range.end.saturating_sub(range.start);
        let mut buffer = vec![0; CHUNK.min(left) as usize];
        while left > 0 {
            let n = CHUNK.min(left) as usize;
            file.read_exact(&mut buffer[..n])?;
            each(&buffer[..n]);
            left -= n as u64;
        }
        Ok(())
    }
}

/// An array's bytes in the file being read, read when decoded (opaque:
/// made by the reader).
pub struct ArrayBytes<'a> {
    table: &'a Table,
    range: Range<u64>,
}

impl<'a> ArrayBytes<'a> {
    pub(crate) fn new(table: &'a Table, range: Range<u64>) -> Self {
        ArrayBytes { table, range }
    }
}

thread_local! {
    static WRITING: RefCell<Option<Vec<Encoded>>> = const { RefCell::new(None) };
    static READING: RefCell<Option<Rc<Table>>> = const { RefCell::new(None) };
}

/// Element types stored in files.
pub trait Element: Copy + sealed::Sealed {
    /// Its safetensors type.
    const DTYPE: Dtype;
    /// Its name in messages.
    const NAME: &'static str;
    #[doc(hidden)]
    fn put(self, out: &mut Vec<u8>);
    #[doc(hidden)]
    fn get(bytes: &[u8]) -> Self;
    #[doc(hidden)]
    fn finite(self) -> bool;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($t:ty, $dtype:ident, $name:literal, $finite:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: Dtype = Dtype::$dtype;
            const NAME: &'static str = $name;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut raw = [0; size_of::<$t>()];
                raw.copy_from_slice(bytes);
                <$t>::from_le_bytes(raw)
            }
            fn finite(self) -> bool {
                let check: fn($t) -> bool = $finite;
                check(self)
            }
        }
    };
}

element!(f32, F32, "F32", f32::is_finite);
element!(f64, F64, "F64", f64::is_finite);
element!(i64, I64, "I64", |_| true);
element!(u32, U32, "U32", |_| true);

/// A value that is stored as an array: ndarray arrays (owned or views) and
/// `Vec`s (one dimension) of `f32`, `f64`, `i64` or `u32`.
pub trait ToArray {
    #[doc(hidden)]
    fn encode(&self) -> Encoded;
}

/// A value read back from a stored array.
pub trait FromArray: Sized {
    #[doc(hidden)]
    fn decode(key: &str, dtype: Dtype, shape: &[usize], bytes: ArrayBytes) -> Result<Self, String>;
}

impl<T: ToArray + ?Sized> ToArray for &T {
    fn encode(&self) -> Encoded {
        (**self).encode()
    }
}

impl<T: Element, S: Data<Elem = T>, D: Dimension> ToArray for ArrayBase<S, D> {
    fn encode(&self) -> Encoded {
        let mut bytes = Vec::with_capacity(self.len() * size_of::<T>());
        for &v in self.iter() {
            v.put(&mut bytes);
        }
        Encoded {
            dtype: T::DTYPE,
            shape: self.shape().to_vec(),
            bytes,
        }
    }
}

impl<T: Element> ToArray for Vec<T> {
    fn encode(&self) -> Encoded {
        ndarray::ArrayView1::from(self.as_slice()).encode()
    }
}

/// The values of an array of element `T`, after its type and finiteness
/// are checked.
fn values<T: Element>(key: &str, dtype: Dtype, bytes: ArrayBytes) -> Result<Vec<T>, String> {
    if dtype != T::DTYPE {
        return Err(format!("the array \"{key}\" is {dtype:?}, not {}", T::NAME));
    }
    // The range was checked against the file's length: the allocation is
    // bounded by what the file holds.
    let len = (bytes.range.end - bytes.range.start) as usize / size_of::<T>();
    let mut values: Vec<T> = Vec::new();
    values
        .try_reserve_exact(len)
        .map_err(|_| format!("the array \"{key}\" ({len} values) does not fit in memory"))?;
    bytes
        .table
        .stream(bytes.range.clone(), |chunk| {
            values.extend(chunk.chunks_exact(size_of::<T>()).map(T::get));
        })
        .map_err(|e| format!("the array \"{key}\" could not be read ({e})"))?;
    match values.iter().position(|v| !v.finite()) {
        Some(i) => Err(format!(
            "the array \"{key}\" holds a value that is not finite at flat index {i}: the stored \
             statistics are unusable"
        )),
        None => Ok(values),
    }
}

impl<T: Element, D: Dimension> FromArray for Array<T, D> {
    fn decode(key: &str, dtype: Dtype, shape: &[usize], bytes: ArrayBytes) -> Result<Self, String> {
        if D::NDIM.is_some_and(|n| n != shape.len()) {
            return Err(format!(
                "the array \"{key}\" has shape {shape:?}, expected {} dimensions",
                D::NDIM.unwrap_or_default()
            ));
        }
        let values = values::<T>(key, dtype, bytes)?;
        Array::from_shape_vec(IxDyn(shape), values)
            .and_then(|a| a.into_dimensionality::<D>())
            .map_err(|e| format!("the array \"{key}\": {e}"))
    }
}

impl<T: Element> FromArray for Vec<T> {
    fn decode(key: &str, dtype: Dtype, shape: &[usize], bytes: ArrayBytes) -> Result<Self, String> {
        if shape.len() != 1 {
            return Err(format!(
                "the array \"{key}\" has shape {shape:?}, expected one dimension"
            ));
        }
        values::<T>(key, dtype, bytes)
    }
}

/// Serialises an array field (see the [module docs](self)).
pub fn serialize<A: ToArray, S: Serializer>(array: &A, serializer: S) -> Result<S::Ok, S::Error> {
    let index = WRITING.with(|w| match w.borrow_mut().as_mut() {
        Some(pending) => {
            pending.push(array.encode());
            Ok(pending.len() - 1)
        }
        None => Err(S::Error::custom(
            "an array field of a detector state is written only into a detector file \
             (Persist::save)",
        )),
    })?;
    serializer.serialize_str(&format!("{MARK}{index}"))
}

/// Deserialises an array field (see the [module docs](self)).
pub fn deserialize<'de, A: FromArray, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<A, D::Error> {
    let placeholder = String::deserialize(deserializer)?;
    let Some(key) = placeholder.strip_prefix(MARK) else {
        return Err(D::Error::custom(format!(
            "\"{placeholder}\" stands where an array of the file's table was expected"
        )));
    };
    READING.with(|r| {
        let table = r.borrow();
        let table = table.as_ref().ok_or_else(|| {
            D::Error::custom("an array field is read only from a detector file (Persist::load)")
        })?;
        let (dtype, shape, range) = table
            .index
            .get(key)
            .ok_or_else(|| D::Error::custom(format!("the array \"{key}\" is missing")))?;
        A::decode(key, *dtype, shape, ArrayBytes::new(table, range.clone()))
            .map_err(D::Error::custom)
    })
}

/// A list of arrays, stored as `name.0`, `name.1`, ...: mark the field
/// `#[serde(with = "oodkit::detectors::file::array::list")]`.
pub mod list {
    use super::{Deserializer, FromArray, Serializer, ToArray};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Serialize};

    struct One<'a, A>(&'a A);

    impl<A: ToArray> Serialize for One<'_, A> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            super::serialize(self.0, serializer)
        }
    }

    struct Back<A>(A);

    impl<'de, A: FromArray> Deserialize<'de> for Back<A> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            super::deserialize(deserializer).map(Back)
        }
    }

    /// Serialises a list of arrays.
    pub fn serialize<A: ToArray, S: Serializer>(
        arrays: &[A],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(arrays.len()))?;
        for a in arrays {
            seq.serialize_element(&One(a))?;
        }
        seq.end()
    }

    /// Deserialises a list of arrays.
    pub fn deserialize<'de, A: FromArray, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<A>, D::Error> {
        let back: Vec<Back<A>> = Vec::deserialize(deserializer)?;
        Ok(back.into_iter().map(|b| b.0).collect())
    }
}

/// Restores the previous thread-local value when a call ends, even early.
struct Restore<T: 'static> {
    cell: &'static std::thread::LocalKey<RefCell<Option<T>>>,
    previous: Option<T>,
}

impl<T: 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        self.cell.with(|c| *c.borrow_mut() = previous);
    }
}

/// `value` as JSON with its array fields moved out: the JSON, and each
/// array's field path (`name` or `name.i`) with its encoding.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<(Value, Vec<(String, Encoded)>)> {
    let previous = WRITING.with(|w| w.borrow_mut().replace(Vec::new()));
    let restore = Restore {
        cell: &WRITING,
        previous,
    };
    let json = serde_json::to_value(value);
    let pending = WRITING.with(|w| w.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    let mut json = json.map_err(|e| Error::custom(format!("encoding a detector's state: {e}")))?;
    let mut pending: Vec<Option<Encoded>> = pending.into_iter().map(Some).collect();
    let mut arrays = Vec::new();
    if let Value::Object(map) = &mut json {
        let fields: Vec<String> = map.keys().cloned().collect();
        for field in fields {
            let mut take = |v: &Value| -> Option<Encoded> {
                let index: usize = v.as_str()?.strip_prefix(MARK)?.parse().ok()?;
                pending.get_mut(index)?.take()
            };
            match &map[&field] {
                Value::String(_) => {
                    if let Some(array) = take(&map[&field]) {
                        arrays.push((field.clone(), array));
                        map.remove(&field);
                    }
                }
                Value::Array(items) if !items.is_empty() && items.iter().all(is_placeholder) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(array) = take(item) {
                            arrays.push((format!("{field}.{i}"), array));
                        }
                    }
                    map.remove(&field);
                }
                _ => {}
            }
        }
    }
    if pending.iter().any(Option::is_some) {
        return Err(Error::custom(
            "a detector state holds an array field inside another field: arrays must be \
             direct fields of the state (or of a #[serde(flatten)] field)",
        ));
    }
    Ok((json, arrays))
}

fn is_placeholder(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with(MARK))
}

/// Reads a `T` from the header entry `json` and the arrays of `table`
/// under `prefix`. Errors are the reasons, for the caller to name the file.
pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(
    json: &Value,
    table: &Rc<Table>,
    prefix: &str,
) -> Result<T, String> {
    let mut object = match json {
        Value::Object(map) => map.clone(),
        Value::Null => Map::new(),
        other => return Err(format!("the stored state is not a JSON object: {other}")),
    };
    let mut lists: HashMap<&str, Vec<(usize, &str)>> = HashMap::new();
    for key in table.index.keys() {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        let placeholder = Value::String(format!("{MARK}{key}"));
        match rest.split_once('.') {
            None => {
                if object.insert(rest.to_owned(), placeholder).is_some() {
                    return Err(format!(
                        "\"{rest}\" is both in the header and an array ({key})"
                    ));
                }
            }
            Some((field, i)) if !i.contains('.') => {
                if let Ok(i) = i.parse::<usize>() {
                    lists.entry(field).or_default().push((i, key));
                }
            }
            Some(_) => {}
        }
    }
    for (field, mut items) in lists {
        items.sort_unstable();
        if items.iter().enumerate().any(|(i, (j, _))| i != *j) {
            return Err(format!(
                "the arrays {prefix}{field}.* are not numbered 0, 1, ... without gaps"
            ));
        }
        let list = items
            .iter()
            .map(|(_, key)| Value::String(format!("{MARK}{key}")))
            .collect();
        if object
            .insert(field.to_owned(), Value::Array(list))
            .is_some()
        {
            return Err(format!(
                "\"{field}\" is both in the header and a list of arrays"
            ));
        }
    }
    let previous = READING.with(|r| r.borrow_mut().replace(Rc::clone(table)));
    let _restore = Restore {
        cell: &READING,
        previous,
    };
    serde_json::from_value(Value::Object(object)).map_err(|e| {
        let message = e.to_string();
        // serde names the field alone: say where it would be.
        match message
            .strip_prefix("missing field `")
            .and_then(|m| m.split_once('`'))
        {
            Some((field, _)) => format!(
                "\"{prefix}{field}\" is missing (neither an array of the file nor a field of its \
                 header)"
            ),
            None => message,
        }
    })
}

/// An array that may be absent: mark the field
/// `#[serde(with = "oodkit::detectors::file::array::optional", default,
/// skip_serializing_if = "Option::is_none")]`.
pub mod optional {
    use super::{Deserializer, FromArray, Serializer, ToArray};

    /// Serialises an array if there is one.
    pub fn serialize<A: ToArray, S: Serializer>(
        array: &Option<A>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match array {
            Some(array) => super::serialize(array, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Deserialises an array that is there.
    pub fn deserialize<'de, A: FromArray, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<A>, D::Error> {
        super::deserialize(deserializer).map(Some)
    }
}
