"""The openai engine's retry, timeout, give-up and concurrency paths against the FaultInjectingServer
(a real HTTP server on 127.0.0.1 that runs no model and fails on purpose)."""
from __future__ import annotations

import asyncio
import time

import pytest

from datafactory.config import GenerationConfig
from datafactory.engines import EngineError, SamplingParams, build_engine, generate_sync
from datafactory.engines.openai_engine import OpenAIEngine, normalize_base_url, parse_retry_after
from datafactory.testing import CANNED_QA, CANNED_VERDICT, FaultInjectingServer

ASK = [{"role": "user", "content": "Ask a question about this chunk."}]
PARAMS = SamplingParams(max_new_tokens=32, seed=11)


@pytest.fixture(scope="module")
def server():
    with FaultInjectingServer() as srv:
        yield srv


@pytest.fixture
def stub(server):
    server.configure()  # every test starts from a healthy server with fresh counters
    return server


def engine_for(server, **kwargs) -> OpenAIEngine:
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("request_timeout", 5.0)
    return OpenAIEngine(server.base_url, **kwargs)


def test_ok_reply_model_lookup_seed_and_api_key(stub):
    engine = engine_for(stub, api_key="sk-test")
    assert engine.model_name == "fault-injecting-stub"  # first id of GET /v1/models
    verdict_prompt = [{"role": "user", "content": "Is the answer right? Reply in <verdict> tags."}]
    qa, verdict = generate_sync(engine, [ASK, verdict_prompt], PARAMS)
    assert (qa.text, qa.finish_reason, qa.attempts) == (CANNED_QA, "stop", 1)
    assert verdict.text == CANNED_VERDICT and verdict.usage["completion_tokens"] > 0
    sent = stub.stats()["bodies"][0]
    assert sent["authorization"] == "Bearer sk-test"
    assert sent["body"]["seed"] == 11 and sent["body"]["max_tokens"] == 32
    assert sent["body"]["model"] == "fault-injecting-stub" and sent["body"]["messages"] in (ASK, verdict_prompt)
    assert "repetition_penalty" not in sent["body"]  # off by default: servers without it must not choke


def test_repetition_penalty_is_sent_as_vllm_extra_parameter(stub):
    from dataclasses import replace

    generate_sync(engine_for(stub), [ASK], replace(PARAMS, repetition_penalty=1.2))
    assert stub.stats()["bodies"][0]["body"]["repetition_penalty"] == 1.2


