"""Type stub of oodkit (made by python/stubgen.py; see oodkit/__init__.py)."""

from os import PathLike
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import metrics as metrics
from ._errors import Error as Error, FileError as FileError, InvalidInput as InvalidInput

_Array = Any  # a NumPy array, a PyTorch tensor, anything numpy.asarray reads
_Features = Union[_Array, Mapping[str, _Array], None]
_Head = Optional[Sequence[_Array]]
_Layers = Optional[Sequence[Union[str, int]]]

__version__: str

class Kind(NamedTuple):
    name: str
    kind: str
    summary: str
    params: Dict[str, str]
    needs_fit_data: bool
    needs_labels: bool

class Verdicts(NamedTuple):
    scores: np.ndarray
    p_values: np.ndarray
    is_ood: np.ndarray
    classes: np.ndarray

class Detector:
    @property
    def kind(self) -> str: ...
    @property
    def alpha(self) -> Optional[float]: ...
    @property
    def is_calibrated(self) -> bool: ...
    def score(self, features: _Features = None, *, logits: Optional[_Array] = None, head: _Head = None) -> np.ndarray: ...
    def calibrate(self, features: _Features = None, *, logits: Optional[_Array] = None, head: _Head = None, alpha: float = 0.05) -> Detector: ...
    def decide(self, features: _Features = None, *, logits: Optional[_Array] = None, head: _Head = None) -> Verdicts: ...
    def save(self, path: Union[str, PathLike]) -> None: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> Detector: ...

class PartialFit:
    @property
    def kind(self) -> str: ...
    @property
    def in_second_pass(self) -> bool: ...
    def merge(self, other: PartialFit) -> PartialFit: ...
    def end_first_pass(self) -> bool: ...
    def update(self, features: _Features = None, labels: Optional[_Array] = None, *, logits: Optional[_Array] = None, head: _Head = None) -> PartialFit: ...
    def finish(self) -> Detector: ...
    def save(self, path: Union[str, PathLike]) -> None: ...
    def to_bytes(self) -> bytes: ...
    def copy(self) -> PartialFit: ...

class UnfittedDetector:
    def __init__(self, name: str, layers: _Layers = None, **params: Union[float, int, str]) -> None: ...
    @property
    def kind(self) -> str: ...
    def fit(self, features: _Features = None, labels: Optional[_Array] = None, *, logits: Optional[_Array] = None, head: _Head = None) -> Detector: ...
    def partial_fit(self, features: _Features = None, labels: Optional[_Array] = None, *, logits: Optional[_Array] = None, head: _Head = None) -> PartialFit: ...
    def load_partial(self, path: Union[str, PathLike]) -> PartialFit: ...

def detector(name: str, *, layers: _Layers = None, **params: Union[float, int, str]) -> UnfittedDetector: ...
def kinds() -> List[Kind]: ...
def load(path: Union[str, PathLike]) -> Detector: ...

class Mls(UnfittedDetector):
    """MLS: maximum logit score (logits only)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class Msp(UnfittedDetector):
    """MSP: maximum softmax probability (logits only)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class Energy(UnfittedDetector):
    """Energy: energy, -T logsumexp(logits / T) (logits only)"""
    def __init__(self, *, layers: _Layers = None, temperature: Union[float, int, str] = ...) -> None: ...

class Entropy(UnfittedDetector):
    """Entropy: softmax entropy (logits only)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class Gen(UnfittedDetector):
    """GEN: generalised entropy of the top-k probabilities, GEN (logits only)"""
    def __init__(self, *, layers: _Layers = None, gamma: Union[float, int, str] = ..., top_k: Union[float, int, str] = ...) -> None: ...

class TemperatureScaling(UnfittedDetector):
    """TemperatureScaling: MSP at the temperature fitted on the fit data by likelihood (logits; fit data labelled)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class Klm(UnfittedDetector):
    """KLM: KL matching to the mean softmax of each predicted class (logits; fit data)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class OpenMax(UnfittedDetector):
    """OpenMax: OpenMax: Weibull models of the distance to each class's mean logits, an unknown class (logits; fit data labelled)"""
    def __init__(self, *, layers: _Layers = None, tail: Union[float, int, str] = ..., alpha: Union[float, int, str] = ..., translate: Union[float, int, str] = ...) -> None: ...

