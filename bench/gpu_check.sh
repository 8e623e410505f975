#!/usr/bin/env bash
# One-shot GPU check for a lent GPU machine, sized for one device command with a global deadline.
#
#   through the device tool, from the repository root:   bash bench/gpu_check.sh
#   CPU dry run (every step in a CPU form):              GPU_CHECK_DRY_RUN=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh
#
# Contract (tests/test_gpu_check.py runs the dry run and holds it to this):
# - it works in a scratch folder and leaves in $OUT (default bench/results/gpu-<date>) exactly three files:
#   summary.json (every step: status, seconds, limit, the headline numbers), steps.log (the step log) and
#   gpu-check.tar.gz (everything: logs, junit files, benchmark JSON rows, the GPU and backend reports);
# - a global deadline (GPU_CHECK_DEADLINE_S, default 300 s, so two tries fit 15 minutes of device time with
#   the machine's start) is checked before each step; a step runs under `timeout -s INT -k 10` for at most its
#   budget or what is left before the deadline (less a reserve for the kill grace and the packing), and is
#   skipped when less than half its budget is left; benchmarks append their JSON rows as they are measured and
#   Python runs unbuffered, so a step stopped by its timeout keeps what it measured (pytest writes its junit on
#   SIGINT);
# - the package is built and installed into the scratch folder (nothing in the machine's Python changes): the
#   CUDA extension for sm_90a (COGVIDEO_CUDA_ARCHS overrides); if that build fails the check goes on
#   Triton-only (pure-Python install) and skips the steps that need the extension;
# - kernel tests run in parallel (pytest-xdist, where installed) within a compile budget: the `compile_heavy`
#   cases (fp32 Triton tl.dot at the real shapes, 30-200 s of compilation each) are deselected; every
#   gpu-marked test runs (kernels, torch.compile, CUDA graphs, CUDA-graph decode, offload).
# Knobs: GPU_CHECK_ONLY=step,step (a second try for what the first did not reach), GPU_CHECK_INSTALL=0 (use the
# installed package), GPU_CHECK_SIMULATE_BUILD_FAILURE=1 (exercise the Triton-only path), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY_RUN:-}
DEADLINE=${GPU_CHECK_DEADLINE_S:-300}
RESERVE=15      # the kill grace of the step in flight (10 s) and the packing
MIN_STEP=5      # a step is skipped with less than this, or less than half its budget, left
ONLY=${GPU_CHECK_ONLY:-}
out=${OUT:-bench/results/gpu-$(date -u +%Y%m%d)}
mkdir -p "$out"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
results="$scratch/results"
mkdir -p "$results"
trap 'rm -rf "$scratch"' EXIT
[ -z "$DRY" ] && export COGVIDEO_CUDA_ARCHS=${COGVIDEO_CUDA_ARCHS:-90}
MODE=full
SECONDS=0

log() { echo "$*" | tee -a "$results/steps.log"; }
record() {  # record NAME STATUS RC START_S SECONDS LIMIT_S REASON
    printf '{"name": "%s", "status": "%s", "rc": %s, "start_s": %s, "seconds": %s, "limit_s": %s, "reason": "%s"}\n' \
        "$1" "$2" "$3" "$4" "$5" "$6" "$7" >> "$results/steps.jsonl"
}

# step NAME BUDGET_S [needs-ext] -- COMMAND...   (output in $results/NAME.txt; returns the command's exit
# status, or 3 when the step is skipped)
step() {
    local name=$1 budget=$2 needs_ext=0
    shift 2
    if [ "$1" = needs-ext ]; then needs_ext=1; shift; fi
    [ "$1" = -- ] && shift
    local now=$SECONDS
    if [ -n "$ONLY" ] && [[ ",$ONLY,build,build-triton-only,gpu,info," != *",$name,"* ]]; then
        record "$name" skipped null "$now" 0 0 "not in GPU_CHECK_ONLY"; return 3
    fi
    if [ $needs_ext = 1 ] && [ "$MODE" != full ]; then
        log "== [t=${now}s] $name skipped: needs the compiled extension ($MODE)"
        record "$name" skipped null "$now" 0 0 "needs the compiled extension ($MODE)"; return 3
    fi
    local left=$(( DEADLINE - RESERVE - now ))
    if [ $left -lt $MIN_STEP ] || [ $(( 2 * left )) -lt "$budget" ]; then
        log "== [t=${now}s] $name skipped: deadline (${left} s left of ${DEADLINE} s)"
        record "$name" skipped null "$now" 0 0 "deadline"; return 3
    fi
    local limit=$(( budget < left ? budget : left ))
    log "== [t=${now}s] $name (limit ${limit} s): $*"
    local t0=$EPOCHREALTIME rc
    timeout -s INT -k 10 "$limit" "$@" > "$results/$name.txt" 2>&1
    rc=$?
    local took
    took=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    local status=ok
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; elif [ $rc -ne 0 ]; then status=failed; fi
    tail -n 6 "$results/$name.txt" | sed 's/^/    /' | tee -a "$results/steps.log"
    log "   -> $status (rc $rc, ${took} s)"
    record "$name" "$status" "$rc" "$now" "$took" "$limit" ""
    return $rc
}

