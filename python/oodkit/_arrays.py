"""Arrays in: NumPy arrays of any float type and order, PyTorch tensors
(through NumPy, on the CPU), anything ``numpy.asarray`` reads. float32
arrays (C or Fortran order) reach Rust without a copy; other float types are
converted to float32 once."""

from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

import numpy as np

from ._errors import InvalidInput


def _numpy(x, what: str) -> np.ndarray:
    # A PyTorch tensor (possibly on a GPU or needing grad) reaches NumPy
    # through the CPU.
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - any failure to read is the caller's input
        raise InvalidInput(f"{what}: cannot be read as an array ({e})") from e


def _floats(x, what: str, ndim: int, layout: str) -> np.ndarray:
    """``x`` as an ``ndim``-D float32 array, zero-copy when it is one;
    ``layout`` names the shape expected, for the error."""
    a = _numpy(x, what)
    if a.ndim != ndim:
        raise InvalidInput(f"{what}: expected {layout}, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InvalidInput(f"{what}: expected numbers, got dtype {a.dtype}")
    return a.astype(np.float32, copy=False)


def float_matrix(x, what: str) -> np.ndarray:
    """``x`` as a 2-D float32 array, zero-copy when it is one."""
    return _floats(x, what, 2, "a 2-D array (rows, columns)")


def float_vector(x, what: str) -> np.ndarray:
    """``x`` as a 1-D float32 array (scores, a bias), zero-copy when it is
    one."""
    return _floats(x, what, 1, "a 1-D array")


def labels_vector(x, what: str = "labels") -> np.ndarray:
    """Class labels as int64."""
    a = _numpy(x, what)
    if a.ndim != 1:
        raise InvalidInput(f"{what}: expected a 1-D array of class labels, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise InvalidInput(f"{what}: expected whole numbers (class labels), got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def layers_of(features) -> Optional[List[Tuple[str, np.ndarray]]]:
    """Features as (layer name, float32 matrix) pairs: one array is the
    layer ``"features"``; a mapping names several, in the network's order."""
    if features is None:
        return None
    if isinstance(features, Mapping):
        if not features:
            raise InvalidInput("features: an empty mapping (give at least one layer)")
        return [(str(name), float_matrix(a, f"features[{name!r}]")) for name, a in features.items()]
    return [("features", float_matrix(features, "features"))]


def head_of(head) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The last layer ``(weights (classes, D), bias (classes,))``."""
    if head is None:
        return None
    try:
        weights, bias = head
    except (TypeError, ValueError) as e:
        raise InvalidInput("head: give (weights, bias), weights (classes, D) and bias (classes,)") from e
    return (
        np.ascontiguousarray(float_matrix(weights, "head weights")),
        np.ascontiguousarray(float_vector(bias, "head bias")),
    )
