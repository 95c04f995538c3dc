#!/usr/bin/env bash
# The fast-path figures on random weights of the real architectures (bench/bench_gpu.py), in one
# prepared run of at most 8 minutes. Installs nothing: it needs Python with a CUDA torch, and the
# project's dependencies (diffusers, transformers, aiohttp, pydantic); the project's code is this
# checkout's (first on the path, whatever else is installed).
#   bench/gpu.sh [--skip-compile] [--steps 30] ...        # the figures (CUDA)
#   LATENTBRIDGE_BENCH_REDUCED=1 bench/gpu.sh             # any device: checks the script end to end
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD/backend${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_DISABLE_PROGRESS_BARS=1
"$PYTHON" -c "import torch, diffusers, transformers, aiohttp, pydantic" || {
  echo "bench/gpu.sh: needs torch, diffusers, transformers, aiohttp and pydantic in $PYTHON (pip install -e . first)" >&2
  exit 2
}
export PYTHONUNBUFFERED=1
exec timeout --signal=INT --kill-after=20 "${LATENTBRIDGE_BENCH_TIMEOUT_S:-480}" "$PYTHON" bench/bench_gpu.py "$@"
