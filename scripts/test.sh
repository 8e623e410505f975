#!/usr/bin/env bash
# The test suite (CPU only). Extra arguments go to pytest. A run that collects no tests fails (exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
