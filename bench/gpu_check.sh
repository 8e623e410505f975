#!/usr/bin/env bash
# One-shot GPU check for a lent GPU machine: one device command of at most 10 minutes.
#
#   run through the device tool, from the repository root:   bash bench/gpu_check.sh
#   results land in $OUT (the device tool brings them back), else in bench/results/gpu-<date>/
#
# The machine brings its own CUDA torch, Triton, nvcc, cmake and pybind11 and has no network, so nothing is
# downloaded: the package is installed over them without dependencies, and the CUDA extension is built there
# (sm_90a; COGVIDEO_CUDA_ARCHS overrides). Then: the backends report, the C++ tests, every kernel test on the
# GPU (triton and cuda, gpu-marked sweeps included, bf16 included; window and super-resolution local attention),
# the kernel benchmarks in bf16 and fp16, a short generation benchmark (medium model), and the real 7.7 B shapes
# (random weights): one guided stage-1 frame, one stage-2 window and super-resolution of 12 frames.
# Dry run on a CPU machine: GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh (every step that needs no GPU runs).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results/gpu-$(date -u +%Y%m%d)}
mkdir -p "$out"
PY=${PYTHON:-python3}
export COGVIDEO_CUDA_ARCHS=${COGVIDEO_CUDA_ARCHS:-90}
status=0
step() { echo "== $*" | tee -a "$out/steps.txt"; }

step "install (build the extension for sm_${COGVIDEO_CUDA_ARCHS})"
if ! timeout 150 $PY -m pip install --no-deps --no-build-isolation -e . > "$out/build.log" 2>&1; then
    tail -40 "$out/build.log"; echo "build failed"; exit 1
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$out/gpu.csv" 2>&1
$PY -m cogvideo_engine.info | tee "$out/info.txt"

step "ctest"
ctest --test-dir build/cmake --output-on-failure > "$out/ctest.txt" 2>&1 || status=1
tail -3 "$out/ctest.txt"

step "kernel tests on the GPU"
if [ -z "${GPU_CHECK_DRY_RUN:-}" ]; then
    timeout 150 $PY -m pytest -q tests/test_triton_attention.py tests/test_csrc_attention.py tests/test_backends.py \
        tests/test_triton_local_attention.py tests/test_csrc_local_attention.py tests/test_local_backends.py \
        --junitxml="$out/tests.xml" > "$out/tests.txt" 2>&1 || status=1
else  # CPU dry run: the same files, the GPU cases skip
    timeout 240 $PY -m pytest -q tests/test_csrc_attention.py tests/test_backends.py \
        tests/test_csrc_local_attention.py tests/test_local_backends.py --junitxml="$out/tests.xml" > "$out/tests.txt" 2>&1 || status=1
fi
tail -15 "$out/tests.txt"

step "kernel benchmark"
if [ -z "${GPU_CHECK_DRY_RUN:-}" ]; then
    # worst cases of every step add up to under 600 s; FlexAttention compiles per case, so it gets two cases
    timeout 70 $PY bench/run_attention.py --device cuda --dtype bf16 --impl triton --impl cuda --impl sdpa \
        --impl gather --out "$out/attention-bf16.json" > "$out/attention-bf16.txt" 2>&1 || status=1
    timeout 40 $PY bench/run_attention.py --device cuda --dtype bf16 --impl flex --case stage2-prefill-3frames-odd \
        --case stage2-decode-b1-q1 --out "$out/attention-bf16-flex.json" > "$out/attention-flex.txt" 2>&1 || status=1
    timeout 30 $PY bench/run_attention.py --device cuda --dtype fp16 --impl triton --impl cuda --impl sdpa \
        --out "$out/attention-fp16.json" > "$out/attention-fp16.txt" 2>&1 || status=1
    timeout 30 $PY bench/run_local_attention.py --device cuda --dtype bf16 --frames 12 \
        --out "$out/local-attention-bf16.json" > "$out/local-attention.txt" 2>&1 || status=1
    cat "$out/attention-bf16.txt" "$out/attention-flex.txt" "$out/local-attention.txt"
else
    timeout 150 $PY bench/run_attention.py --device cpu --impl cpu --impl sdpa --impl gather \
        --out "$out/attention-cpu.json" > "$out/attention-cpu.txt" 2>&1 || status=1
    timeout 60 $PY bench/run_local_attention.py --device cpu --impl cpu --impl sdpa \
        --out "$out/local-attention-cpu.json" > "$out/local-attention.txt" 2>&1 || status=1
    cat "$out/attention-cpu.txt" "$out/local-attention.txt"
fi
step "generation benchmark"
if [ -z "${GPU_CHECK_DRY_RUN:-}" ]; then
    timeout 40 $PY bench/run_generation.py --model medium --device cuda --sr-frames 0 \
        --out "$out/generation-medium.json" > "$out/generation.txt" 2>&1 || status=1
    # the real 7.7 B shapes (random weights drawn on the GPU): guided stage-1 frame and stage-2 window with the
    # wavefront (CUDA-graph decode steps), then 12 frames of super-resolution
    timeout 75 $PY bench/run_generation.py --model real --device cuda --schedule wavefront --sr-frames 12 \
        --out "$out/generation-real.json" >> "$out/generation.txt" 2>&1 || status=1
else
    timeout 120 $PY bench/run_generation.py --model tiny --device cpu --sr-frames 1 \
        --out "$out/generation-tiny.json" > "$out/generation.txt" 2>&1 || status=1
fi
cat "$out/generation.txt"
echo "gpu check finished with status $status; results in $out"
exit $status
