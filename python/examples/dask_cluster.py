"""Fitting and scoring on a cluster engine: Dask's local cluster (worker
processes on this machine; a real cluster is the same code with the
scheduler's address).

Each worker fits its shard of the fit features (here it makes the shard
itself, from a seed, as a worker would read its partition) and sends back a
partial fit, which pickles as the partial fit file's bytes; the driver
merges them in order and, for ViM, sends the merged fit back for the second
pass. The fitted detector is then broadcast (as its file's bytes) and the
workers score shards of a large set. Everything is checked against the fit
and scores of one process.

    pip install "dask[distributed]" && python python/examples/dask_cluster.py

Why Dask: pure-Python wheels (a few MB), a local cluster that starts in a
second or two without a daemon, and the same client code for a cluster;
Ray's wheels are far larger and it starts its own services.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import oodkit

WIDTH = 64
CLASSES = 10


def shard(seed: int, rows: int, ood: bool = False):
    """A shard of penultimate-like features: class centres (shared by every
    shard; other centres for OOD) plus noise, through a ReLU."""
    centres = np.random.default_rng(1000 + ood).normal(scale=1.5, size=(CLASSES, WIDTH))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=rows)
    x = np.maximum(centres[labels] + rng.normal(size=(rows, WIDTH)), 0.0).astype(np.float32)
    return x, labels


def head():
    centres = np.maximum(np.random.default_rng(1000).normal(scale=1.5, size=(CLASSES, WIDTH)), 0.0)
    return centres.astype(np.float32), (-0.5 * (centres**2).sum(1)).astype(np.float32)


def fit_shard(detector: oodkit.UnfittedDetector, seed: int, rows: int) -> oodkit.PartialFit:
    x, y = shard(seed, rows)
    return detector.partial_fit(x, y, head=head())


def second_pass(merged: oodkit.PartialFit, seed: int, rows: int) -> oodkit.PartialFit:
    x, y = shard(seed, rows)
    return merged.copy().update(x, y, head=head())


def score_shard(detector: oodkit.Detector, seed: int, rows: int, ood: bool) -> np.ndarray:
    x, _ = shard(seed, rows, ood)
    return detector.score(x, head=head())


def merge(parts):
    merged = parts[0]
    for other in parts[1:]:
        merged.merge(other)
    return merged


def run(client, fit_shards: int, rows: int, score_shards: int) -> float:
    """Fits KNN, Mahalanobis and ViM on the cluster, scores on it, and
    returns the largest relative difference from one process's scores."""
    worst = 0.0
    seeds = list(range(fit_shards))
    for name, params in [("knn", {"k": 50}), ("mahalanobis", {}), ("vim", {"dims": 16})]:
        detector = oodkit.detector(name, **params)
        start = time.perf_counter()
        parts = client.gather(client.map(fit_shard, [detector] * fit_shards, seeds, [rows] * fit_shards))
        merged = merge(parts)
        if merged.end_first_pass():
            remote = client.scatter(merged, broadcast=True)
            copies = client.gather(client.map(second_pass, [remote] * fit_shards, seeds, [rows] * fit_shards))
            merged = merge(copies)
        fitted = merged.finish()
        fit_time = time.perf_counter() - start

        start = time.perf_counter()
        remote = client.scatter(fitted, broadcast=True)
        score_seeds = [10_000 + i for i in range(score_shards)]
        oods = [i % 2 == 1 for i in range(score_shards)]
        scored = client.gather(client.map(score_shard, [remote] * score_shards, score_seeds, [rows] * score_shards, oods))
        score_time = time.perf_counter() - start

        # One process, for the check.
        all_x = np.concatenate([shard(s, rows)[0] for s in seeds])
        all_y = np.concatenate([shard(s, rows)[1] for s in seeds])
        whole = detector.fit(all_x, all_y, head=head())
        expected = [score_shard(whole, s, rows, o) for s, o in zip(score_seeds, oods)]
        diff = max(float(np.max(np.abs(a - e) / np.maximum(np.abs(e), 1.0))) for a, e in zip(scored, expected))
        worst = max(worst, diff)
        ids = np.concatenate([s for s, o in zip(scored, oods) if not o])
        ood = np.concatenate([s for s, o in zip(scored, oods) if o])
        print(
            f"{fitted.kind:<12} fit on {fit_shards} shards in {fit_time:.2f} s, {score_shards * rows} rows "
            f"scored in {score_time:.2f} s, AUROC {oodkit.metrics.auroc(ids, ood):.4f}, "
            f"largest difference from one process {diff:.1e}"
        )
    return worst


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fit-shards", type=int, default=4)
    parser.add_argument("--score-shards", type=int, default=8)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per shard")
    args = parser.parse_args(argv)
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        worst = run(client, args.fit_shards, args.rows, args.score_shards)
    if worst > 1e-5:
        raise SystemExit(f"the cluster's scores differ from one process's by {worst:.1e}")
    print(f"the cluster's fits and scores are one process's (largest difference {worst:.1e})")
    return worst


if __name__ == "__main__":
    main()
