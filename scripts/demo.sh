#!/usr/bin/env bash
# The main job on the embedded default model: load the checkpoint (SAT layout) and score a clip.
# Extra arguments go to `python -m cogvideo_engine score` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh >&2
exec .venv/bin/python -m cogvideo_engine score "$@"
