#!/usr/bin/env bash
# Create .venv (once) and install the engine into it: the CPU torch wheel first, so that resolving the
# package's "torch>=2.6" never pulls a multi-GB CUDA build, then the package itself (editable) with test extras.
# The build knobs of setup.py (COGVIDEO_CUDA, COGVIDEO_CUDA_ARCHS, COGVIDEO_NATIVE, COGVIDEO_BUILD_TESTS,
# COGVIDEO_NO_EXT) pass through from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
pip_install() {  # quiet on success, the whole log on failure
    if ! .venv/bin/pip install --quiet "$@" > .venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        echo "bootstrap: pip install $* failed" >&2
        exit 1
    fi
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    pip_install torch==2.13.0
fi
pip_install -e ".[test]"
.venv/bin/python - <<'EOF'
import torch

import cogvideo_engine

try:
    from cogvideo_engine import _C
    ext = f"_C: CPU kernels {_C.cpu_isa()}, CUDA {'yes' if _C.has_cuda() else 'no'}"
except (ImportError, AttributeError):  # no extension, or one built before cpu_isa existed
    ext = "no compiled extension"
print(f"cogvideo_engine {cogvideo_engine.__version__} ({ext}), torch {torch.__version__}")
EOF
