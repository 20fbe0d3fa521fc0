#!/usr/bin/env bash
# The recipe on the GPU machine (Python 3.12, torch 2.11.0+cu130, transformers 5.17, no network), through vLLM,
# in chained device calls (a machine goes back 30 s after a call and keeps /tmp and the background jobs until then).
# Run from the folder that holds this repo's code; parts arrive in $PARTS_IN (default .vllm-stage/parts), the
# recipe's own part (wheels trl, datasets, dill, multiprocess, xxhash; squad.json, hotpotqa_800.json, the books;
# made by `pack`) as $RECIPE_PART (default .vllm-stage/recipe-part.tgz), carried with part 0.
#   bash experiments/recipe_e2e/device_run.sh pack DIR           here: DIR/recipe-part.tgz (README says from what)
#   bash experiments/recipe_e2e/device_run.sh receive N          calls 1-6 (N = 0..5), as experiments/vllm_gpu
#   bash experiments/recipe_e2e/device_run.sh start [flags]      call 7: part 6, install, start run.py in the
#                                                                background (RECIPE_BUDGET s), wait WAIT_S, snapshot
#   bash experiments/recipe_e2e/device_run.sh wait S             later calls: wait up to S s more, snapshot
# Each call leaves $OUT/recipe_out.tgz: --out of run.py (results.json, records.jsonl, results.md, PNGs) and the
# jobs' logs, whatever state the run is in.
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$D/../.." && pwd)
VD=$ROOT/experiments/vllm_gpu
RS=/tmp/recipe_stage SITE=/tmp/vllm_site MODEL=/tmp/vllm_models/SmolLM2-135M-Instruct
WORK=/tmp/recipe_work RUN_OUT=/tmp/recipe_out PIDF=/tmp/recipe_run.pid
export PYTHONPATH=$SITE:$ROOT PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

snapshot() {
  OUTDIR=${OUT:-/tmp/recipe_snap}; mkdir -p "$OUTDIR" $RUN_OUT
  (cd $WORK 2>/dev/null && for f in jobs/*/log.txt jobs/*/error.txt jobs/*/result.json jobs/*/partial.json; do
     [ -f "$f" ] && echo "$f"; done) > /tmp/recipe_snap.list || true
  mkdir -p $RUN_OUT/jobs && (cd $WORK && tar -cf - -T /tmp/recipe_snap.list 2>/dev/null | tar -xf - -C $RUN_OUT) || true
  tar -czf "$OUTDIR/recipe_out.tgz" -C $RUN_OUT . && ls -la "$OUTDIR/recipe_out.tgz"
  # a file over 16 MiB does not come back from the device: pieces of 15 MiB (here: cat recipe_out.tgz.* > x.tgz)
  if [ "$(stat -c %s "$OUTDIR/recipe_out.tgz")" -gt 15728640 ]; then
    split -b 15m -d "$OUTDIR/recipe_out.tgz" "$OUTDIR/recipe_out.tgz." && rm "$OUTDIR/recipe_out.tgz" && ls -la "$OUTDIR"
  fi
}
wait_run() {  # up to $1 seconds, printing the run's log as it grows
  local until=$(( $(date +%s) + $1 )) seen=0
  while [ "$(date +%s)" -lt $until ] && [ -f $PIDF ] && kill -0 "$(cat $PIDF)" 2>/dev/null; do
    n=$(wc -l < $RUN_OUT/run_log.txt); [ "$n" -gt "$seen" ] && sed -n "$((seen + 1)),${n}p" $RUN_OUT/run_log.txt; seen=$n
    sleep 5
  done
  n=$(wc -l < $RUN_OUT/run_log.txt); [ "$n" -gt "$seen" ] && sed -n "$((seen + 1)),${n}p" $RUN_OUT/run_log.txt
  kill -0 "$(cat $PIDF)" 2>/dev/null && echo "run.py still running" || echo "run.py has ended"
}
case "${1:-}" in
  pack)
    OUTP=${2:?usage: pack DIR}; mkdir -p "$OUTP"
    [ -d "${RECIPE_IN:-}" ] || { echo "RECIPE_IN=folder with wheels/ and data/ (README: Re-run)"; exit 2; }
    tar -czf "$OUTP/recipe-part.tgz" -C "$RECIPE_IN" wheels data && ls -la "$OUTP/recipe-part.tgz" ;;
  receive)
    bash "$VD/device_run.sh" receive "$2"
    if [ "$2" = 0 ]; then
      mkdir -p $RS && tar -xzf "${RECIPE_PART:-.vllm-stage/recipe-part.tgz}" -C $RS && echo "recipe part kept: $(ls $RS/wheels | wc -l) wheels, $(ls $RS/data/corpus | wc -l) books"
    fi ;;
  start)
    shift
    [ -d $RS/data ] || { echo "no recipe part in $RS: start again with receive 0"; exit 3; }
    bash "$VD/device_run.sh" stage
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE $RS/wheels/*.whl 2>&1 \
      | grep -v "already exists" || true
    python3 -c "import trl, datasets, vllm; print('trl', trl.__version__, 'datasets', datasets.__version__, 'vllm', vllm.__version__)"
    mkdir -p $RUN_OUT $WORK
    : > $RUN_OUT/run_log.txt
    setsid nohup python3 "$D/run.py" --model $MODEL --corpus $RS/data/corpus --squad $RS/data/squad.json \
      --hotpot $RS/data/hotpotqa_800.json --work $WORK --out $RUN_OUT --time-budget "${RECIPE_BUDGET:-1100}" "$@" \
      > $RUN_OUT/run_log.txt 2>&1 < /dev/null &
    echo $! > $PIDF
    echo "run.py started (pid $(cat $PIDF), budget ${RECIPE_BUDGET:-1100} s)"
    wait_run "${WAIT_S:-450}"; snapshot ;;
  wait) wait_run "${2:-540}"; snapshot ;;
  *) echo "usage: bash $0 pack DIR | receive N | start [run.py flags] | wait S"; exit 2 ;;
esac
