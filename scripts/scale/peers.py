"""The peers' side of issue 35's table: faiss, NumPy / SciPy, scikit-learn
and pytorch-ood on the files of make_sets.py, on this machine's cores
(their own thread pools: OpenMP, OpenBLAS, torch). One JSON object per
line on stdout: {"row", "tool", "seconds", "auroc"?, "recall"?}. Batch rows
are the median of REPEATS runs; one-query rows give p50 and p99 of single
calls. Each scoring row's AUROC (OOD positive) is reported so the table
can check the tools agree.

  venv_torch/bin/python peers.py DIR [--rows a,b,logits,scores] [--only knn,maha,vim] [--repeats 3]
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np

ROWS = {}


def emit(**row):
    print(json.dumps(row), flush=True)


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def latencies(fn, queries, warmup=20):
    for q in queries[:warmup]:
        fn(q)
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(0.99 * len(times)))]


def auroc(id_scores, ood_scores):
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    return float(roc_auc_score(y, np.r_[id_scores, ood_scores]))


def load(d):
    return {k: np.load(f"{d}/{k}.npy") for k in ["fit", "fit_labels", "id", "ood", "head_w", "head_b"]}


def normalised(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1)).astype(np.float32)


def knn_rows(s, name, repeats, k=50):
    import faiss

    fit, idq, oodq = normalised(s["fit"]), normalised(s["id"]), normalised(s["ood"])

    def build():
        index = faiss.IndexFlatL2(fit.shape[1])
        index.add(normalised(s["fit"]))
        return index

    t, index = timed(build, repeats)
    emit(row=f"knn_fit_{name}", tool="faiss IndexFlatL2", seconds=t)

    def score():
        a = index.search(normalised(s["id"]), k)[0][:, -1]
        b = index.search(normalised(s["ood"]), k)[0][:, -1]
        return a, b

    t, (a, b) = timed(score, repeats)
    emit(row=f"knn_score_{name}", tool="faiss IndexFlatL2", seconds=t, auroc=auroc(a, b))
    queries = [idq[i : i + 1] for i in range(200)]
    p50, p99 = latencies(lambda q: index.search(q, k), queries)
    emit(row=f"knn_one_{name}", tool="faiss IndexFlatL2", seconds=p50, p99=p99)
    exact = index.search(idq[:200], k)[1]

    def recall(found):
        return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))

    if name == "a":
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(fit.shape[1], 32)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(fit)
        build_s = time.perf_counter() - t
        hnsw.hnsw.efSearch = 128
        p50, p99 = latencies(lambda q: hnsw.search(q, k), queries)
        emit(row=f"knn_one_{name}", tool="faiss HNSW32 ef128", seconds=p50, p99=p99,
             recall=recall(hnsw.search(idq[:200], k)[1]), build=build_s)
    else:
        t = time.perf_counter()
        quantizer = faiss.IndexFlatL2(fit.shape[1])
        ivf = faiss.IndexIVFFlat(quantizer, fit.shape[1], 1024)
        ivf.train(fit[:: max(1, len(fit) // 50_000)])
        ivf.add(fit)
        build_s = time.perf_counter() - t
        # nprobe 32 found 60 % of the 50 nearest here; 128 finds 95 %.
        ivf.nprobe = 128
        p50, p99 = latencies(lambda q: ivf.search(q, k), queries)
        emit(row=f"knn_one_{name}", tool="faiss IVF1024 nprobe128", seconds=p50, p99=p99,
             recall=recall(ivf.search(idq[:200], k)[1]), build=build_s)


def mahalanobis_numpy_fit(fit, labels, classes):
    x = fit.astype(np.float64)
    means = np.zeros((classes, x.shape[1]))
    np.add.at(means, labels, x)
    means /= np.bincount(labels, minlength=classes)[:, None]
    centred = x - means[labels]
    cov = centred.T @ centred / len(x)
    return means, np.linalg.pinv(cov, hermitian=True)


def mahalanobis_rows(s, name, repeats):
    import torch
    from pytorch_ood.detector import Mahalanobis

    classes = int(s["fit_labels"].max()) + 1
    t, (means, precision) = timed(lambda: mahalanobis_numpy_fit(s["fit"], s["fit_labels"], classes), repeats)
    emit(row=f"maha_fit_{name}", tool="NumPy", seconds=t)
    z, y = torch.from_numpy(s["fit"]), torch.from_numpy(s["fit_labels"])
    t, detector = timed(lambda: Mahalanobis(None).fit_features(z, y), 1)
    emit(row=f"maha_fit_{name}", tool="pytorch-ood", seconds=t)

    # float32 scoring, expanded: 0.5 min_c (xPx − 2 xPμ_c + μ_cPμ_c).
    p32, mu32 = precision.astype(np.float32), means.astype(np.float32)
    offsets = np.einsum("cd,de,ce->c", means, precision, means).astype(np.float32)
    pmu = (mu32 @ p32).T.copy()

    def score_np(x, chunk=4096):
        out = np.empty(len(x), dtype=np.float32)
        for s0 in range(0, len(x), chunk):
            b = x[s0 : s0 + chunk]
            forms = np.einsum("nd,nd->n", b @ p32, b)
            d = forms[:, None] - 2.0 * (b @ pmu) + offsets
            out[s0 : s0 + chunk] = 0.5 * d.min(axis=1)
        return out

    t, (a, b) = timed(lambda: (score_np(s["id"]), score_np(s["ood"])), repeats)
    emit(row=f"maha_score_{name}", tool="NumPy (float32)", seconds=t, auroc=auroc(a, b))
    # pytorch-ood scores class by class, a (N, D) x (D, D) product each:
    # at (b) that is 33 TFLOP (minutes); NumPy's expanded form is the peer.
    if name == "a":
        with torch.no_grad():
            zi, zo = torch.from_numpy(s["id"]), torch.from_numpy(s["ood"])
            t, (a, b) = timed(
                lambda: (detector.predict_features(zi), detector.predict_features(zo)), repeats
            )
        emit(row=f"maha_score_{name}", tool="pytorch-ood", seconds=t, auroc=auroc(a.numpy(), b.numpy()))
    if name == "a":
        queries = [s["id"][i : i + 1] for i in range(500)]
        p50, p99 = latencies(score_np, queries)
        emit(row=f"maha_one_{name}", tool="NumPy (float32)", seconds=p50, p99=p99)


def vim_rows(s, name, repeats, dims):
    import torch
    from pytorch_ood.detector import ViM

    w, b = s["head_w"], s["head_b"]
    z, y = torch.from_numpy(s["fit"]), torch.from_numpy(s["fit_labels"])
    detector = ViM(None, d=dims, w=torch.from_numpy(w), b=torch.from_numpy(b))
    detector.fit_features(z, y)
    with torch.no_grad():
        zi, zo = torch.from_numpy(s["id"]), torch.from_numpy(s["ood"])
        t, (a, bb) = timed(lambda: (detector.predict_features(zi), detector.predict_features(zo)), repeats)
    emit(row=f"vim_score_{name}", tool="pytorch-ood", seconds=t, auroc=auroc(a.numpy(), bb.numpy()))

    # NumPy, float32 scoring of the same fit (the subspace from float64).
    x = s["fit"].astype(np.float64)
    u = -np.linalg.pinv(w.astype(np.float64)) @ b
    centred = x - u
    cov = centred.T @ centred / len(x)
    vals, vecs = np.linalg.eigh(cov)
    residual = vecs[:, : len(vals) - dims]
    logits = x @ w.T + b
    norms = np.linalg.norm(centred @ residual, axis=1)
    alpha = logits.max(axis=1).mean() / norms.mean()
    r32, u32 = residual.astype(np.float32), u.astype(np.float32)
    from scipy.special import logsumexp

    def score_np(q):
        energy = logsumexp(q @ w.T + b, axis=1)
        return alpha * np.linalg.norm((q - u32) @ r32, axis=1) - energy

    t, (a, bb) = timed(lambda: (score_np(s["id"]), score_np(s["ood"])), repeats)
    emit(row=f"vim_score_{name}", tool="NumPy (float32)", seconds=t, auroc=auroc(a, bb))


def logit_rows(path, repeats):
    from scipy.special import logsumexp

    logits = np.load(path, mmap_mode="r")
    logits = np.ascontiguousarray(logits)  # in memory, as oodkit reads it

    def energy(chunk=20_000):
        out = np.empty(len(logits), dtype=np.float32)
        for s0 in range(0, len(logits), chunk):
            out[s0 : s0 + chunk] = -logsumexp(logits[s0 : s0 + chunk], axis=1)
        return out

    def msp(chunk=20_000):
        out = np.empty(len(logits), dtype=np.float32)
        for s0 in range(0, len(logits), chunk):
            b = logits[s0 : s0 + chunk]
            m = b.max(axis=1, keepdims=True)
            out[s0 : s0 + chunk] = -1.0 / np.exp(b - m).sum(axis=1)
        return out

    t, _ = timed(energy, repeats)
    emit(row="energy_1e6", tool="SciPy (chunked)", seconds=t)
    t, _ = timed(msp, repeats)
    emit(row="msp_1e6", tool="NumPy (chunked)", seconds=t)


def metric_rows(d, repeats):
    from sklearn.metrics import roc_auc_score, roc_curve

    a, b = np.load(f"{d}/scores_id.npy"), np.load(f"{d}/scores_ood.npy")

    def metrics():
        y = np.r_[np.zeros(len(a)), np.ones(len(b))]
        s = np.r_[a, b]
        auc = roc_auc_score(y, s)
        fpr, tpr, _ = roc_curve(y, s)
        return auc, fpr[np.argmax(tpr >= 0.95)]

    t, _ = timed(metrics, repeats)
    emit(row="metrics_1e7", tool="scikit-learn", seconds=t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--rows", default="a,b,logits,scores")
    p.add_argument("--only", default="knn,maha,vim")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows = set(args.rows.split(","))
    only = set(args.only.split(","))
    for name, dims in [("a", 256), ("b", 1000)]:
        if name in rows:
            s = load(f"{args.dir}/{name}")
            if "knn" in only:
                knn_rows(s, name, args.repeats if name == "a" else 1)
            if "maha" in only:
                mahalanobis_rows(s, name, args.repeats)
            if "vim" in only:
                vim_rows(s, name, args.repeats, dims)
    if "logits" in rows:
        logit_rows(f"{args.dir}/logits.npy", args.repeats)
    if "scores" in rows:
        metric_rows(args.dir, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