def test_api_key_from_environment(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    generate_sync(engine_for(stub), [ASK], PARAMS)
    assert stub.stats()["bodies"][0]["authorization"] == "Bearer sk-env"


def test_5xx_retried_then_ok(stub):
    stub.configure(mode="http_error", status=500, fail_first=2)
    engine = engine_for(stub)
    [result] = generate_sync(engine, [ASK], PARAMS)
    assert result.ok and result.attempts == 3 and engine.stats["retries"] == 2
    assert stub.stats()["responses"] == {"500": 2, "200": 1}


def test_gives_up_after_max_retries_with_the_last_error(stub):
    stub.configure(mode="http_error", status=503, fail_first=-1)
    engine = engine_for(stub, max_retries=2)
    results = generate_sync(engine, [ASK, ASK], PARAMS)
    assert all(r.text is None and r.error.startswith("http_503: ") and r.attempts == 3 for r in results)
    assert "injected 503" in results[0].error
    assert stub.stats()["chat_requests"] == 6 and engine.stats["errors:http_503"] == 2


def test_429_honours_retry_after(stub):
    stub.configure(mode="rate_limit", retry_after=0.4, fail_first=1)
    engine = engine_for(stub)
    start = time.monotonic()
    [result] = generate_sync(engine, [ASK], PARAMS)
    assert result.ok and result.attempts == 2
    assert time.monotonic() - start >= 0.4  # back-off alone would sleep at most 0.01 s


def test_other_4xx_is_not_retried(stub):
    stub.configure(mode="http_error", status=400, fail_first=-1)
    [result] = generate_sync(engine_for(stub), [ASK], PARAMS)
    assert result.error.startswith("http_400: ") and result.attempts == 1
    assert stub.stats()["chat_requests"] == 1


def test_hang_past_timeout_is_retried_then_given_up(stub):
    stub.configure(mode="hang", hang_s=10, fail_first=1)
    [result] = generate_sync(engine_for(stub, request_timeout=0.5), [ASK], PARAMS)
    assert result.ok and result.attempts == 2
    stub.configure(mode="hang", hang_s=120, fail_first=-1)
    start = time.monotonic()
    [result] = generate_sync(engine_for(stub, request_timeout=0.3, max_retries=1), [ASK], PARAMS)
    assert result.error == "timeout" and result.attempts == 2
    # the two 120 s hangs were not waited out; the bound is generous so that a loaded CI machine never trips it
    assert time.monotonic() - start < 60


def test_dropped_connection_is_retried_then_given_up(stub):
    stub.configure(mode="drop", fail_first=1)
    [result] = generate_sync(engine_for(stub), [ASK], PARAMS)
    assert result.ok and result.attempts == 2
    stub.configure(mode="drop", fail_first=-1)
    [result] = generate_sync(engine_for(stub, max_retries=1), [ASK], PARAMS)
    assert result.error.startswith("connection_error: ") and result.attempts == 2


def test_malformed_json_is_a_bad_response(stub):
    stub.configure(mode="malformed", fail_first=-1)
    [result] = generate_sync(engine_for(stub, max_retries=1), [ASK], PARAMS)
    assert result.error.startswith("bad_response: ") and result.text is None


def test_dead_server():
    with FaultInjectingServer() as short_lived:
        url = short_lived.base_url
    engine = OpenAIEngine(url, model="m", max_retries=1, backoff_base=0.01)
    [result] = generate_sync(engine, [ASK], PARAMS)
    assert result.error.startswith("connect_error: ") and result.attempts == 2
    with pytest.raises(EngineError, match="could not list the served models"):
        OpenAIEngine(url)


def test_concurrency_is_bounded_and_engine_reusable_across_loops(stub):
    stub.configure(delay_ms=100)
    engine = engine_for(stub, concurrency=8)
    results = generate_sync(engine, [ASK] * 40, PARAMS)
    assert all(r.ok for r in results)
    assert stub.stats()["max_in_flight"] == 8 and engine.max_in_flight == 8
    again = generate_sync(engine, [ASK] * 3, PARAMS)  # a new event loop gets its own session
    assert all(r.ok for r in again)


def test_a_loop_keeps_one_session_open_until_the_loop_or_the_engine_closes(stub):
    """A worker's persistent loop reuses its session (keep-alive connections) across calls; shutting the
    loop down, or engine.close() while it is idle, closes it (no 'Unclosed client session')."""
    engine = engine_for(stub)
    with asyncio.Runner() as runner:
        assert runner.run(engine.agenerate([ASK], PARAMS))[0].ok
        session = engine._pools[runner.get_loop()].session
        assert runner.run(engine.agenerate([ASK] * 2, PARAMS))[1].ok
        assert engine._pools[runner.get_loop()].session is session and not session.closed
    assert session.closed and not engine._pools
    with asyncio.Runner() as runner:
        runner.run(engine.agenerate([ASK], PARAMS))
        session = engine._pools[runner.get_loop()].session
        engine.close()
        assert session.closed and not engine._pools
        assert runner.run(engine.agenerate([ASK], PARAMS))[0].ok  # a later call opens a new one


def test_build_engine_from_config(stub):
    config = GenerationConfig(engine="openai", base_url=stub.url, concurrency=3, max_retries=4,
                              request_timeout=7, model="served-name")
    engine = build_engine(config)
    assert (engine.base_url, engine.model_name, engine.concurrency, engine.max_retries, engine.request_timeout) == (
        stub.base_url, "served-name", 3, 4, 7)


def test_backoff_full_jitter_and_retry_after_floor():
    engine = OpenAIEngine("http://127.0.0.1:9/v1", model="m", backoff_base=0.5, backoff_max=4.0)
    samples = [engine.backoff(3) for _ in range(200)]
    assert all(0 <= s <= 4.0 for s in samples) and max(samples) > 2.0 and min(samples) < 2.0
    assert all(2.5 <= engine.backoff(0, retry_after=2.5) for _ in range(20))
    assert engine.backoff(0, retry_after=100) <= 4.0  # a huge Retry-After is capped


def test_url_and_retry_after_parsing():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    with pytest.raises(EngineError, match="not an http"):
        normalize_base_url("h:8000")
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_guided_regex_is_sent_as_vllm_structured_outputs(stub):
    from dataclasses import replace

    from datafactory.prompts import QA_REGEX

    generate_sync(engine_for(stub), [ASK], replace(PARAMS, guided_regex=QA_REGEX))
    generate_sync(engine_for(stub), [ASK], PARAMS)
    guided, plain = (b["body"] for b in stub.stats()["bodies"])
    assert guided["structured_outputs"] == {"regex": QA_REGEX}  # vLLM's documented request field
    assert "structured_outputs" not in plain  # unguided requests stay plain OpenAI


def test_guided_xml_refuses_a_server_that_is_not_vllm(stub):
    with pytest.raises(EngineError, match="not vLLM .*owned_by longscale-testing.*--guided off"):
        build_engine(GenerationConfig(engine="openai", base_url=stub.base_url, model="m", guided="xml"))
    stub.configure(owned_by="vllm")
    assert build_engine(GenerationConfig(engine="openai", base_url=stub.base_url, model="m", guided="xml"))


def test_guided_xml_is_refused_for_the_transformers_engine():
    with pytest.raises(ValueError, match="transformers engine cannot constrain decoding"):
        GenerationConfig(engine="transformers", guided="xml")
