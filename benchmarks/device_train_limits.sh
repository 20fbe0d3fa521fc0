#!/usr/bin/env bash
# One device call of benchmarks/bench_train_limits.py on the GPU machine (Python 3.12, torch 2.11, transformers 5.17,
# no trl/datasets/pydantic there, no network). Run from a staged copy of the repo holding:
#   .whl/   cp312 wheels: trl 1.16.0, datasets 5.2.0, dill, multiprocess, pydantic, pydantic_core, annotated_types,
#           typing_inspection (pip download --no-deps, see /work/.library/device/README.md)
#   tok/    the embedded SmolLM2 tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja)
#   hf_baseline.py  a copy of ../shared/tools/hf_baseline.py (part 1b runs it first, in the same call)
# Usage: bash benchmarks/device_train_limits.sh 1b|7b|followup [BUDGET_S]   (writes into $OUT)
#        bash benchmarks/device_train_limits.sh stage DEST   (here: copy the worktree, wheels, tokenizer, baseline)
set -uo pipefail
PART=${1:?part: 1b, 7b or stage}
if [ "$PART" = stage ]; then
  DEST=${2:?destination folder, ignored by git and named in carry}
  mkdir -p "$DEST/.whl" "$DEST/tok"
  git ls-files -co --exclude-standard | grep -v -E "\.(png|gguf)$" | tar -cf - -T - | tar -xf - -C "$DEST"
  cp "${TOKENIZER_DIR:-$HOME/.cache/longscale/models/SmolLM2-135M-Instruct}"/{tokenizer.json,tokenizer_config.json,chat_template.jinja} "$DEST/tok/"
  cp "${BASELINE:-../shared/tools/hf_baseline.py}" "$DEST/hf_baseline.py"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST/.whl" \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.13.4 pydantic_core==2.46.4 \
    annotated-types==0.7.0 typing-inspection==0.4.2
  du -sh "$DEST"
  exit 0
fi
BUDGET=${2:-330}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  2>&1 | tail -2 || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# one process runs many models one after another: expandable segments keep the freed memory usable (7B at 32k)
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
BASE=""; [ "$PART" != 7b ] && BASE="--baseline hf_baseline.py"
python3 benchmarks/bench_train_limits.py --part "$PART" --tokenizer tok --out "$OUTDIR" --budget-s "$BUDGET" $BASE 2>&1 \
  | grep --line-buffered -v -E "it/s\]|s/it\]|Warning|warnings.warn|USDT|^\s*$" | tee "$OUTDIR/log_$PART.txt"
