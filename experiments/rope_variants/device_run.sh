#!/usr/bin/env bash
# Runs on the GPU machine from the repo root. Needs, in the ignored .device/pretrain/ folder:
#   wheels/gguf-*.whl, gguf.part00 + gguf.part01 (the embedded GGUF split in two), corpus/*.txt.
# Step "stage": keep part00 (carried alone: one call's tree is limited to 64 MiB).
# Step "run":   join, convert to a plain HF folder, run the experiment, results to $OUT.
set -euo pipefail
D=.device/pretrain
case "${1:-run}" in
  stage) ls -la $D; echo staged ;;
  run)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site $D/wheels/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1
    bash experiments/stage_smollm2.sh $D /tmp/models/SmolLM2-135M-Instruct
    shift || true
    python3 experiments/rope_variants/run.py --model /tmp/models/SmolLM2-135M-Instruct --corpus $D/corpus \
      --out "${OUT:-/tmp/out}" "$@" 2>&1 | tee "${OUT:-/tmp/out}/log.txt"
    ;;
esac
