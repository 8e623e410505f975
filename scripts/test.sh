#!/usr/bin/env bash
# The test suite (CPU only): builds and installs the package with the C++ tests (the C++ kernels, and the CUDA
# kernels compile-only where nvcc exists), runs the linter (ruff, configured in pyproject.toml), the C++ tests
# (ctest, every CPU kernel variant this CPU can run), then pytest. Extra arguments go to pytest. A pytest run that
# collects no tests fails (exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
COGVIDEO_BUILD_TESTS=1 ./scripts/bootstrap.sh
.venv/bin/ruff check .
if [ "${COGVIDEO_NO_EXT:-}" = 1 ]; then
    echo "test.sh: COGVIDEO_NO_EXT=1 (no C++ build): ctest skipped" >&2
else
    ctest --test-dir build/cmake --output-on-failure --no-tests=error  # built by the install above
fi
exec .venv/bin/python -m pytest -q "$@"
