#!/usr/bin/env bash
# The recipe on the GPU machine (Python 3.12, torch 2.11, transformers 5.17, no network), from the repo root.
# One device call carries at most 64 MiB with the working tree (~3 MiB), the GGUF alone is 98 MB, so two calls,
# the second within the 30 s the machine stays warm (it keeps the first call's ignored files). In .device/eval/:
#   gguf.part00, gguf.part01   `split -n 2 -d` of the embedded SmolLM2-135M-Instruct GGUF (47 MiB each)
#   wheels/                    cp312 wheels the image lacks: trl, datasets, dill, multiprocess, gguf, pydantic,
#                              pydantic_core, annotated_types, typing_inspection, and transformers[serving]'s
#                              fastapi, starlette, uvicorn, openai, jiter, distro, sniffio, opentelemetry_api
#   data/squad.json, data/hotpotqa_800.json, data/corpus/*.txt
# "stage" (call 1, carrying gguf.part00, wheels, data/squad.json): installs the wheels into .device/eval/site and
#   checks the imports, that `transformers serve` has its dependencies, and continuous batching on the GPU.
# "run [run.py flags]" (call 2, carrying gguf.part01, data/corpus, data/hotpotqa_800.json): joins and converts
#   the GGUF, runs run.py into $OUT. RECIPE_TIMEOUT (default 570) is the seconds for this whole step: run.py gets
#   what is left as --time-budget and SIGTERM when it is spent (it then stops the server and writes its results).
set -euo pipefail
START=$(date +%s)
D=.device/eval
export PYTHONPATH=$PWD/$D/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
install_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $D/site $D/wheels/*.whl 2>&1 | tail -2
}
case "${1:-run}" in
  stage)
    install_wheels
    python3 -c "
import importlib.metadata as md, torch, transformers, trl, datasets, gguf
print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')
print('image:', ', '.join(f'{n} {md.version(n)}' for n in ('typing_extensions', 'anyio', 'httpx', 'click', 'h11', 'fsspec', 'pyarrow', 'huggingface_hub', 'accelerate', 'aiohttp', 'typer')))"
    python3 -c "import finetune.run, finetune.trainer, evaluation.runner, datafactory.pipeline, datafactory.engines.openai_engine, datafactory.testing.transformers_serve, pretrain.trainer; print('project imports ok')"
    python3 -c "
from transformers.utils.import_utils import is_serve_available
assert is_serve_available(), 'transformers serve lacks pydantic, fastapi, uvicorn or openai'
import fastapi, uvicorn, openai, starlette, pydantic
import transformers.cli.serve
from transformers.cli.serving import chat_completion, completion, response, server, transcription
print('serve imports ok: fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__, 'openai', openai.__version__, 'pydantic', pydantic.__version__)"
    python3 -c "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())" serve --help | grep -E -c "continuous-batching|cb-max-memory-percent" | sed 's/^/serve --help: flags found: /'
    python3 -c "
import time, torch
from transformers import ContinuousBatchingConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
m = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).to(dev).eval()
t = time.time()
out = m.generate_batch(inputs=[[1, 2, 3, 4]] * 4, generation_config=GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=-1, pad_token_id=0), continuous_batching_config=ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64))
assert [len(o.generated_tokens) for o in out.values()] == [8] * 4, out
print(f'continuous batching on {dev} ok ({time.time() - t:.1f}s)')"
    ls -la $D; echo staged ;;
  run)
    shift || true
    if [ ! -d $D/site/trl ]; then
      ls $D/wheels/*.whl > /dev/null 2>&1 || { echo "no $D/site and no $D/wheels: call 1 (stage) must come first, and call 2 within 30 s of it"; exit 3; }
      install_wheels
    fi
    bash experiments/stage_smollm2.sh $D /tmp/models/SmolLM2-135M-Instruct
    OUTDIR=${OUT:-/tmp/out}; mkdir -p $OUTDIR
    LEFT=$(( ${RECIPE_TIMEOUT:-570} - ($(date +%s) - START) ))
    echo "converted in $(( $(date +%s) - START ))s; run.py gets ${LEFT}s"
    timeout -k 20 $LEFT python3 experiments/recipe_e2e/run.py --model /tmp/models/SmolLM2-135M-Instruct \
      --corpus $D/data/corpus --squad $D/data/squad.json --hotpot $D/data/hotpotqa_800.json --out $OUTDIR \
      --time-budget $(( LEFT - 15 )) "$@" 2>&1 | grep --line-buffered -v -E "it/s\]|s/it\]|Loading weights" | tee $OUTDIR/log.txt
    ;;
  *) echo "usage: bash $0 stage | run [run.py flags]"; exit 2 ;;
esac
