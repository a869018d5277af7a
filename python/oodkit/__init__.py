"""oodkit: out-of-distribution detection for neural networks, from Python.

The detectors, metrics, calibration and detector files of the oodkit Rust
crate, on arrays you computed (a PyTorch forward hook's features, the
logits, the labels). A detector saved here loads in Rust (``AnyDetector``,
``oodkit score``) and one saved in Rust loads here, bit for bit.

>>> import numpy as np, oodkit
>>> rng = np.random.default_rng(0)
>>> fit = np.abs(rng.normal(size=(500, 16))).astype(np.float32)  # post-ReLU-like
>>> labels = np.arange(500) % 4
>>> knn = oodkit.Knn(k=10).fit(fit, labels)
>>> near, far = fit[:5] * 1.5, -fit[:5]  # KNN compares directions
>>> bool(np.all(knn.score(far) > knn.score(near)))
True

Every registered detector is there by name, with its parameters as
keywords (``oodkit.detector("nci", alpha=1e-4)``), and as a class
(``oodkit.Nci(alpha=1e-4)``); ``oodkit.kinds()`` lists them. Feature
detectors take ``features`` (one array, or a mapping of layer name to array
for several layers) and, where they read them, ``logits`` and the last
layer ``head=(weights, bias)``; logit detectors take ``logits``.

Errors are ``oodkit.Error``: ``oodkit.InvalidInput`` (a ``ValueError``) for
what was given, ``oodkit.FileError`` (an ``OSError``) for files. Rust
computes without the GIL: Python threads score in parallel.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import _native, metrics
from ._arrays import float_matrix, float_vector, head_of, labels_vector, layers_of
from ._errors import Error, FileError, InvalidInput

__all__ = [
    "Error",
    "InvalidInput",
    "FileError",
    "Calibration",
    "Detector",
    "PartialFit",
    "UnfittedDetector",
    "Verdicts",
    "Kind",
    "detector",
    "kinds",
    "load",
    "metrics",
]

__version__ = "0.1.0"


class Kind(NamedTuple):
    """A registered detector kind."""

    name: str
    """Its registry name, e.g. ``"knn"`` (``oodkit.detector(name)``)."""
    kind: str
    """Its kind as files name it, e.g. ``"KNN"``."""
    summary: str
    params: Dict[str, str]
    """Its parameters by keyword, each with what it sets and its default."""
    needs_fit_data: bool
    needs_labels: bool


def kinds() -> List[Kind]:
    """Every registered detector kind."""
    return [
        Kind(name, kind, summary, dict(params), fit_data, labels)
        for name, kind, summary, params, fit_data, labels in _native.kinds()
    ]


class Verdicts(NamedTuple):
    """A calibrated detector's decision on each input."""

    scores: np.ndarray
    """float32 scores (higher = more OOD)."""
    p_values: np.ndarray
    """Conformal p-values: the share of calibration inputs scoring at least
    as high, the input counted."""
    is_ood: np.ndarray
    """bool: flagged OOD (p-value <= alpha)."""
    classes: np.ndarray
    """int64: the predicted class (argmax of the logits), -1 without logits."""


class Calibration:
    """Conformal calibration of any OOD scores (higher = more OOD): the
    scores of held-out in-distribution inputs give each new score its
    p-value (the share of calibration scores at least as high, the new one
    counted) and, at a false-alarm rate ``alpha``, a verdict. The detectors'
    own :meth:`Detector.calibrate` does the same for their scores.

    >>> import oodkit
    >>> cal = oodkit.Calibration([0.1, 0.2, 0.3, 0.4])
    >>> p, is_ood = cal.decide([0.05, 0.35, 9.0], alpha=0.25)
    >>> p.round(2).tolist(), is_ood.tolist()
    ([1.0, 0.4, 0.2], [False, False, True])
    """

    __slots__ = ("_inner",)

    def __init__(self, id_scores):
        self._inner = _native.Calibration(float_vector(id_scores, "id_scores"))

    def __len__(self) -> int:
        return len(self._inner)

    def threshold(self, alpha: float) -> float:
        """The score from which inputs are flagged at level ``alpha``."""
        return self._inner.threshold(float(alpha))

    def decide(self, scores, alpha: float = 0.05):
        """``(p_values, is_ood)`` of ``scores`` at level ``alpha``."""
        return self._inner.decide(float_vector(scores, "scores"), float(alpha))


