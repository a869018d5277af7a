"""Metrics of how well OOD scores separate in-distribution (ID) inputs from
OOD ones, exact (every distinct score is a threshold, ties as in
scikit-learn) and computed by the Rust crate from one sort of each side.

OOD is the positive class and higher scores mean more OOD.

>>> import numpy as np
>>> from oodkit.metrics import auroc, bench_metrics
>>> auroc([0.0, 0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 1.0, 1.0, 1.0])
0.84
>>> bench_metrics([0.0, 0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 1.0, 1.0, 1.0], ["fpr95tpr"])
{'fpr95tpr': 0.8}
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from . import _native
from ._arrays import float_vector
from ._errors import InvalidInput

__all__ = [
    "bench_metrics",
    "auroc",
    "fpr_at_tpr",
    "tpr_at_fpr",
    "aupr_in",
    "aupr_out",
    "detection_accuracy",
    "roc_curve",
]


def bench_metrics(scores_in, scores_out, metrics: Sequence[str] = ("auroc", "fpr95tpr")) -> Dict[str, float]:
    """The named metrics of ID scores against OOD scores, in the order asked:
    ``"auroc"``, ``"fprXXtpr"`` (FPR at XX % TPR), ``"tprXXfpr"``,
    ``"aupr_in"``, ``"aupr_out"``, ``"detect_acc"`` (the best accuracy of one threshold)."""
    if isinstance(metrics, str):
        metrics = [metrics]
    rows = _native.bench_metrics(float_vector(scores_in, "scores_in"), float_vector(scores_out, "scores_out"), list(metrics))
    return dict(rows)


def _one(name: str, scores_in, scores_out) -> float:
    return bench_metrics(scores_in, scores_out, [name])[name]


def _percent(value: float, what: str) -> int:
    percent = round(value * 100)
    if not (0 < value < 1) or abs(percent - value * 100) > 1e-9 or not 1 <= percent <= 99:
        raise InvalidInput(f"invalid value for {what}: {value} (give a whole percentage as a fraction in 0.01..0.99, e.g. 0.95)")
    return percent


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve."""
    return _one("auroc", scores_in, scores_out)


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """The share of ID inputs flagged at the threshold that flags ``tpr`` of
    the OOD ones (``tpr`` a whole percentage, e.g. 0.95)."""
    return _one(f"fpr{_percent(tpr, 'tpr')}tpr", scores_in, scores_out)


def tpr_at_fpr(scores_in, scores_out, fpr: float = 0.05) -> float:
    """The share of OOD inputs flagged at the threshold that flags ``fpr`` of
    the ID ones (a whole percentage, e.g. 0.05)."""
    return _one(f"tpr{_percent(fpr, 'fpr')}fpr", scores_in, scores_out)


def aupr_in(scores_in, scores_out) -> float:
    """Average precision with ID as the positive class (scores negated)."""
    return _one("aupr_in", scores_in, scores_out)


def aupr_out(scores_in, scores_out) -> float:
    """Average precision with OOD as the positive class."""
    return _one("aupr_out", scores_in, scores_out)


def detection_accuracy(scores_in, scores_out) -> float:
    """The best accuracy of one threshold, ID and OOD weighted equally."""
    return _one("detect_acc", scores_in, scores_out)


def roc_curve(scores_in, scores_out) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, one point per distinct score plus the
    ``(0, 0)`` start, thresholds decreasing from ``+inf``."""
    return _native.roc_curve(float_vector(scores_in, "scores_in"), float_vector(scores_out, "scores_out"))

