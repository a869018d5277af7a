#!/usr/bin/env bash
# The network path of oodkit against the programs users would pick instead,
# measured side by side: ResNet-20 inference (oodkit's `resnet` bench vs
# PyTorch at 1 and 2 threads, and the same network exported to ONNX through
# `OnnxModel`), the toy convnet's training step and inference
# (oodkit's `training` bench vs TensorFlow's `tf_throughput.py`), and the
# MNIST 0-4 vs 5-9 example end to end (wall time and peak RSS of
# `mnist_mls_msp` vs oodeel + TensorFlow's `run_mls_msp.py`). The two sides
# alternate, ROUNDS rounds (default 3); the table prints medians and ratios.
#
#   scripts/bench_peers.sh            # SHARED=../shared, PEER_DIR=~/peer-scratch
#   ROUNDS=5 scripts/bench_peers.sh
#
# The peers' virtual environments come from $SHARED/peer/setup.sh (PyPI,
# about 4 GB, built once). Not a CI step: the machine is shared, so only the
# ratios of one run mean anything.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=$(cd "${SHARED:-../shared}" && pwd)
peer_dir=${PEER_DIR:-$HOME/peer-scratch}
rounds=${ROUNDS:-3}
export PEER_DIR=$peer_dir

bash "$shared/peer/setup.sh"
weights=$(ls "$shared"/datasets/weights/akamaster_resnet_cifar10/resnet20-*.safetensors | head -1)
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
out=$(mktemp -d)
echo "results in $out"
grep -m1 "model name" /proc/cpuinfo | sed 's/.*: /cpu: /' | tee "$out/cpu.txt"

cargo bench --no-run --bench resnet --bench training
cargo bench --no-run --features onnx --bench onnx_resnet
# The same ResNet-20 exported to ONNX by the PyTorch peer, for tract.
onnx="$out/resnet20.onnx"
"$peer_dir/venv_torch/bin/python" "$shared/peer/resnet20_torch_bench.py" "$weights" 1 "$onnx" \
    > /dev/null 2> "$out/onnx_export.err"
# The example as a user measuring speed runs it (`--release`; its
# dependencies are the benches' build), and as the dev profile builds it:
# there the crate keeps debug assertions, so Rust's checks on raw pointer
# steps run inside the kernels (informational row).
cargo build --release --example mnist_mls_msp
cargo build --example mnist_mls_msp
example="$target/release/examples/mnist_mls_msp"
example_dev="$target/debug/examples/mnist_mls_msp"

table="$PWD/scripts/bench_peers_table.py"
# Criterion's median time per iteration of one bench, as images/s.
images_per_s() { # group function batch
    python3 "$table" criterion "$target/criterion/$1/$2/new/estimates.json" "$3"
}

for round in $(seq "$rounds"); do
    echo "== round $round of $rounds"
    cargo bench --bench resnet -- --noplot > "$out/resnet_$round.log" 2>&1
    for batch in 128 500; do
        echo "oodkit resnet20 $batch $(images_per_s resnet20_inference "batch_$batch" "$batch")" \
            >> "$out/rows.txt"
    done
    OODKIT_RESNET20_ONNX="$onnx" cargo bench --features onnx --bench onnx_resnet -- --noplot \
        > "$out/onnx_$round.log" 2>&1
    for batch in 128 500; do
        echo "oodkit_onnx resnet20 $batch $(images_per_s resnet20_onnx_inference "batch_$batch" "$batch")" \
            >> "$out/rows.txt"
    done
    for threads in 1 2; do
        "$peer_dir/venv_torch/bin/python" "$shared/peer/resnet20_torch_bench.py" "$weights" "$threads" |
            python3 "$table" torch >> "$out/rows.txt"
    done

    cargo bench --bench training -- --noplot oodkit > "$out/training_$round.log" 2>&1
    echo "oodkit train_step 128 $(images_per_s toy_convnet_batch128 train_step_oodkit 128)" >> "$out/rows.txt"
    echo "oodkit inference 128 $(images_per_s toy_convnet_batch128 inference_oodkit 128)" >> "$out/rows.txt"
    "$peer_dir/venv/bin/python" "$shared/peer/tf_throughput.py" 2> "$out/tf_$round.err" |
        sed -n 's/^RESULT //p' | python3 "$table" tf >> "$out/rows.txt"

    /usr/bin/time -v "$example" --data-dir "$shared/datasets" --seed 0 \
        > "$out/e2e_oodkit_$round.log" 2> "$out/e2e_oodkit_$round.time"
    echo "oodkit e2e 0 $(python3 "$table" time "$out/e2e_oodkit_$round.time")" >> "$out/rows.txt"
    python3 "$table" loop oodkit < "$out/e2e_oodkit_$round.log" >> "$out/rows.txt"
    "$example_dev" --data-dir "$shared/datasets" --seed 0 > "$out/e2e_oodkit_dev_$round.log" 2>&1
    python3 "$table" loop oodkit_dev < "$out/e2e_oodkit_dev_$round.log" >> "$out/rows.txt"
    (cd "$shared/peer" && PEER_OUT="$out/peer_out" /usr/bin/time -v \
        "$peer_dir/venv/bin/python" run_mls_msp.py 0 \
        > "$out/e2e_oodeel_$round.log" 2> "$out/e2e_oodeel_$round.time")
    echo "oodeel e2e 0 $(python3 "$table" time "$out/e2e_oodeel_$round.time")" >> "$out/rows.txt"
    python3 "$table" loop oodeel < "$out/e2e_oodeel_$round.log" >> "$out/rows.txt"
done

python3 "$table" table "$out/rows.txt" "$out/cpu.txt"
