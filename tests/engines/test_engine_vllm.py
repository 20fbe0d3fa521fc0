"""The vllm engine. A real run needs vllm on a CUDA host (it ran on an H200: benchmarks/results/vllm_gpu.md); here
its mapping of every parameter and its batching are checked against FakeVLLM, a stand-in `vllm` module that runs
no model and only records what the engine hands it, plus the missing-vllm error."""
from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import sys
import threading
import time
import types

import pytest

from datafactory.config import GenerationConfig
from datafactory.engines import EngineError, SamplingParams, build_engine, generate_sync
from datafactory.prompts import QA_REGEX

HAS_VLLM = importlib.util.find_spec("vllm") is not None
ASK = [{"role": "user", "content": "Ask a question."}]


class FakeVLLM:
    """A fake `vllm` module (LLM, SamplingParams, sampling_params.StructuredOutputsParams) that records calls."""

    def __init__(self, chat_template: str | None = "{{ messages }}") -> None:
        self.llm_kwargs: dict | None = None
        self.chat_calls: list[tuple[list, list]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class StructuredOutputsParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

            def __eq__(self, other):
                return isinstance(other, StructuredOutputsParams) and other.kwargs == self.kwargs

        class LLM:
            def __init__(self, **kwargs):
                fake.llm_kwargs = kwargs

            def get_tokenizer(self):
                return types.SimpleNamespace(chat_template=chat_template)

            def chat(self, conversations, sampling_params, use_tqdm):
                fake.chat_calls.append((conversations, sampling_params))
                if any("TOO LONG" in c[-1]["content"] for c in conversations):
                    raise ValueError("The decoder prompt is longer than the maximum model length")
                return [types.SimpleNamespace(
                    prompt_token_ids=[1, 2, 3],
                    outputs=[types.SimpleNamespace(text="reply to " + c[-1]["content"], finish_reason="stop",
                                                   token_ids=[7, 8])]) for c in conversations]

        self.module = types.ModuleType("vllm")
        self.module.LLM, self.module.SamplingParams = LLM, SamplingParams
        self.submodule = types.ModuleType("vllm.sampling_params")
        self.submodule.StructuredOutputsParams = StructuredOutputsParams


@pytest.fixture
def fake_vllm(monkeypatch) -> FakeVLLM:
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", fake.submodule)
    return fake


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return tmp_path


def test_every_sampling_parameter_is_mapped(fake_vllm):
    from datafactory.engines.vllm_engine import to_vllm_sampling

    params = SamplingParams(max_new_tokens=77, temperature=0.3, top_p=0.8, seed=5, repetition_penalty=1.3,
                            stop=("</answer>",), guided_regex=QA_REGEX)
    mapped = to_vllm_sampling(fake_vllm.module, params).kwargs
    assert mapped == {"max_tokens": 77, "temperature": 0.3, "top_p": 0.8, "seed": 5, "repetition_penalty": 1.3,
                      "stop": ["</answer>"],
                      "structured_outputs": fake_vllm.submodule.StructuredOutputsParams(regex=QA_REGEX)}
    # a field added to SamplingParams later must change what vLLM gets, or this fails
    base = to_vllm_sampling(fake_vllm.module, SamplingParams()).kwargs
    assert base["structured_outputs"] is None and base["stop"] is None
    for field in dataclasses.fields(SamplingParams):
        changed = dataclasses.replace(SamplingParams(), **{field.name: getattr(params, field.name)})
        assert to_vllm_sampling(fake_vllm.module, changed).kwargs != base, f"{field.name} is not passed to vLLM"


def test_engine_options_from_the_config_reach_llm(fake_vllm, model_dir):
    config = GenerationConfig(engine="vllm", model=str(model_dir), seed=3, max_model_len=32768,
                              gpu_memory_utilization=0.4, tensor_parallel_size=2, dtype="bfloat16",
                              enforce_eager=True, kv_cache_memory_bytes=6 << 30, guided="xml")
    engine = build_engine(config)
    assert fake_vllm.llm_kwargs == {"model": str(model_dir), "seed": 3, "max_model_len": 32768,
                                    "gpu_memory_utilization": 0.4, "tensor_parallel_size": 2, "dtype": "bfloat16",
                                    "enforce_eager": True, "kv_cache_memory_bytes": 6 << 30,
                                    "structured_outputs_config": {"backend": "xgrammar"}}
    engine.close()
    build_engine(GenerationConfig(engine="vllm", model=str(model_dir))).close()
    assert "max_model_len" not in fake_vllm.llm_kwargs  # unset: the model's own length
    assert "kv_cache_memory_bytes" not in fake_vllm.llm_kwargs  # unset: sized from gpu_memory_utilization
    assert fake_vllm.llm_kwargs["dtype"] == "auto" and fake_vllm.llm_kwargs["gpu_memory_utilization"] == 0.9


def test_concurrent_calls_reach_vllm_as_one_batch_in_order(fake_vllm, model_dir):
    engine = build_engine(GenerationConfig(engine="vllm", model=str(model_dir)))
    gate, entered = threading.Event(), threading.Event()
    original_chat = engine.llm.chat

    def held_chat(*args, **kwargs):  # hold the first batch so that the other calls queue up behind it
        entered.set()
        gate.wait(timeout=60)
        return original_chat(*args, **kwargs)

    engine.llm.chat = held_chat

    async def until(happened, what: str) -> None:  # polling on events, a generous deadline: no timing guess
        deadline = time.monotonic() + 60
        while not happened():
            assert time.monotonic() < deadline, f"{what} never happened"
            await asyncio.sleep(0.01)

    async def many():
        first = asyncio.ensure_future(engine.agenerate([[{"role": "user", "content": "q0"}]], SamplingParams()))
        await until(entered.is_set, "the worker taking q0 to vLLM")
        rest = [engine.agenerate([[{"role": "user", "content": f"q{i}"}], [{"role": "user", "content": f"r{i}"}]],
                                 SamplingParams(seed=i)) for i in range(1, 6)]
        pending = asyncio.gather(*rest)
        await until(lambda: engine._queue.qsize() == 5, "the five calls queueing behind q0")
        gate.set()
        return await first, await pending

    first, rest = asyncio.run(many())
    engine.close()
    assert [r.text for r in first] == ["reply to q0"]
    assert [[r.text for r in part] for part in rest] == [[f"reply to q{i}", f"reply to r{i}"] for i in range(1, 6)]
    assert len(fake_vllm.chat_calls) == 2  # q0 alone, then the five queued calls together
    conversations, sampling = fake_vllm.chat_calls[1]
    assert len(conversations) == 10 and [sp.kwargs["seed"] for sp in sampling] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert rest[0][0].usage == {"prompt_tokens": 3, "completion_tokens": 2} and rest[0][0].finish_reason == "stop"


def test_a_refused_prompt_fails_alone(fake_vllm, model_dir):
    engine = build_engine(GenerationConfig(engine="vllm", model=str(model_dir)))
    convs = [[{"role": "user", "content": "fine"}], [{"role": "user", "content": "TOO LONG"}],
             [{"role": "user", "content": "also fine"}]]
    ok, bad, ok2 = generate_sync(engine, convs, SamplingParams())
    engine.close()
    assert (ok.text, ok2.text) == ("reply to fine", "reply to also fine")
    assert bad.text is None and bad.error.startswith("generation_error: ValueError") and "maximum model" in bad.error


def test_model_without_chat_template_is_refused(monkeypatch, model_dir):
    fake = FakeVLLM(chat_template=None)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    with pytest.raises(EngineError, match="no chat template"):
        build_engine(GenerationConfig(engine="vllm", model=str(model_dir)))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed: the missing-vllm message cannot be shown")
def test_without_vllm_says_what_to_do(model_dir):
    with pytest.raises(EngineError, match="needs vllm installed.*--engine openai"):
        build_engine(GenerationConfig(engine="vllm", model=str(model_dir)))


@pytest.mark.skipif(not HAS_VLLM, reason="vllm cannot be installed on these machines (its wheel pins torch 2.11 "
                    "built for CUDA 13; CI has torch 2.13 CPU and no GPU); it ran on an H200 through "
                    "experiments/vllm_gpu (benchmarks/results/vllm_gpu.md)")
@pytest.mark.slow
def test_vllm_engine_generates(embedded_model_dir):
    engine = build_engine(GenerationConfig(engine="vllm", model=str(embedded_model_dir), guided="xml"))
    [plain] = generate_sync(engine, [[{"role": "user", "content": "What is the capital of France?"}]],
                            SamplingParams(max_new_tokens=16, temperature=0.0))
    assert plain.ok and "Paris" in plain.text
    [guided] = generate_sync(engine, [ASK], SamplingParams(max_new_tokens=64, temperature=0.0, guided_regex=QA_REGEX))
    assert guided.ok and guided.text.startswith("<question>")


def test_eval_passes_the_engine_options_to_vllm(fake_vllm, model_dir, tmp_path):
    from evaluation.config import EvalConfig

    config = EvalConfig(engine="vllm", model=str(model_dir), task="factory-qa", data=str(tmp_path),
                        output=str(tmp_path / "out"), max_model_len=32768, gpu_memory_utilization=0.3,
                        enforce_eager=True)
    build_engine(config).close()  # what evaluation.runner builds its engine with
    assert fake_vllm.llm_kwargs["max_model_len"] == 32768 and fake_vllm.llm_kwargs["gpu_memory_utilization"] == 0.3
    assert fake_vllm.llm_kwargs["enforce_eager"] is True
