"""Helpers of scripts/bench_peers.sh: reading each side's measurements into
rows, and the table (medians over rounds, ratios).

  bench_peers_table.py criterion ESTIMATES.json BATCH   images/s of a criterion bench
  bench_peers_table.py torch < JSON                      rows of resnet20_torch_bench.py
  bench_peers_table.py tf < JSON                         rows of tf_throughput.py's RESULT
  bench_peers_table.py loop SIDE < LOG                    training-loop images/s of an example's output
  bench_peers_table.py time FILE                         wall seconds, peak RSS MB of time -v
  bench_peers_table.py table ROWS CPU                    the Markdown table

A row is "<side> <work> <batch> <value> [<value2>]".
"""
import json
import re
import statistics
import sys
from collections import defaultdict


def criterion(path, batch):
    ns = json.load(open(path))["median"]["point_estimate"]
    print(round(int(batch) / (ns * 1e-9), 1))


def torch():
    r = json.loads(sys.stdin.read())
    for b in (128, 500):
        print(f"torch{r['threads']} resnet20 {b} {r['img_s_batch%d' % b]}")


def tf():
    r = json.loads(sys.stdin.read())
    # Epoch 1 fills tf.data's cache and retraces: the best of the later ones.
    print(f"tf train_step 128 {max(r['train_imgs_per_s'][1:]):.1f}")
    print(f"tf inference 128 {max(r['infer_imgs_per_s']):.1f}")


def loop(side):
    text = sys.stdin.read()
    if side == "oodeel":
        # run_mls_msp.py times model.fit, its validation passes included.
        line = next(l for l in text.splitlines() if l.startswith("RESULT "))
        value = json.loads(line[len("RESULT "):])["train_imgs_per_s_incl_val"]
    else:
        value = float(re.search(r"trained \d+ epochs in [\d.]+ s \((\d+) images/s\)", text).group(1))
    print(f"{side} train_loop 128 {value:.1f}")


def time_v(path):
    text = open(path).read()
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", text).group(1).strip()
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
    print(f"{seconds:.1f} {rss:.0f}")


def table(rows_path, cpu_path):
    rows = defaultdict(list)
    for line in open(rows_path):
        side, work, batch, *values = line.split()
        rows[(side, work, batch)].append([float(v) for v in values])
    cpu = open(cpu_path).read().strip()

    def median(key, i=0):
        values = [v[i] for v in rows.get(key, [])]
        return statistics.median(values) if values else float("nan")

    print(f"{cpu}; medians of {max(len(v) for v in rows.values())} rounds\n")
    print("| work | oodkit | peer | oodkit / peer (> 1: oodkit faster) |")
    print("| --- | ---: | ---: | ---: |")
    for batch in ("128", "500"):
        ours = median(("oodkit", "resnet20", batch))
        t1, t2 = (median((f"torch{t}", "resnet20", batch)) for t in (1, 2))
        best = max(t1, t2)
        print(
            f"| ResNet-20 inference, batch {batch} | {ours:.0f} img/s | PyTorch {best:.0f} img/s "
            f"(1 thread {t1:.0f}, 2 threads {t2:.0f}) | {ours / best:.2f}x |"
        )
    for batch in ("128", "500"):
        ours = median(("oodkit_onnx", "resnet20", batch))
        best = max(median((f"torch{t}", "resnet20", batch)) for t in (1, 2))
        print(
            f"| ResNet-20 through `OnnxModel` (tract), batch {batch} | {ours:.0f} img/s | "
            f"PyTorch {best:.0f} img/s | {ours / best:.2f}x |"
        )
    for work, label in (("train_step", "toy convnet training step"),
                        ("inference", "toy convnet inference")):
        ours, theirs = median(("oodkit", work, "128")), median(("tf", work, "128"))
        print(f"| {label}, batch 128 | {ours:.0f} img/s | TensorFlow {theirs:.0f} img/s | "
              f"{ours / theirs:.2f}x |")
    loop_ours, loop_theirs = median(("oodkit", "train_loop", "128")), median(("oodeel", "train_loop", "128"))
    print(f"| MNIST example's training loop (5 epochs) | {loop_ours:.0f} img/s | oodeel + TF "
          f"{loop_theirs:.0f} img/s (its validation passes included; oodkit's excluded) | {loop_ours / loop_theirs:.2f}x |")
    step = median(("oodkit", "train_step", "128"))
    print(f"| the same loop against oodkit's bare step (target: within 15%) | {loop_ours:.0f} img/s | "
          f"step {step:.0f} img/s | {loop_ours / step:.2f} of the step |")
    loop_dev = median(("oodkit_dev", "train_loop", "128"))
    print(f"| the same loop, dev profile (debug assertions on; informational) | {loop_dev:.0f} img/s | "
          f"release {loop_ours:.0f} img/s | {loop_dev / loop_ours:.2f} of release |")
    wall, rss = median(("oodkit", "e2e", "0")), median(("oodkit", "e2e", "0"), 1)
    peer_wall, peer_rss = median(("oodeel", "e2e", "0")), median(("oodeel", "e2e", "0"), 1)
    print(f"| MNIST example end to end, wall | {wall:.1f} s | oodeel + TF {peer_wall:.1f} s | "
          f"{peer_wall / wall:.2f}x |")
    print(f"| peak RSS of the same runs | {rss:.0f} MB | {peer_rss:.0f} MB | "
          f"{rss / peer_rss:.2f} of theirs |")


commands = {
    "criterion": criterion,
    "torch": torch,
    "tf": tf,
    "loop": loop,
    "time": time_v,
    "table": table,
}
commands[sys.argv[1]](*sys.argv[2:])
