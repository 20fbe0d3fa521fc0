"""The vllm engine: a real run needs vllm on a CUDA host; here only its missing-vllm error is testable."""
from __future__ import annotations

import importlib.util

import pytest

from datafactory.config import GenerationConfig
from datafactory.engines import EngineError, SamplingParams, build_engine, generate_sync

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed: the missing-vllm message cannot be shown")
def test_without_vllm_says_what_to_do(embedded_model_dir):
    with pytest.raises(EngineError, match="needs vllm installed.*--engine openai"):
        build_engine(GenerationConfig(engine="vllm", model=str(embedded_model_dir)))


@pytest.mark.skipif(not HAS_VLLM, reason="vllm cannot be installed on these machines (its wheel pins another "
                    "torch and needs CUDA); the openai engine against a served model covers the protocol path")
@pytest.mark.slow
def test_vllm_engine_generates(embedded_model_dir):
    engine = build_engine(GenerationConfig(engine="vllm", model=str(embedded_model_dir)))
    [result] = generate_sync(engine, [[{"role": "user", "content": "What is the capital of France?"}]],
                             SamplingParams(max_new_tokens=16, temperature=0.0))
    assert result.ok and "Paris" in result.text
