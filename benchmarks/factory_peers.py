"""The peers' side of bench_factory_scale.py `peers`: the same prompts through distilabel or bespokelabs-curator
against the same OpenAI-compatible stub, results written to disk. Runs in the peers' own venv
(/tmp/bench-venv, made by `bench_factory_scale.py setup-peers`), never imports longscale.

    python factory_peers.py distilabel|curator PROMPTS.jsonl OUT_DIR BASE_URL CONCURRENCY
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def run_distilabel(prompts: list[dict], out: Path, base_url: str, concurrency: int) -> int:
    """TextGeneration over OpenAILLM; a batch of `concurrency` rows is sent at once (its agenerate gathers).

    Why its mean in flight stays far below `concurrency` (profiled on 256 requests of a 200 ms stub): its
    AsyncOpenAI client's httpx pool scans every connection for every request and event (httpcore's
    `_assign_requests_to_connections`: ~60% of the CPU, quadratic in the pool size), openai's default limits
    keep 100 idle connections so ~156 are closed and reopened every batch, and a batch waits for its slowest
    request before the next starts. OpenAILLM takes no http client or limits to change that. Tried:
    4 replicas of 64-row batches (StepResources), distilabel's own way to scale a step: its batches still
    went one at a time (at most 64 in flight), so the single step is kept."""
    from distilabel.models.llms import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    with Pipeline(name="bench-factory", cache_dir=str(out / "cache")) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": r["prompt"], "id": r["id"]} for r in prompts],
                                 batch_size=concurrency)
        generate = TextGeneration(llm=OpenAILLM(model="stub", base_url=base_url, api_key="sk-stub", max_retries=0,
                                                generation_kwargs={"max_new_tokens": 384, "temperature": 0.7}),
                                  input_batch_size=concurrency)
        load >> generate
    distiset = pipeline.run(use_cache=False)
    data = distiset["default"]["train"]
    data.to_json(str(out / "qa.jsonl"))
    return len(data)


class _CharEstimate:
    """Stands in for tiktoken's cl100k_base, which curator downloads at start (no network here): curator
    only uses it to estimate tokens for rate limiting. Cheaper than the real encoder, so it flatters
    curator's CPU figure, never longscale's."""

    def encode(self, text: str, **_: object) -> list[int]:
        return [0] * (len(text) // 4)


def run_curator(prompts: list[dict], out: Path, base_url: str, concurrency: int) -> int:
    """curator.LLM on its openai backend, rate limits far above the stub's capacity, cache disabled."""
    from bespokelabs import curator
    from bespokelabs.curator.request_processor.online import openai_online_request_processor as online
    from datasets import Dataset

    online.OpenAIOnlineRequestProcessor.get_token_encoding = lambda self: _CharEstimate()

    class Prompted(curator.LLM):
        def prompt(self, input: dict) -> str:
            return input["prompt"]

    llm = Prompted(model_name="stub", backend="openai",
                      generation_params={"max_tokens": 384, "temperature": 0.7},
                      backend_params={"base_url": base_url, "api_key": "sk-stub", "max_retries": 0,
                                      "max_concurrent_requests": concurrency,
                                      "max_requests_per_minute": 10_000_000, "max_tokens_per_minute": 10**12,
                                      "require_all_responses": False})
    result = llm(Dataset.from_list([{"prompt": r["prompt"], "id": r["id"]} for r in prompts]))
    data = result.dataset if hasattr(result, "dataset") else result
    data.to_json(str(out / "qa.jsonl"))
    return len(data)


def main() -> None:
    system, prompts_path, out_dir, base_url, concurrency = sys.argv[1:6]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = {"distilabel": run_distilabel, "curator": run_curator}[system]
    n = run(rows(prompts_path), out, base_url, int(concurrency))
    print(json.dumps({"system": system, "rows": n}))


if __name__ == "__main__":
    main()