class Detector:
    """A fitted detector, calibrated or not: it scores, decides (once
    calibrated), saves to a file and pickles (as its file's bytes, so it
    ships to the workers of a cluster engine)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: "_native.Detector"):
        if not isinstance(inner, _native.Detector):
            raise TypeError("Detector objects come from fit, load or calibrate")
        self._inner = inner

    @property
    def kind(self) -> str:
        """The detector's kind, e.g. ``"KNN"``."""
        return self._inner.kind

    @property
    def alpha(self) -> Optional[float]:
        """The false-alarm rate it was calibrated at, or None."""
        return self._inner.alpha

    @property
    def is_calibrated(self) -> bool:
        return self._inner.alpha is not None

    def score(self, features=None, *, logits=None, head=None) -> np.ndarray:
        """One float32 score per row (higher = more OOD), from the features
        of the layers it was fitted on and/or the logits."""
        return self._inner.score(*_arrays(features, logits, head))[0]

    def calibrate(self, features=None, *, logits=None, head=None, alpha: float = 0.05) -> "Detector":
        """A copy calibrated on held-out in-distribution inputs (never the
        fit data), to flag OOD with false-alarm rate ``alpha``."""
        return Detector(self._inner.calibrate(float(alpha), *_arrays(features, logits, head)))

    def decide(self, features=None, *, logits=None, head=None) -> Verdicts:
        """Scores, p-values and verdicts; needs a calibrated detector."""
        return Verdicts(*self._inner.verdicts(*_arrays(features, logits, head)))

    def save(self, path) -> None:
        """Writes the detector file (atomically); ``.oodkit`` is usual."""
        self._inner.save(_path(path))

    def to_bytes(self) -> bytes:
        """The detector file's bytes."""
        return self._inner.to_bytes()

    @staticmethod
    def from_bytes(data: bytes) -> "Detector":
        """A detector from a file's bytes (see :meth:`to_bytes`)."""
        return Detector(_native.from_bytes(bytes(data)))

    def __reduce__(self):
        return (Detector.from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        calibrated = f", calibrated at alpha={self.alpha}" if self.is_calibrated else ""
        return f"<oodkit.Detector {self.kind}{calibrated}>"


class PartialFit:
    """One layer's fit of a feature detector on some shards of the fit data:
    what a cluster's worker fits on its shard and ships back (it pickles as
    its file's bytes with the detector's parameters). Merge the shards'
    (in order), then :meth:`finish`; when :meth:`end_first_pass` says a
    second pass is needed (ViM), give each worker a copy to :meth:`update`
    with its shard and merge those. Merged into another or finished, a
    partial fit is spent."""

    __slots__ = ("_inner", "_detector")

    def __init__(self, inner: "_native.PartialFit", detector: "UnfittedDetector"):
        self._inner = inner
        self._detector = detector

    @property
    def kind(self) -> str:
        return self._inner.kind

    @property
    def in_second_pass(self) -> bool:
        """Whether its first pass has ended."""
        return self._inner.in_second_pass

    def merge(self, other: "PartialFit") -> "PartialFit":
        """Merges ``other`` (another shard's, the same detector and
        parameters, the same pass) into this one; returns this one."""
        if not isinstance(other, PartialFit):
            raise TypeError("merge takes another PartialFit")
        self._inner.merge(other._inner)
        return self

    def end_first_pass(self) -> bool:
        """Ends the first pass (on the merged fit of every shard); True when
        a second pass over every shard is needed."""
        return self._inner.end_first_pass()

    def update(self, features=None, labels=None, *, logits=None, head=None) -> "PartialFit":
        """Adds a shard to the pass it is in (the second, on a copy of the
        merged fit); returns this one."""
        self._inner.update(*_arrays(features, logits, head, labels))
        return self

    def finish(self) -> Detector:
        """The fitted detector."""
        return Detector(self._inner.finish())

    def save(self, path) -> None:
        """Writes the partial fit's file (kind "partial fit")."""
        self._inner.save(_path(path))

    def to_bytes(self) -> bytes:
        return self._inner.to_bytes()

    def copy(self) -> "PartialFit":
        """An independent copy (for a worker's second pass)."""
        return self._detector._partial_from_bytes(self.to_bytes())

    def __reduce__(self):
        return (_restore_partial, (self._detector._name, self._detector._params, self._detector._layers, self.to_bytes()))

    def __repr__(self) -> str:
        return f"<oodkit.PartialFit of {self._detector!r}>"


def _restore_partial(name, params, layers, data):
    return UnfittedDetector(name, layers=layers, **params)._partial_from_bytes(data)


class UnfittedDetector:
    """A detector built by name with its parameters, not fitted yet."""

    __slots__ = ("_inner", "_name", "_params", "_layers")

    def __init__(self, name: str, layers: Optional[Sequence[Union[str, int]]] = None, **params: Any):
        self._name = name
        self._params = params
        self._layers = list(layers) if layers is not None else None
        self._inner = _native.build(name, params, self._layers)

    @property
    def kind(self) -> str:
        return self._inner.kind

    def fit(self, features=None, labels=None, *, logits=None, head=None) -> Detector:
        """Fits on in-distribution inputs: ``features`` (an array ``(N, D)``,
        or a mapping of layer name to array for several layers, in the
        network's order), their class ``labels`` (for the detectors that
        need them), ``logits`` ``(N, classes)`` and the last layer
        ``head=(weights (classes, D), bias (classes,))`` where the detector
        reads them."""
        return Detector(
            self._inner.fit(*_arrays(features, logits, head, labels))
        )

    def partial_fit(self, features=None, labels=None, *, logits=None, head=None) -> PartialFit:
        """The first pass of a fit on one shard (feature detectors, one
        layer): what a cluster's worker runs; see :class:`PartialFit`."""
        return PartialFit(
            self._inner.partial_fit(*_arrays(features, logits, head, labels)),
            self,
        )

    def load_partial(self, path) -> PartialFit:
        """A partial fit of this detector (these parameters) from its file."""
        return PartialFit(self._inner.load_partial(_path(path)), self)

    def _partial_from_bytes(self, data: bytes) -> PartialFit:
        return PartialFit(self._inner.partial_from_bytes(bytes(data)), self)

    def __reduce__(self):
        return (_restore_unfitted, (self._name, self._params, self._layers))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"<oodkit.UnfittedDetector {self._name}({params})>"


def _restore_unfitted(name, params, layers):
    return UnfittedDetector(name, layers=layers, **params)


def detector(name: str, *, layers: Optional[Sequence[Union[str, int]]] = None, **params: Any) -> UnfittedDetector:
    """The registered detector ``name`` (``oodkit.kinds()`` lists them) with
    these parameters; ``layers`` names the feature layers it reads (names
    of the mapping given as ``features``, or indices: ``-2`` is the last
    feature layer, the default)."""
    return UnfittedDetector(name, layers=layers, **params)


def load(path) -> Detector:
    """Reads a detector file of any kind, written here or by the Rust crate."""
    return Detector(_native.load(_path(path)))


def _path(path) -> str:
    return os.fspath(path)


def _arrays(features, logits, head, labels=None):
    """The arrays of a call, as the extension takes them: the feature layers,
    the logits, the head and, for a fit, the labels."""
    converted = (
        layers_of(features),
        None if logits is None else float_matrix(logits, "logits"),
        head_of(head),
    )
    return converted if labels is None else (*converted, labels_vector(labels))


# Class names as the Rust crate spells its types, where a plain title-case
# of the registry name would not.
_CLASS_NAMES = {
    "temp-scaling": "TemperatureScaling",
    "openmax": "OpenMax",
    "rankfeat": "RankFeat",
    "mcdropout": "McDropout",
    "nnguide": "NnGuide",
    "gradnorm": "GradNorm",
}


def _class_name(name: str) -> str:
    if name in _CLASS_NAMES:
        return _CLASS_NAMES[name]
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9a-zA-Z]+", name) if part)


def _define_classes() -> None:
    """One class per registered kind, e.g. ``oodkit.Knn(k=50)``: an
    :class:`UnfittedDetector` of that kind."""
    for kind in kinds():
        class_name = _class_name(kind.name)

        def __init__(self, *, layers=None, _name=kind.name, **params):
            UnfittedDetector.__init__(self, _name, layers=layers, **params)

        params = "\n".join(f"    {name}: {doc}" for name, doc in kind.params.items()) or "    (none)"
        doc = f"{kind.kind}: {kind.summary}\n\nParameters (keywords):\n{params}\n"
        cls = type(class_name, (UnfittedDetector,), {"__init__": __init__, "__doc__": doc, "__slots__": ()})
        cls.__module__ = __name__
        globals()[class_name] = cls
        __all__.append(class_name)


_define_classes()
