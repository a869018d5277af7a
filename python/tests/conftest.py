"""Shared data of the tests: class-structured penultimate-like features
through a ReLU, a linear head and its logits, as a classifier's would be."""

import pathlib
import sys

import numpy as np
import pytest

# stubgen.py sits beside the tests' folder.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

D = 16
CLASSES = 5


def make(n, seed, ood=False):
    """``n`` rows around the classes' centres (``ood``: other centres)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(101 if ood else 100).normal(scale=2.0, size=(CLASSES, D))
    labels = np.arange(n) % CLASSES
    x = centres[labels] + rng.normal(size=(n, D))
    x = np.maximum(x, 0.0).astype(np.float32)
    w, b = head()
    logits = (x @ w.T + b).astype(np.float32)
    return x, logits, labels.astype(np.int64)


def head():
    """The nearest-centre classifier as a linear layer: argmax of
    x . c_k - |c_k|^2 / 2 over the (rectified) class centres c_k."""
    centres = np.maximum(np.random.default_rng(100).normal(scale=2.0, size=(CLASSES, D)), 0.0)
    w = centres.astype(np.float32)
    b = (-0.5 * (centres**2).sum(1)).astype(np.float32)
    return w, b


@pytest.fixture(scope="session")
def fit_set():
    return make(600, 1)


@pytest.fixture(scope="session")
def id_set():
    return make(300, 2)


@pytest.fixture(scope="session")
def ood_set():
    return make(300, 3, ood=True)