pytest_parallel() {  # pytest-xdist workers for the kernel tests: half the cores, at most 8, where installed
    local n=$(( $(nproc) / 2 ))
    [ $n -gt 8 ] && n=8
    if [ $n -ge 2 ] && $PY -c "import xdist" 2> /dev/null; then echo "-n $n"; fi
}

# the pytest steps: inductor compiles in the test process (its pool of compile workers kept pytest-xdist workers
# from exiting, each waiting 300 s on the pool: the first GPU run lost its test summary to the step's timeout), and
# each failure's report is written as it arrives (tests/conftest.py), so a timeout keeps what failed and why
pytest_env() { echo "TORCHINDUCTOR_COMPILE_THREADS=1 COGVIDEO_FAILURE_LOG=$results/$1-failures.txt"; }

KERNEL_TESTS="tests/kernels/test_triton_attention.py tests/kernels/test_csrc_attention.py
    tests/kernels/test_backends.py tests/kernels/test_triton_local_attention.py
    tests/kernels/test_csrc_local_attention.py tests/kernels/test_local_backends.py
    tests/kernels/test_window_checks.py"
ENGINE_GPU_TESTS="tests/generation/test_passes.py tests/generation/test_runner.py tests/test_api.py"

log "gpu check: deadline ${DEADLINE} s, out $out, scratch $scratch${DRY:+, CPU dry run}"
if [ -z "$DRY" ]; then
    step gpu 15 -- nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv
else
    step gpu 15 -- bash -c "lscpu | head -20"
fi

# build and install into the scratch folder; on failure, Triton-only
site="$scratch/site"
if [ "${GPU_CHECK_INSTALL:-1}" = 0 ]; then
    record build skipped null "$SECONDS" 0 0 "GPU_CHECK_INSTALL=0: the installed package"
elif [ -n "${GPU_CHECK_SIMULATE_BUILD_FAILURE:-}" ] && step build 10 -- false; then
    :
elif [ -z "${GPU_CHECK_SIMULATE_BUILD_FAILURE:-}" ] && \
        step build 150 -- env COGVIDEO_BUILD_TESTS=1 "$PY" -m pip install --no-deps --no-build-isolation --no-index \
            --target "$site" .; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
    MODE=triton-only
    rm -rf "$site"
    if step build-triton-only 30 -- env COGVIDEO_NO_EXT=1 "$PY" -m pip install --no-deps --no-build-isolation \
            --no-index --target "$site" .; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        MODE=none
    fi
fi
step info 20 -- "$PY" -m cogvideo_engine.info
# the C++ tests of the extension's build tree, built with it (a tree configured without them, as with
# GPU_CHECK_INSTALL=0 after a plain install, is reconfigured with COGVIDEO_BUILD_TESTS=ON and they are built here)
step ctest 20 needs-ext -- bash -c 'set -e
    if ! grep -q "^COGVIDEO_BUILD_TESTS:BOOL=ON" build/cmake/CMakeCache.txt; then
        cmake -DCOGVIDEO_BUILD_TESTS=ON -Dpybind11_DIR="$("$0" -c "import pybind11; print(pybind11.get_cmake_dir())")" \
            build/cmake > /dev/null
        cmake --build build/cmake --target cogvideo_tests
    fi
    ctest --test-dir build/cmake --output-on-failure --no-tests=error' "$PY"

