#!/usr/bin/env bash
# Issue 37's job side by side in one run: `oodkit eval` through the CIFAR ResNet-20 exported to
# ONNX, run by tract and by ONNX Runtime, against the PyTorch script that does the same
# (torch_eval.py): 5 000 fit, 5 000 ID (CIFAR-10) and 5 000 OOD (MNIST) PNG images, detectors
# mls, energy, knn, vim. Then each engine's inference throughput against PyTorch's on the
# ResNet-20 graph and on a torchvision ResNet-50 at 224x224 (random weights), both exported
# by torch_throughput.py with today's exporter (weights in .onnx.data).
#
#   bash scripts/own_model/bench.sh            (from the project root; ROUNDS=3 by default)
#
# Needs ../shared/peer's venv_torch (bash ../shared/peer/setup.sh), whose onnxruntime package
# gives ONNX Runtime's library. Writes its data and the ONNX exports under $WORK (default
# ~/own-model-bench), prints each run's wall time and peak RSS (/usr/bin/time -v) and the
# AUROCs, then the medians and their ratios; THROUGHPUT=0 skips the throughput rows.
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
ORT_DYLIB_PATH="$(ls "$PEER_DIR"/venv_torch/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | head -n 1)"
export ORT_DYLIB_PATH
cargo build --release --features cli --bin oodkit
oodkit="${CARGO_TARGET_DIR:-target}/release/oodkit"
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
  run oodkit_tract "$oodkit" eval --model "$WORK/resnet20.onnx" \
    --size 32x32 --normalize imagenet --fit-data "$WORK/data/fit" --id "$WORK/data/id" \
    --ood "$WORK/data/ood" --detectors mls,energy,knn,vim --quiet --json "$WORK/oodkit.json" | tee -a "$results"
  run oodkit_onnxruntime "$oodkit" eval --model "$WORK/resnet20.onnx" --engine onnxruntime \
    --size 32x32 --normalize imagenet --fit-data "$WORK/data/fit" --id "$WORK/data/id" \
    --ood "$WORK/data/ood" --detectors mls,energy,knn,vim --quiet --json "$WORK/oodkit_ort.json" | tee -a "$results"
  run pytorch "$py" scripts/own_model/torch_eval.py "$weights" "$WORK/data" "$(nproc)" | tee -a "$results"
done
echo "== AUROC, last round"
grep -o '"auroc": [0-9.]*' "$WORK/oodkit.json" | head -4 | sed 's/^/oodkit (tract) /' || true
grep -o '"auroc": [0-9.]*' "$WORK/oodkit_ort.json" | head -4 | sed 's/^/oodkit (onnxruntime) /' || true
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
for engine, target in (("tract", 3), ("onnxruntime", 1)):
    if f"oodkit_{engine}" in med and "pytorch" in med:
        ratio = med[f"oodkit_{engine}"][0] / med["pytorch"][0]
        print(f"oodkit ({engine}) / PyTorch wall time: {ratio:.2f}x (target <= {target}x)")
PY

[ "${THROUGHPUT:-1}" = 0 ] && exit 0
echo "== inference throughput, images/s (criterion's median; PyTorch: median of 5), $(nproc) threads"
[ -f "$WORK/resnet20_dynamo.onnx" ] || "$py" scripts/own_model/torch_throughput.py resnet20 "$(nproc)" "$WORK/resnet20_dynamo.onnx" "$weights" > /dev/null
[ -f "$WORK/resnet50.onnx" ] || "$py" scripts/own_model/torch_throughput.py resnet50 "$(nproc)" "$WORK/resnet50.onnx" > /dev/null
# throughput NAME GRAPH INPUT BATCHES: the engines' rows (criterion), then PyTorch's.
throughput() {
  local name="$1" graph="$2" input="$3" batches="$4" args=()
  [ "$name" = resnet50 ] || args=("$weights")
  OODKIT_RESNET20_ONNX="$graph" OODKIT_ONNX_INPUT="$input" OODKIT_ONNX_BATCHES="$batches" \
    cargo bench --features onnxruntime --bench onnx_resnet -- --noplot 2>/dev/null \
    | awk -v n="$name" '/^onnx_inference/ { id = $1 } /thrpt:/ && id != "" { print n, id, $(NF-3), $(NF-2); id = "" }'
  "$py" scripts/own_model/torch_throughput.py "$name" "$(nproc)" "$graph" "${args[@]}"
}
throughput resnet20 "$WORK/resnet20_dynamo.onnx" 3x32x32 128,500
throughput resnet50 "$WORK/resnet50.onnx" 3x224x224 16,64
