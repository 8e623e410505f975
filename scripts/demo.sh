#!/usr/bin/env bash
# The main job on the embedded default model (tiny, RANDOM weights, real geometry): text -> stage 1 ->
# stage 2 -> VQ decode -> output/demo.gif (33 frames, 8 fps) + its tokens, then the latency report.
# Extra arguments go to `python -m cogvideo_engine generate` (see --help), e.g. --model-root /path/to/cogvideo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh >&2
exec .venv/bin/python -m cogvideo_engine generate "a cat plays the piano" --output output/demo.gif "$@"
