#!/usr/bin/env bash
# The recipe on the GPU machine, from the repo root. Needs in the ignored .device/eval/:
#   gguf.part00 + gguf.part01 (the embedded GGUF, `split -n 2 -d`), wheels/ (gguf, trl, datasets, dill,
#   multiprocess, pydantic* for Python 3.12), data/squad.json, data/hotpotqa_800.json, data/corpus/*.txt.
# "stage" (call 1, carrying part00, wheels, squad.json): installs the wheels into .device/eval/site.
# "run"   (call 2 within 30 s, carrying part01, corpus, hotpot): joins, converts, runs run.py into $OUT.
set -euo pipefail
D=.device/eval
export PYTHONPATH=$PWD/$D/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
case "${1:-run}" in
  stage)
    python3 -m pip install -q --no-index --no-deps --target $D/site $D/wheels/*.whl 2>&1 | tail -2
    python3 -c "import torch, transformers, trl, datasets, gguf; print(torch.__version__, transformers.__version__, trl.__version__, datasets.__version__, torch.cuda.get_device_name(0))"
    python3 -c "import finetune.run, finetune.trainer, pretrain.evaluation.runner, datafactory.pipeline, pretrain.trainer; print('imports ok')"
    ls -la $D; echo staged ;;
  run)
    [ -d $D/site/trl ] || python3 -m pip install -q --no-index --no-deps --target $D/site $D/wheels/*.whl
    bash experiments/stage_smollm2.sh $D /tmp/models/SmolLM2-135M-Instruct
    shift || true
    OUTDIR=${OUT:-/tmp/out}; mkdir -p $OUTDIR
    timeout ${RECIPE_TIMEOUT:-540} python3 experiments/recipe_e2e/run.py --model /tmp/models/SmolLM2-135M-Instruct \
      --corpus $D/data/corpus --squad $D/data/squad.json --hotpot $D/data/hotpotqa_800.json --out $OUTDIR "$@" \
      2>&1 | grep -v -E "it/s\]|s/it\]|Loading weights" | tee $OUTDIR/log.txt
    ;;
esac
