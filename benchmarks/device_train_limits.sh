#!/usr/bin/env bash
# One device call of benchmarks/bench_train_limits.py on the GPU machine (Python 3.12, torch 2.11, transformers 5.17,
# no trl/datasets/pydantic there, no network). Run from a staged copy of the repo holding:
#   .whl/   cp312 wheels: trl 1.16.0, datasets 5.2.0, dill, multiprocess, pydantic, pydantic_core, annotated_types,
#           typing_inspection (pip download --no-deps, see /work/.library/device/README.md)
#   tok/    the embedded SmolLM2 tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja)
#   hf_baseline.py  a copy of ../shared/tools/hf_baseline.py (part 1b runs it first, in the same call)
# Usage: bash benchmarks/device_train_limits.sh 1b|7b|followup|sib|7b-offload [BUDGET_S]   (writes into $OUT)
#        bash benchmarks/device_train_limits.sh stage DEST   (here: copy the worktree, wheels, tokenizer, baseline)
# A second cuDNN build beside the image's (part cudnn: the same ~1B rows once per build, in one call):
#        bash benchmarks/device_train_limits.sh stage-cudnn DEST [VERSION]   here: the nvidia-cudnn-cu13 wheel without
#             its legacy RNN (adv) and precompiled convolution engines, split into DEST/part-N of 50 MB (+ sha256)
#        bash benchmarks/device_train_limits.sh keep-cudnn DEST N   device calls 1..N, each carrying DEST/part-N
#        bash benchmarks/device_train_limits.sh cudnn [BUDGET_S]   the next call (carrying the stage): assemble, check, unpack, then
#             process 1 on the image's cuDNN (with hf_baseline's 16k/32k rows), process 2 on the carried one
#             (LD_PRELOAD + LD_LIBRARY_PATH; each process records the libcudnn files it mapped)
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
CUDNN_PARTS=/tmp/cudnn_parts CUDNN_DIR=/tmp/cudnn_carried
if [ "$PART" = stage-cudnn ]; then
  DEST=${2:?destination folder}; VERSION=${3:-9.28.1.4}; mkdir -p "$DEST"
  WHEEL_DIR=$(mktemp -d); python3 -m pip download -q --no-deps -d "$WHEEL_DIR" "nvidia-cudnn-cu13==$VERSION"
  WHEEL=$(ls "$WHEEL_DIR"/*.whl)
  zip -q -d "$WHEEL" nvidia/cudnn/lib/libcudnn_adv.so.9 nvidia/cudnn/lib/libcudnn_engines_precompiled.so.9
  (cd "$WHEEL_DIR" && sha256sum "$(basename "$WHEEL")") > "$DEST/sha256"
  split -b 50m -d -a 1 "$WHEEL" "$DEST/part-" && rm -r "$WHEEL_DIR"
  ls -la "$DEST"; exit 0
fi
if [ "$PART" = keep-cudnn ]; then
  mkdir -p $CUDNN_PARTS && cp "${2:?parts folder}/part-${3:?part number}" "$2/sha256" $CUDNN_PARTS/
  echo "kept: $(ls $CUDNN_PARTS | tr '\n' ' ')"; exit 0
fi
if [ "$PART" = cudnn ]; then
  WHEEL_NAME=$(awk '{print $2}' $CUDNN_PARTS/sha256 2>/dev/null) || true
  [ -n "$WHEEL_NAME" ] || { echo "no cuDNN parts in $CUDNN_PARTS: a fresh machine; start again at part 0"; exit 3; }
  cat $CUDNN_PARTS/part-* > /tmp/$WHEEL_NAME && (cd /tmp && sha256sum -c $CUDNN_PARTS/sha256) || exit 3
  mkdir -p $CUDNN_DIR && python3 -m zipfile -e /tmp/$WHEEL_NAME $CUDNN_DIR && ls $CUDNN_DIR/nvidia/cudnn/lib
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
quiet() { grep --line-buffered -v -E "it/s\]|s/it\]|Warning|warnings.warn|USDT|^\s*$"; }
if [ "$PART" = cudnn ]; then
  START=$(date +%s)
  python3 benchmarks/bench_train_limits.py --part cudnn --name cudnn_image --tokenizer tok --out "$OUTDIR" \
    --budget-s $((BUDGET / 2)) $BASE 2>&1 | quiet | tee "$OUTDIR/log_cudnn_image.txt"
  LIB=$CUDNN_DIR/nvidia/cudnn/lib
  LD_PRELOAD=$LIB/libcudnn.so.9 LD_LIBRARY_PATH=$LIB:${LD_LIBRARY_PATH:-} python3 benchmarks/bench_train_limits.py \
    --part cudnn --name cudnn_carried --tokenizer tok --out "$OUTDIR" --budget-s $((BUDGET - ($(date +%s) - START))) \
    2>&1 | quiet | tee "$OUTDIR/log_cudnn_carried.txt"
  exit 0
fi
python3 benchmarks/bench_train_limits.py --part "$PART" --tokenizer tok --out "$OUTDIR" --budget-s "$BUDGET" $BASE 2>&1 \
  | quiet | tee "$OUTDIR/log_$PART.txt"
