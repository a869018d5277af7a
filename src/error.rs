//! The crate's one error type.
//!
//! Every fallible function in oodkit returns [`Result<T>`]. Each variant
//! carries what was wrong (the shapes expected and found, the file and byte
//! offset of a corrupt file, the offending value) so the message alone tells a
//! user what to fix.

use std::path::PathBuf;

/// `Result` with [`enum@Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in oodkit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An array did not have the shape an operation needs.
    #[error("shape mismatch in {what}: expected {expected}, found {found}")]
    ShapeMismatch {
        /// What was being checked.
        what: String,
        /// The shape that was expected.
        expected: String,
        /// The shape that was found.
        found: String,
    },

    /// Two collections that must have the same length do not.
    #[error("length mismatch: {what} ({left} vs {right})")]
    LengthMismatch {
        /// What the two lengths are.
        what: String,
        /// Length of the first collection.
        left: usize,
        /// Length of the second collection.
        right: usize,
    },

    /// An operation got no data where it needs some.
    #[error("{what} is empty: {hint}")]
    Empty {
        /// What was empty.
        what: String,
        /// What to do about it.
        hint: String,
    },

    /// A class label that is not valid where it was used.
    #[error("invalid label {label}: {reason}")]
    InvalidLabel {
        /// The offending label.
        label: i64,
        /// Why it is not valid.
        reason: String,
    },

    /// A parameter outside its valid range.
    #[error("invalid value for {name}: {value} ({reason})")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// The value that was given.
        value: String,
        /// What would be valid.
        reason: String,
    },

    /// A value that is not a number (NaN) where a number is needed.
    #[error("NaN in {what} at index {index}: {hint}")]
    NotANumber {
        /// Where the NaN was found (e.g. "ID scores").
        what: String,
        /// Its index.
        index: usize,
        /// What to do about it.
        hint: String,
    },

    /// A file that an operation needs does not exist.
    #[error("missing file {}: {hint}", path.display())]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },

    /// A file exists but its content is not what its format requires.
    #[error("corrupt file {}{}: {reason}", path.display(), offset.map(|o| format!(" at byte {o}")).unwrap_or_default())]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// Byte offset of the problem in the (decompressed) content, where known.
        offset: Option<u64>,
        /// What is wrong.
        reason: String,
    },

    /// A readable file that holds something else than was asked for: a
    /// detector of another kind, or a format version newer than this
    /// oodkit reads.
    #[error("{} holds {found}, not {expected}: {hint}", path.display())]
    WrongFile {
        /// The file.
        path: PathBuf,
        /// What was asked for.
        expected: String,
        /// What the file holds.
        found: String,
        /// What to do.
        hint: String,
    },

    /// An I/O operation on a file or directory failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A download failed on every source it was tried from.
    #[error("download of {file} failed: {reason}")]
    Download {
        /// The file that was being fetched.
        file: String,
        /// What went wrong, for each source tried.
        reason: String,
    },

    /// The backend that runs a network (burn, tract) failed; the backend's
    /// own error is kept as the source where there is one.
    #[error("model backend error: {what}{}", source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Backend {
        /// What was being done, and what went wrong.
        what: String,
        /// The backend's error, when it gave one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A numerical computation failed (an eigendecomposition, an SVD, a
    /// distribution function), typically on degenerate data.
    #[error("numerical failure in {what}: {reason}")]
    Numerical {
        /// What was being computed.
        what: String,
        /// What went wrong, and what to try.
        reason: String,
    },

    /// Something an operation needs was not given: no fit data, batches
    /// without the labels a method needs.
    #[error("missing input: {what}: {hint}")]
    MissingInput {
        /// What is missing.
        what: String,
        /// What to give.
        hint: String,
    },

    /// Drawing a plot failed.
    #[error("plotting failed: {0}")]
    Plot(String),

    /// An `ndarray` reshape or construction failed, typically in user code
    /// such as a model closure (`?` converts it).
    #[error("ndarray shape error: {0}")]
    Ndarray(#[from] ndarray::ShapeError),

    /// The model cannot do what was asked of it (e.g. give input gradients).
    #[error("{what} is not supported by this model: {hint}")]
    Unsupported {
        /// What was asked.
        what: String,
        /// How to get it.
        hint: String,
    },

    /// An error raised by user code (a preprocess function, a model closure).
    #[error("{0}")]
    Custom(String),
}

impl Error {
    /// An error with a free-form message, for user code such as preprocess
    /// functions or model closures that must return an oodkit [`Result`].
    pub fn custom(message: impl Into<String>) -> Self {
        Error::Custom(message.into())
    }

    /// An error about a sample of a batch that starts at sample `offset` of
    /// a larger stream: its index becomes the index in the stream.
    pub(crate) fn in_batch_at(self, offset: usize) -> Self {
        match self {
            Error::NotANumber { what, index, hint } => Error::NotANumber {
                what,
                index: index + offset,
                hint,
            },
            other => other,
        }
    }

    /// A parameter outside its range: its name, the value given, and why.
    pub(crate) fn invalid(
        name: &'static str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidParameter {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// A backend failure with no error value of its own (e.g. a caught
    /// panic's message).
    #[cfg_attr(not(any(feature = "burn", feature = "onnx")), allow(dead_code))]
    pub(crate) fn backend(what: impl Into<String>) -> Self {
        Error::Backend {
            what: what.into(),
            source: None,
        }
    }

    /// A backend failure, keeping the backend's error as the source.
    #[cfg_attr(not(any(feature = "burn", feature = "onnx")), allow(dead_code))]
    pub(crate) fn backend_with(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// A numerical failure in `what`.
    pub(crate) fn numerical(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Numerical {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A missing input: what, and what to give.
    pub(crate) fn missing(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::MissingInput {
            what: what.into(),
            hint: hint.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: Option<u64>,
        reason: impl Into<String>,
    ) -> Self {
        Error::CorruptFile {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
