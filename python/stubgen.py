"""Writes oodkit/__init__.pyi, the type stub of the package, from the
registered kinds (run after building: python python/stubgen.py). The tests
check that the stub lists every kind."""

import pathlib

import oodkit

HEAD = '''"""Type stub of oodkit (made by python/stubgen.py; see oodkit/__init__.py)."""

from os import PathLike
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

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

class Calibration:
    def __init__(self, id_scores: _Array) -> None: ...
    def __len__(self) -> int: ...
    def threshold(self, alpha: float) -> float: ...
    def decide(self, scores: _Array, alpha: float = 0.05) -> Tuple[np.ndarray, np.ndarray]: ...

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
'''


def stub() -> str:
    lines = [HEAD]
    for kind in oodkit.kinds():
        name = oodkit._class_name(kind.name)
        params = "".join(f", {p}: Union[float, int, str] = ..." for p in kind.params)
        lines.append(f"class {name}(UnfittedDetector):")
        lines.append(f'    """{kind.kind}: {kind.summary}"""')
        lines.append(f"    def __init__(self, *, layers: _Layers = None{params}) -> None: ...")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    path = pathlib.Path(__file__).parent / "oodkit" / "__init__.pyi"
    path.write_text(stub())
    print(f"wrote {path}")
