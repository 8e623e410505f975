#!/usr/bin/env bash
# The test suite (CPU only): builds and installs the package (the C++ kernels, and the CUDA kernels
# compile-only where nvcc exists), runs the linter (ruff, configured in pyproject.toml), the C++ tests (ctest),
# then pytest. Extra arguments go to pytest. A pytest run that collects no tests fails (exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
.venv/bin/ruff check .
if [ -d build/cmake ]; then
    ctest --test-dir build/cmake --output-on-failure
else
    echo "test.sh: no C++ build tree (COGVIDEO_NO_EXT=1?): ctest skipped" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
