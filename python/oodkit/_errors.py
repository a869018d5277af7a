"""The exceptions of oodkit: every error carries the Rust crate's message,
which says what was wrong and what to give instead."""


class Error(Exception):
    """Base class of every error oodkit raises."""


class InvalidInput(Error, ValueError):
    """Arrays of the wrong shape, NaN, empty data, a parameter out of range,
    a detector that needs what was not given (labels, logits, the head)."""


class FileError(Error, OSError):
    """A detector file that is missing, truncated, corrupt, of another kind
    or of a newer format; a file that cannot be written."""
