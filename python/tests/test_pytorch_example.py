"""The PyTorch example end to end, where PyTorch, the data and the command
line are at hand (OODKIT_DATA_DIR, OODKIT_CLI_BIN): a network trained,
hooked, its features fitted, calibrated and saved from Python, and the same
files served by the Rust command line through the ONNX export, scores
matching."""

import os
import pathlib
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))


def test_a_pytorch_network_s_detectors_are_served_by_rust():
    data, cli = os.environ.get("OODKIT_DATA_DIR"), os.environ.get("OODKIT_CLI_BIN")
    if not data or not cli:
        pytest.skip("set OODKIT_DATA_DIR (the datasets) and OODKIT_CLI_BIN (target/debug/oodkit)")
    import pytorch_hook

    pytorch_hook.main(["--data-dir", data, "--oodkit", cli, "--serve", "100"])