class RankFeat(UnfittedDetector):
    """RankFeat: RankFeat: the energy once the top rank-1 part of the last feature map is removed (needs the network itself: the crate's networks, not ONNX)"""
    def __init__(self, *, layers: _Layers = None, temperature: Union[float, int, str] = ...) -> None: ...

class McDropout(UnfittedDetector):
    """MCDropout: Monte Carlo dropout: the entropy of the mean softmax of 30 passes with dropout active (needs the network itself, with dropout)"""
    def __init__(self, *, layers: _Layers = None, passes: Union[float, int, str] = ..., statistic: Union[float, int, str] = ..., seed: Union[float, int, str] = ...) -> None: ...

class Odin(UnfittedDetector):
    """ODIN: ODIN: tempered softmax and an input step (needs the network's input gradients: the crate's networks, not ONNX)"""
    def __init__(self, *, layers: _Layers = None, temperature: Union[float, int, str] = ..., epsilon: Union[float, int, str] = ...) -> None: ...

class Mahalanobis(UnfittedDetector):
    """Mahalanobis: Mahalanobis distance to the class means (features; fit data labelled)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class Rmds(UnfittedDetector):
    """RMDS: relative Mahalanobis distance, RMDS (features; fit data labelled)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class Knn(UnfittedDetector):
    """KNN: squared distance to the k-th nearest normalised fit feature, KNN (features)"""
    def __init__(self, *, layers: _Layers = None, k: Union[float, int, str] = ..., hnsw: Union[float, int, str] = ..., ef_construction: Union[float, int, str] = ..., ef_search: Union[float, int, str] = ...) -> None: ...

class Vim(UnfittedDetector):
    """ViM: virtual logit matching, ViM (features and the last layer's weights)"""
    def __init__(self, *, layers: _Layers = None, dims: Union[float, int, str] = ...) -> None: ...

class She(UnfittedDetector):
    """SHE: simplified Hopfield energy, SHE (features; fit data labelled)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class Gram(UnfittedDetector):
    """Gram: deviations of Gram-matrix statistics from per-class bounds (features)"""
    def __init__(self, *, layers: _Layers = None, quantile: Union[float, int, str] = ...) -> None: ...

class Dice(UnfittedDetector):
    """DICE: DICE: the energy of the last layer sparsified by its contributions (features and the last layer)"""
    def __init__(self, *, layers: _Layers = None, sparsity: Union[float, int, str] = ...) -> None: ...

class Vra(UnfittedDetector):
    """VRA: VRA: the energy of features clipped between two fit percentiles (features and the last layer)"""
    def __init__(self, *, layers: _Layers = None, low: Union[float, int, str] = ..., high: Union[float, int, str] = ...) -> None: ...

class Fdbd(UnfittedDetector):
    """fDBD: fDBD: distance to the decision boundaries over distance to the mean feature (features and the last layer)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class Nci(UnfittedDetector):
    """NCI: NCI: alignment with the predicted class's weights plus an L1 norm (features and the last layer)"""
    def __init__(self, *, layers: _Layers = None, alpha: Union[float, int, str] = ...) -> None: ...

class NnGuide(UnfittedDetector):
    """NNGuide: NNGuide: energy guided by the k most similar of a bank of the fit features (features)"""
    def __init__(self, *, layers: _Layers = None, k: Union[float, int, str] = ..., bank_fraction: Union[float, int, str] = ..., hnsw: Union[float, int, str] = ..., ef_construction: Union[float, int, str] = ..., ef_search: Union[float, int, str] = ...) -> None: ...

class GradNorm(UnfittedDetector):
    """GradNorm: GradNorm: the norm of the last layer's gradient (features and the last layer; needs no fit data)"""
    def __init__(self, *, layers: _Layers = None) -> None: ...

class Residual(UnfittedDetector):
    """Residual: Residual: the norm off the principal subspace of the fit features (features)"""
    def __init__(self, *, layers: _Layers = None, dims: Union[float, int, str] = ...) -> None: ...

class Gmm(UnfittedDetector):
    """GMM: class-conditional Gaussians, one covariance per class, GMM (features; fit data labelled)"""
    def __init__(self, *, layers: _Layers = None, regularization: Union[float, int, str] = ...) -> None: ...
