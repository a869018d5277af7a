"""What the Python binding adds to batch scoring: the same detector file
and queries scored by oodkit from Python and by the Rust crate
(examples/interop.rs `time`, built in release), best of REPEATS each,
alternated. Data: scale set (a)'s shape (50 000 fit x 512, 100 classes;
20 000 queries), class-structured, made here.

    cargo build --release --features cli --example interop
    python python/bench/overhead.py target/release/examples/interop
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import oodkit

REPEATS = 5


def data(n, seed, classes=100, width=512):
    centres = np.random.default_rng(1).normal(scale=1.0, size=(classes, width))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    x = np.maximum(centres[labels] + rng.normal(size=(n, width)), 0).astype(np.float32)
    return x, labels


def best(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(binary):
    fit, labels = data(50_000, 2)
    queries, _ = data(20_000, 3)
    w = np.random.default_rng(4).normal(size=(100, 512)).astype(np.float32) / 20
    b = np.zeros(100, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "queries.npy", queries)
        print("| detector (batch of 20 000) | Python | Rust | Python / Rust | Rust, glibc mmap threshold raised | Python / that |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, params, head in [("mahalanobis", {}, None), ("knn", {"k": 50}, None), ("vim", {"dims": 256}, (w, b))]:
            fitted = oodkit.detector(name, **params).fit(fit, labels, head=head)
            path = tmp / f"{name}.oodkit"
            fitted.save(path)
            python, rust, tuned = [], [], []
            repeats = 1 if name == "knn" else REPEATS
            for _ in range(2):  # alternated, twice
                python.append(best(lambda: fitted.score(queries), repeats))
                out = subprocess.run([binary, "time", path, tmp / "queries.npy", str(repeats)], check=True, capture_output=True, text=True)
                rust.append(float(out.stdout))
                # A long-running process (Python's) has raised glibc's
                # dynamic mmap threshold; a fresh binary returns each large
                # buffer to the system and faults it back in.
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4000000000", MALLOC_TRIM_THRESHOLD_="4000000000")
                out = subprocess.run([binary, "time", path, tmp / "queries.npy", str(repeats)], check=True, capture_output=True, text=True, env=env)
                tuned.append(float(out.stdout))
            p, r, t = min(python), min(rust), min(tuned)
            print(f"| {fitted.kind} | {p:.3f} s | {r:.3f} s | {p / r:.3f} | {t:.3f} s | {p / t:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
