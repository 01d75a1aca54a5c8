#!/usr/bin/env bash
# The vocabulary engine's benchmark table on one CUDA GPU, in a few minutes: the same script as on the CPU,
# with sizes for a GPU, writing its own section (engine_cuda) of benchmarks/RESULTS.md. Needs the two demo
# models converted once (`.venv/bin/hf-coop demo` does it) and a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'"
exec "$PYTHON" -m benchmarks.bench_engine --device cuda --batches 1 8 32 --new-bytes 64 --prompt-tokens 512 \
  --score-bytes 5000 --alone-passages 4 --section engine_cuda
