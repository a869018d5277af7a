#!/usr/bin/env bash
# Issue 37's job side by side in one run: `oodkit eval` through the CIFAR ResNet-20 exported to
# ONNX (tract) against the PyTorch script that does the same (torch_eval.py): 5 000 fit,
# 5 000 ID (CIFAR-10) and 5 000 OOD (MNIST) PNG images, detectors mls, energy, knn, vim.
#
#   bash scripts/own_model/bench.sh            (from the project root; ROUNDS=3 by default)
#
# Needs ../shared/peer's venv_torch (bash ../shared/peer/setup.sh). Writes its data, the ONNX
# export and the release build under $WORK (default ~/own-model-bench), prints each run's wall
# time and peak RSS (/usr/bin/time -v) and the AUROCs, then the medians and their ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${WORK:-$HOME/own-model-bench}"
ROUNDS="${ROUNDS:-3}"
PEER_DIR="${PEER_DIR:-$HOME/peer-scratch}"
py="$PEER_DIR/venv_torch/bin/python"
data_root="$(cd .. && pwd)/shared/datasets"
weights="$data_root/weights/akamaster_resnet_cifar10/resnet20-12fca82f.safetensors"
mkdir -p "$WORK"
[ -d "$WORK/data/ood" ] || "$py" scripts/own_model/make_data.py "$data_root" "$WORK/data"
[ -f "$WORK/resnet20.onnx" ] || "$py" ../shared/peer/resnet20_torch_bench.py "$weights" 2 "$WORK/resnet20.onnx" > /dev/null
cargo build --release --features cli --bin oodkit
grep -m1 "model name" /proc/cpuinfo
echo "cores: $(nproc)"

# run NAME CMD...: wall seconds and peak RSS of one process, its output in $WORK/NAME.out.
run() {
  local name="$1"; shift
  /usr/bin/time -v "$@" > "$WORK/$name.out" 2> "$WORK/$name.time"
  local wall rss
  wall="$(grep "Elapsed (wall clock)" "$WORK/$name.time" | awk '{print $NF}' | awk -F: '{ if (NF == 3) print $1*3600+$2*60+$3; else print $1*60+$2 }')"
  rss="$(grep "Maximum resident" "$WORK/$name.time" | awk '{print $NF}')"
  echo "$name $wall $((rss / 1024))"
}

results="$WORK/results.txt"
: > "$results"
for round in $(seq "$ROUNDS"); do
  run oodkit_tract ./target/release/oodkit eval --model "$WORK/resnet20.onnx" --layer /Flatten \
    --size 32x32 --normalize imagenet --fit-data "$WORK/data/fit" --id "$WORK/data/id" \
    --ood "$WORK/data/ood" --detectors mls,energy,knn,vim --quiet --json "$WORK/oodkit.json" | tee -a "$results"
  run pytorch "$py" scripts/own_model/torch_eval.py "$weights" "$WORK/data" "$(nproc)" | tee -a "$results"
done
echo "== AUROC, last round"
grep -o '"auroc": [0-9.]*' "$WORK/oodkit.json" | head -4 | sed 's/^/oodkit /' || true
grep RESULT "$WORK/pytorch.out"
echo "== medians over $ROUNDS rounds (wall s, peak MB)"
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, wall, rss = line.split()
    rows.setdefault(name, []).append((float(wall), int(rss)))
med = {n: (statistics.median(w for w, _ in v), max(r for _, r in v)) for n, v in rows.items()}
for n, (w, r) in med.items():
    print(f"{n:14} {w:7.1f} s  {r:6d} MB")
if "oodkit_tract" in med and "pytorch" in med:
    print(f"oodkit (tract) / PyTorch wall time: {med['oodkit_tract'][0] / med['pytorch'][0]:.2f}x (target <= 3x)")
PY
