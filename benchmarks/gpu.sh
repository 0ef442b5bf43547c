#!/usr/bin/env bash
# The DESIGN §4 comparison and the GPU cross-tests against Diffrax, on one GPU, in
# about five minutes. JSON and PNG files go to the folder given as argument.
#
#     bash benchmarks/gpu.sh results/h100
set -euo pipefail
out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true

python benchmarks/forward.py --steps 100 1000 --repeats 10 --out "$out" | tee "$out/forward.txt"
python benchmarks/gradients.py --steps 1000 --repeats 5 --out "$out" | tee "$out/gradients.txt"
python benchmarks/continuous.py --rtols 1e-4 1e-6 --out "$out" | tee "$out/continuous.txt"
python -m adjointkit.cli._main compare --quick --out "$out/compare" | tee "$out/compare.txt"
python -m pytest -m gpu -n 0 -q tests/test_gpu.py | tee "$out/pytest-gpu.txt"
