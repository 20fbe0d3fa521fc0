"""The openai engine against a REAL `transformers serve` process serving the embedded model on 127.0.0.1."""
from __future__ import annotations

import pytest

from datafactory.config import GenerationConfig
from datafactory.engines import SamplingParams, build_engine, generate_sync
from datafactory.testing import TransformersServe


@pytest.fixture(scope="module")
def served(embedded_model_dir):
    # one torch thread: on the shared 2-core machine more threads spin against each other
    with TransformersServe(embedded_model_dir, env={"OMP_NUM_THREADS": "1"}) as server:
        yield server


@pytest.mark.slow
def test_openai_engine_against_transformers_serve(served, embedded_model_dir):
    # no --model: the served name comes from GET /v1/models
    engine = build_engine(GenerationConfig(engine="openai", base_url=served.url, concurrency=2, max_retries=1,
                                           request_timeout=120))
    assert engine.model_name == str(embedded_model_dir)
    conversations = [
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}],
    ]
    capital, story = generate_sync(engine, conversations, SamplingParams(max_new_tokens=32, temperature=0.0))
    assert capital.ok and "Paris" in capital.text, capital
    assert capital.finish_reason == "stop" and 0 < capital.usage["completion_tokens"] < 32
    assert story.ok and story.text.strip() and story.finish_reason == "length"
    assert story.usage["completion_tokens"] == 32
    assert engine.stats["attempts"] == 2 and not engine.stats.get("retries")


@pytest.mark.slow
def test_unknown_route_is_a_non_retried_4xx(served):
    engine = build_engine(GenerationConfig(engine="openai", base_url=served.url + "/nope", model="x",
                                           max_retries=3))
    [result] = generate_sync(engine, [[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=4))
    assert result.error.startswith("http_404") and result.attempts == 1
