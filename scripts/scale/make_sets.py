"""The files issue 35's side-by-side table reads, written once and read by
every tool (oodkit's benches/scale.rs and scripts/scale/peers.py):

  a/  fit.npy (50 000 x 512 float32), fit_labels.npy (int64, 100 classes),
      id.npy and ood.npy (10 000 x 512 each), head_w.npy (100 x 512),
      head_b.npy (100,)
  b/  the same at 200 000 x 2 048, 1 000 classes, 2 000 ID + 2 000 OOD
  c/  the same at 1 000 000 x 512, 1 000 classes, 2 000 ID + 2 000 OOD (the
      approximate index's second size; no head)
  logits.npy        1 000 000 x 1 000 float32 (4 GB), for Energy and MSP
  scores_id.npy, scores_ood.npy   5 000 000 float32 each, for the metrics

Penultimate-layer-like features: a centre per class, noise of a spread
that differs by dimension and a few shared directions (so the covariance
is not isotropic), through a ReLU. OOD rows come from other centres.

  python make_sets.py DIR [--only a,b,c,logits,scores]
"""
import argparse
import os

import numpy as np


def class_set(out, n_fit, n_test, dim, classes, seed, head=True):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32) * 1.5
    ood_centres = rng.standard_normal((classes, dim), dtype=np.float32) * 1.5
    spread = (0.5 + rng.random(dim, dtype=np.float32)).astype(np.float32)
    shared = rng.standard_normal((16, dim), dtype=np.float32) * 0.6

    def draw(n, which, labels):
        rows = np.empty((n, dim), dtype=np.float32)
        step = 20_000
        for s in range(0, n, step):
            e = min(n, s + step)
            block = rng.standard_normal((e - s, dim), dtype=np.float32) * spread
            block += rng.standard_normal((e - s, 16), dtype=np.float32) @ shared
            block += which[labels[s:e]]
            np.maximum(block, 0.0, out=block)
            rows[s:e] = block
        return rows

    labels = rng.integers(0, classes, n_fit).astype(np.int64)
    np.save(f"{out}/fit.npy", draw(n_fit, centres, labels))
    np.save(f"{out}/fit_labels.npy", labels)
    np.save(f"{out}/id.npy", draw(n_test, centres, rng.integers(0, classes, n_test)))
    # Half of the OOD rows from other centres, half between two ID centres.
    mixed = 0.5 * (centres + np.roll(centres, 1, axis=0))
    ood = np.concatenate([
        draw(n_test // 2, ood_centres, rng.integers(0, classes, n_test // 2)),
        draw(n_test - n_test // 2, mixed, rng.integers(0, classes, n_test - n_test // 2)),
    ])
    np.save(f"{out}/ood.npy", ood)
    if not head:
        return
    # A head that reads the class centres (the logits ViM uses).
    w = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    np.save(f"{out}/head_w.npy", w)
    np.save(f"{out}/head_b.npy", (0.1 * rng.standard_normal(classes)).astype(np.float32))


def logits(path, rows=1_000_000, classes=1_000, seed=3):
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, classes))
    step = 50_000
    for s in range(0, rows, step):
        e = min(rows, s + step)
        block = rng.standard_normal((e - s, classes), dtype=np.float32) * 2.0
        block[np.arange(e - s), rng.integers(0, classes, e - s)] += 6.0
        out[s:e] = block
    out.flush()


def scores(out, n=5_000_000, seed=4):
    rng = np.random.default_rng(seed)
    np.save(f"{out}/scores_id.npy", rng.random(n, dtype=np.float32))
    np.save(f"{out}/scores_ood.npy", rng.random(n, dtype=np.float32) + 0.3)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--only", default="a,b,logits,scores")
    args = p.parse_args()
    only = set(args.only.split(","))
    os.makedirs(args.dir, exist_ok=True)
    if "a" in only:
        class_set(f"{args.dir}/a", 50_000, 10_000, 512, 100, 1)
    if "b" in only:
        class_set(f"{args.dir}/b", 200_000, 2_000, 2_048, 1_000, 2)
    if "c" in only:
        class_set(f"{args.dir}/c", 1_000_000, 2_000, 512, 1_000, 5, head=False)
    if "logits" in only:
        logits(f"{args.dir}/logits.npy")
    if "scores" in only:
        scores(args.dir)


if __name__ == "__main__":
    main()
