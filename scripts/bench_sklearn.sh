#!/usr/bin/env bash
# oodkit's metrics bench and scikit-learn on data of the same shape, back to
# back in one run (the machine is shared: compare within one run).
# scikit-learn goes into a throwaway virtualenv; nothing here is a CI step.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet scikit-learn numpy
cargo bench --bench metrics -- "${1:-bench_metrics}"
"$venv/bin/python" scripts/bench_sklearn.py "${@:2}"
