"""oodkit from Python beside faiss, NumPy and pytorch-ood on scale set (a)
(scripts/scale/make_sets.py): the same files, the same rows as the Rust
crate's table (issue 35), each side's median of REPEATS, alternated set by
set. The peers run scripts/scale/peers.py's own functions.

    python scripts/scale/make_sets.py /tmp/oodkit-scale --only a
    python python/bench/side_by_side.py /tmp/oodkit-scale/a   # oodkit built --release
"""

import json
import pathlib
import sys
import time

import numpy as np

import oodkit

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts" / "scale"))
import peers  # noqa: E402

REPEATS = 3


def ours(s):
    rows = []

    def emit(**row):
        rows.append(row)

    fit, labels, id_x, ood_x = s["fit"], s["fit_labels"], s["id"], s["ood"]
    t, knn = peers.timed(lambda: oodkit.Knn(k=50).fit(fit, labels), REPEATS)
    emit(row="knn_fit_a", tool="oodkit (Python)", seconds=t)
    t, (a, b) = peers.timed(lambda: (knn.score(id_x), knn.score(ood_x)), 1)
    emit(row="knn_score_a", tool="oodkit (Python)", seconds=t, auroc=peers.auroc(a, b))
    t, maha = peers.timed(lambda: oodkit.Mahalanobis().fit(fit, labels), REPEATS)
    emit(row="maha_fit_a", tool="oodkit (Python)", seconds=t)
    t, (a, b) = peers.timed(lambda: (maha.score(id_x), maha.score(ood_x)), REPEATS)
    emit(row="maha_score_a", tool="oodkit (Python)", seconds=t, auroc=peers.auroc(a, b))
    head = (s["head_w"], s["head_b"])
    vim = oodkit.Vim(dims=256).fit(fit, labels, head=head)
    t, (a, b) = peers.timed(lambda: (vim.score(id_x, head=head), vim.score(ood_x, head=head)), REPEATS)
    emit(row="vim_score_a", tool="oodkit (Python)", seconds=t, auroc=peers.auroc(a, b))
    scores_in = np.random.default_rng(0).normal(size=5_000_000).astype(np.float32)
    scores_out = (np.random.default_rng(1).normal(size=5_000_000) + 0.5).astype(np.float32)
    t, _ = peers.timed(lambda: oodkit.metrics.bench_metrics(scores_in, scores_out, ["auroc", "fpr95tpr"]), REPEATS)
    emit(row="metrics_1e7", tool="oodkit (Python)", seconds=t)
    return rows, (scores_in, scores_out)


def theirs(s, scores):
    rows = []
    real_emit = peers.emit
    peers.emit = lambda **row: rows.append(row)
    try:
        peers.knn_rows(s, "a", 1)
        peers.mahalanobis_rows(s, "a", REPEATS)
        peers.vim_rows(s, "a", REPEATS, 256)
        from sklearn.metrics import roc_auc_score, roc_curve

        a, b = scores
        y = np.r_[np.zeros(len(a)), np.ones(len(b))]
        sc = np.r_[a, b]
        t, _ = peers.timed(lambda: (roc_auc_score(y, sc), roc_curve(y, sc)), REPEATS)
        rows.append(dict(row="metrics_1e7", tool="scikit-learn", seconds=t))
    finally:
        peers.emit = real_emit
    return rows


def main(path):
    s = peers.load(path)
    mine, scores = ours(s)
    other = theirs(s, scores)
    print("| work | oodkit from Python | best peer | peer / oodkit | ΔAUROC |")
    print("| --- | ---: | --- | ---: | ---: |")
    for row in mine:
        peers_rows = [r for r in other if r["row"] == row["row"] and "recall" not in r]
        if not peers_rows:
            continue
        best = min(peers_rows, key=lambda r: r["seconds"])
        d = abs(row["auroc"] - best["auroc"]) if "auroc" in row and "auroc" in best else None
        print(
            f"| {row['row']} | {row['seconds']:.3f} s | {best['tool']} {best['seconds']:.3f} s | "
            f"{best['seconds'] / row['seconds']:.2f} | {'' if d is None else f'{d:.1e}'} |"
        )
    print(json.dumps({"ours": mine, "peers": other}))


if __name__ == "__main__":
    main(sys.argv[1])
