"""The table of scripts/scale/run.sh from the JSON lines of both sides:
per row, oodkit's time (at its largest thread count), the best exact peer
and, for one-query rows, the best approximate one, the ratio peer / oodkit
(above 1: oodkit is faster), the AUROC difference between oodkit's and the
peers' scores, and oodkit's 1-thread / 2-thread ratio.

  python3 table.py ROWS.jsonl... [--cpu "model name"]
"""
import json
import sys
from collections import defaultdict

LABELS = {
    "knn_fit": "KNN fit",
    "knn_score": "KNN exact scoring",
    "knn_one": "KNN one query",
    "maha_fit": "Mahalanobis fit",
    "maha_score": "Mahalanobis scoring",
    "maha_one": "Mahalanobis one sample",
    "vim_fit": "ViM fit",
    "vim_score": "ViM scoring",
    "vim_one": "ViM one sample",
    "energy_1e6": "Energy, 1e6 x 1 000 logits",
    "msp_1e6": "MSP, 1e6 x 1 000 logits",
    "metrics_1e7": "AUROC + FPR@95, 1e7 scores",
}


def fmt(seconds):
    if seconds < 1e-2:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def main():
    args = sys.argv[1:]
    cpu = None
    if "--cpu" in args:
        i = args.index("--cpu")
        cpu = args[i + 1]
        args = args[:i] + args[i + 2 :]
    ours = defaultdict(dict)  # row -> threads -> record
    peers = defaultdict(list)  # row -> records
    for path in args:
        for line in open(path):
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r["tool"] == "oodkit":
                ours[r["row"]][r["threads"]] = r
            else:
                peers[r["row"]].append(r)
    if cpu:
        print(f"CPU: {cpu}\n")
    print("| work | oodkit | best exact peer | peer / oodkit | approximate peer | ΔAUROC | 1 / 2 threads |")
    print("| --- | ---: | --- | ---: | --- | ---: | ---: |")
    for row in sorted(ours, key=lambda r: list(LABELS).index(r.rsplit("_", 1)[0]) if r.rsplit("_", 1)[0] in LABELS else list(LABELS).index(r) if r in LABELS else 99):
        by_threads = ours[row]
        top = by_threads[max(by_threads)]
        base, _, size = row.rpartition("_")
        label = LABELS.get(base, LABELS.get(row, row))
        if size in ("a", "b"):
            label += f" ({size})"
        mine = top["seconds"]
        if "p99" in top:
            ours_text = f"{fmt(mine)} (p99 {fmt(top['p99'])})"
        else:
            ours_text = fmt(mine)
        exact = [p for p in peers.get(row, []) if not any(a in p["tool"] for a in ("HNSW", "IVF"))]
        approx = [p for p in peers.get(row, []) if any(a in p["tool"] for a in ("HNSW", "IVF"))]
        if exact:
            best = min(exact, key=lambda p: p["seconds"])
            peer_text = f"{best['tool']} {fmt(best['seconds'])}"
            ratio = f"{best['seconds'] / mine:.2f}"
            if best["seconds"] / mine < 1.0:
                ratio = f"**{ratio}**"
        else:
            peer_text, ratio = "—", "—"
        approx_text = "; ".join(
            f"{p['tool']} {fmt(p['seconds'])} (recall {p['recall']:.3f})" for p in approx
        ) or "—"
        if "auroc" in top and any("auroc" in p for p in peers.get(row, [])):
            delta = max(abs(top["auroc"] - p["auroc"]) for p in peers[row] if "auroc" in p)
            delta_text = f"{delta:.1e}"
        else:
            delta_text = "—"
        if 1 in by_threads and 2 in by_threads:
            scaling = f"{by_threads[1]['seconds'] / by_threads[2]['seconds']:.2f}x"
        else:
            scaling = "—"
        print(f"| {label} | {ours_text} | {peer_text} | {ratio} | {approx_text} | {delta_text} | {scaling} |")


if __name__ == "__main__":
    main()
