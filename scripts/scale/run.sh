#!/usr/bin/env bash
# Issue 35's side-by-side table: oodkit (benches/scale.rs) against faiss,
# NumPy / SciPy, scikit-learn and pytorch-ood (peers.py) on the same files
# (make_sets.py: about 7 GB in $SCALE_DIR, written once), set by set, the
# two sides back to back. Not a CI step: the machine is shared, so only the
# ratios of one run mean anything; say when it was not idle.
#
#   scripts/scale/run.sh                    # SCALE_DIR=/tmp/oodkit-scale
#   SCALE_SETS="a logits" scripts/scale/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${SCALE_DIR:-/tmp/oodkit-scale}
peer_dir=${PEER_DIR:-$HOME/peer-scratch}
python="$peer_dir/venv_torch/bin/python"
sets=${SCALE_SETS:-a b logits scores}
[ -x "$python" ] || bash "${SHARED:-../shared}/peer/setup.sh"
mkdir -p "$dir"
for set in $sets; do
    case $set in
        a|b) marker="$dir/$set/head_b.npy" ;;
        logits) marker="$dir/logits.npy" ;;
        scores) marker="$dir/scores_ood.npy" ;;
    esac
    [ -f "$marker" ] || "$python" scripts/scale/make_sets.py "$dir" --only "$set"
done
cargo bench --no-run --bench scale
out=$(mktemp -d)
cpu=$(grep -m1 "model name" /proc/cpuinfo | sed 's/.*: //')
echo "results in $out; cpu: $cpu; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for set in $sets; do
    OODKIT_SCALE_DIR="$dir" SCALE_ROWS="$set" cargo bench --bench scale | tee -a "$out/oodkit.jsonl"
    "$python" scripts/scale/peers.py "$dir" --rows "$set" | tee -a "$out/peers.jsonl"
done
python3 scripts/scale/table.py "$out/oodkit.jsonl" "$out/peers.jsonl" --cpu "$cpu" | tee "$out/table.md"
