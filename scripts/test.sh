#!/usr/bin/env bash
# The test suite (CPU only): builds and installs the package with the C++ tests (the C++ kernels, and the CUDA
# kernels compile-only where nvcc exists), runs the linter (ruff, configured in pyproject.toml), the C++ tests
# (ctest, every CPU kernel variant this CPU can run), then pytest. Extra arguments go to pytest. A pytest run that
# collects no tests fails (exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
COGVIDEO_BUILD_TESTS=1 ./scripts/bootstrap.sh
.venv/bin/ruff check .
# the GPU machine's Triton beside the suite's (which is newer: its interpreter runs the CPU suite), in a folder of its
# own; tests/kernels/test_gpu_compile.py compiles the kernels for sm_90 / sm_80 with both
GPU_MACHINE_TRITON_VERSION=3.6.0
export COGVIDEO_GPU_MACHINE_TRITON=".cache/triton-$GPU_MACHINE_TRITON_VERSION"
if [ ! -d "$COGVIDEO_GPU_MACHINE_TRITON/triton-$GPU_MACHINE_TRITON_VERSION.dist-info" ]; then
    rm -rf "$COGVIDEO_GPU_MACHINE_TRITON"
    .venv/bin/python -m pip install -q --no-deps --target "$COGVIDEO_GPU_MACHINE_TRITON" \
        "triton==$GPU_MACHINE_TRITON_VERSION" ||
        echo "test.sh: installing triton $GPU_MACHINE_TRITON_VERSION failed: its compile test skips" >&2
fi
if [ "${COGVIDEO_NO_EXT:-}" = 1 ]; then
    echo "test.sh: COGVIDEO_NO_EXT=1 (no C++ build): ctest skipped" >&2
else
    ctest --test-dir build/cmake --output-on-failure --no-tests=error  # built by the install above
fi
# the playground's browser test needs chromium and chromedriver: installed where this can (root, apt-get), else it skips
if [ ! -x /usr/bin/chromedriver ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { timeout 600 apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium chromium-driver; } \
        >/dev/null 2>&1 || echo "test.sh: installing chromium chromium-driver failed: the playground test skips" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
