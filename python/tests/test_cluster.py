"""The Dask example on a local cluster of worker processes: partial fits
shipped back pickled, merged, the detector broadcast, shards scored; the
same as one process."""

import pathlib
import sys

import pytest

pytest.importorskip("distributed")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))


def test_fit_and_score_on_a_dask_local_cluster():
    import dask_cluster

    worst = dask_cluster.main(["--workers", "2", "--fit-shards", "3", "--score-shards", "4", "--rows", "2000"])
    assert worst <= 1e-5
