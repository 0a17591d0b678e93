#!/usr/bin/env bash
# The one command the GPU machine runs: posttrain's sft / dpo / GRPO in bf16 and fp32, a resume check,
# an eval run and TRL's sft / dpo / GRPO on a SmolLM2-135M-shaped model (benchmarks/gpu_check.py
# explains what is measured). The repository is there as a copy, not installed: PYTHONPATH=src.
# Wheels the machine lacks (trl, datasets, math-verify, ...: scripts/gpu_wheels.sh fetches them) are
# installed from .whl/ into /tmp/site when .whl/ exists. Everything runs under `timeout 570`.
#
#   bash scripts/gpu_check.sh          # CUDA, results in ${OUT:-runs/gpu_check}
#   bash scripts/gpu_check.sh --cpu    # the tiny CPU version (tests/runtime/test_gpu_check_cpu.py)
# Further arguments go to benchmarks/gpu_check.py.
set -euo pipefail
if [ -z "${GPU_CHECK_UNDER_TIMEOUT:-}" ]; then
  export GPU_CHECK_UNDER_TIMEOUT=1
  exec timeout 570 bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
MODE=(--device cuda)
if [ "${1:-}" = "--cpu" ]; then
  MODE=(--device cpu --tiny)
  shift
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    echo "gpu_check.sh: installing the wheels in .whl/ failed; going on with what is installed" >&2
  fi
fi
# what is left of the 570 s, less 30 s for the report
BUDGET=$((540 - SECONDS))
exec python3 benchmarks/gpu_check.py "${MODE[@]}" --out "${OUT:-runs/gpu_check}" --budget-s "$BUDGET" "$@"
