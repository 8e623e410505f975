#!/usr/bin/env bash
# One-shot GPU check, for a lent GPU machine (one 10-minute device command):
#   bash bench/gpu_check.sh            results land in $OUT (or bench/results/gpu-<date>/)
# Installs the package over the machine's own torch/triton (no deps pulled), prints the backends, runs the
# gpu-marked tests and the kernel tests on real Triton, then the attention benchmark (bf16 and fp16).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results/gpu-$(date -u +%Y%m%d)}
mkdir -p "$out"
PY=${PYTHON:-python3}
export COGVIDEO_NO_EXT=${COGVIDEO_NO_EXT:-1}
$PY -m pip install --quiet --no-deps --no-build-isolation -e . > "$out/pip.log" 2>&1 || { cat "$out/pip.log"; exit 1; }
$PY -m pip install --quiet safetensors pytest pytest-benchmark >> "$out/pip.log" 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$out/gpu.csv" 2>&1
$PY -m cogvideo_engine.info | tee "$out/info.txt"
status=0
timeout 300 $PY -m pytest -q tests/test_triton_attention.py tests/test_backends.py tests/test_model.py \
    --junitxml="$out/tests.xml" 2>&1 | tail -20 | tee "$out/tests.txt" || status=1
timeout 150 $PY bench/run_attention.py --device cuda --dtype bf16 --out "$out/attention-bf16.json" \
    2>&1 | tail -45 | tee "$out/attention-bf16.txt" || status=1
timeout 90 $PY bench/run_attention.py --device cuda --dtype fp16 --impl triton --impl sdpa \
    --out "$out/attention-fp16.json" 2>&1 | tail -30 | tee "$out/attention-fp16.txt" || status=1
echo "gpu check finished with status $status; results in $out"
exit $status
