"""Times scikit-learn on the data shape of benches/metrics.rs.

ID scores uniform on [0, 1), OOD on [0.3, 1.3), half and half, float32;
"ties": rounded to 1/1000. Prints the best of `--repeat` runs of
`roc_auc_score` alone and of the four metrics bench_metrics computes.
Not a CI dependency: scripts/bench_sklearn.sh installs scikit-learn into a
throwaway virtualenv.
"""
import argparse
import time

import numpy as np
import sklearn
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def scores(rng, n, shift, ties):
    x = rng.random(n, dtype=np.float32) + np.float32(shift)
    return np.round(x * 1000) / 1000 if ties else x


def best_of(repeat, f):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"scikit-learn {sklearn.__version__}, numpy {np.__version__}")
    for ties in (False, True):
        for n in map(int, args.sizes.split(",")):
            rng = np.random.default_rng(n)
            s = np.concatenate([scores(rng, n // 2, 0.0, ties), scores(rng, n // 2, 0.3, ties)])
            y = np.r_[np.zeros(n // 2), np.ones(n // 2)]

            def four():
                roc_auc_score(y, s)
                fpr, tpr, _ = roc_curve(y, s)
                fpr[np.argmax(tpr >= 0.95)]
                average_precision_score(y, s)
                average_precision_score(1 - y, -s)

            t_auc = best_of(args.repeat, lambda: roc_auc_score(y, s))
            t_four = best_of(args.repeat, four)
            label = "ties" if ties else "no_ties"
            print(f"{label:8} n={n:>9}  roc_auc_score {t_auc:9.4f} s   four metrics {t_four:9.4f} s")


if __name__ == "__main__":
    main()
