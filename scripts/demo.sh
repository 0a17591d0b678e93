#!/usr/bin/env bash
# Set up (if needed) and run the main job: `posttrain demo`. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
posttrain demo "$@"