if [ -z "$DRY" ]; then
    # shellcheck disable=SC2046,SC2086
    step kernel-tests 120 -- env $(pytest_env kernel-tests) "$PY" -m pytest -v -p no:cacheprovider $(pytest_parallel) \
        -m "not compile_heavy" $KERNEL_TESTS --junitxml="$results/kernel-tests.xml"
    # shellcheck disable=SC2046,SC2086
    step engine-gpu-tests 120 -- env $(pytest_env engine-gpu-tests) \
        "$PY" -m pytest -v -p no:cacheprovider -m gpu $ENGINE_GPU_TESTS --junitxml="$results/engine-gpu-tests.xml"
    # the real 7.7 B shapes (random weights drawn on the GPU): guided stage-1 frame and stage-2 window on the
    # wavefront (CUDA-graph decode steps), then 12 frames of super-resolution
    step generation-real 60 -- "$PY" bench/run_generation.py --model real --device cuda --schedule wavefront \
        --sr-frames 12 --out "$results/generation-real.json"
    # where the real-shape decode step's time goes: every kernel of a CUDA-graph step, its launches and device time
    step profile-real 45 -- "$PY" bench/run_step_profile.py --model real --device cuda --rows 1 --steps 10 \
        --out "$results/step-profile-real.json"
    if [ "$MODE" = full ]; then IMPLS="--impl triton --impl triton-ranged --impl cuda --impl sdpa --impl gather"
    else IMPLS="--impl triton --impl triton-ranged --impl sdpa --impl gather"; fi
    # shellcheck disable=SC2086
    step bench-window 40 -- "$PY" bench/run_attention.py --device cuda --dtype bf16 $IMPLS \
        --out "$results/attention-bf16.json"
    step bench-local 45 -- "$PY" bench/run_local_attention.py --device cuda --dtype bf16 --frames 12 \
        --out "$results/local-attention-bf16.json"
    step generation-medium 30 -- "$PY" bench/run_generation.py --model medium --device cuda --sr-frames 0 \
        --out "$results/generation-medium.json"
    # shellcheck disable=SC2086
    step bench-window-fp16 40 -- "$PY" bench/run_attention.py --device cuda --dtype fp16 ${IMPLS/--impl gather/} \
        --out "$results/attention-fp16.json"
    step bench-flex 45 -- "$PY" bench/run_attention.py --device cuda --dtype bf16 --impl flex \
        --case stage2-prefill-3frames-odd --case stage2-decode-b1-q1 --out "$results/attention-bf16-flex.json"
    # serving: two medium-shape stage-1 requests one at a time, then together through the AsyncEngine
    step serving-medium 45 -- "$PY" bench/run_serving.py --model medium --device cuda --n 2 --arrival together \
        --only-first-stage --no-plot --out "$results/serving-medium.json"
else  # the same steps in a CPU form with smaller budgets: the kernel tests' CPU cases, small benchmarks,
      # the tiny model
    # shellcheck disable=SC2046
    step kernel-tests 20 -- env $(pytest_env kernel-tests) "$PY" -m pytest -q -p no:cacheprovider \
        -m "not compile_heavy" tests/kernels/test_csrc_attention.py tests/kernels/test_local_backends.py --junitxml="$results/kernel-tests.xml"
    # shellcheck disable=SC2046,SC2086
    step engine-gpu-tests 20 -- env $(pytest_env engine-gpu-tests) "$PY" -m pytest -q -p no:cacheprovider -m gpu \
        $ENGINE_GPU_TESTS --junitxml="$results/engine-gpu-tests.xml"
    step generation-real 60 -- "$PY" bench/run_generation.py --model tiny --device cpu --skip-passes \
        --sr-frames 1 --out "$results/generation-tiny-sr.json"
    step profile-real 20 -- "$PY" bench/run_step_profile.py --model tiny --device cpu --steps 3 \
        --out "$results/step-profile-tiny.json"
    step bench-window 15 needs-ext -- "$PY" bench/run_attention.py --device cpu --impl cpu --impl sdpa \
        --case stage2-decode-b1-q1 --case stage1-decode-b8-q1 --reps 2 --out "$results/attention-cpu.json"
    step bench-local 15 needs-ext -- "$PY" bench/run_local_attention.py --device cpu --impl cpu --reps 1 \
        --out "$results/local-attention-cpu.json"
    step generation-medium 30 -- "$PY" bench/run_generation.py --model tiny --device cpu --sr-frames 0 \
        --schedule wavefront --out "$results/generation-tiny.json"
fi

# pack: the archive of everything, the summary, the step log (logs over 2 MB keep their last 2 MB)
log "== [t=${SECONDS}s] pack ($MODE)"
find "$results" -name '*.txt' -size +2M -exec sh -c 'tail -c 2000000 "$1" > "$1.tail" && mv "$1.tail" "$1"' _ {} \;
dry_json=false; [ -n "$DRY" ] && dry_json=true
echo "{\"mode\": \"$MODE\", \"deadline_s\": $DEADLINE, \"dry_run\": $dry_json}" > "$results/run.json"
if ! timeout 20 "$PY" bench/gpu_check_summary.py "$results" > "$out/summary.json" 2> "$results/summary.err"; then
    { echo '{"error": "gpu_check_summary.py failed; the step records follow", "steps": ['
      paste -sd, "$results/steps.jsonl"; echo ']}'; } > "$out/summary.json"
fi
cp "$results/steps.log" "$out/steps.log"
tar -czf "$out/gpu-check.tar.gz" -C "$scratch" results
cat "$results/summary.err" 2> /dev/null
echo "gpu check finished in ${SECONDS} s (mode $MODE); results in $out"
grep -q '"status": "failed"\|"status": "timeout"' "$results/steps.jsonl" && exit 1
exit 0
