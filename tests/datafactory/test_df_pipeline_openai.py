"""The pipeline over HTTP against FaultInjectingServer (a fake OpenAI-compatible server that runs no model and
answers canned tags after a delay, or fails on purpose): requests from many documents are in flight together,
and a run after an outage retries exactly the failed requests."""
from __future__ import annotations

import pytest

from datafactory.config import GenerationConfig
from datafactory.documents import Document, sample_corpus_dir
from datafactory.output import latest_records, read_jsonl
from datafactory.pipeline import load_tokenizers, run_generation
from datafactory.testing.fault_server import FaultInjectingServer


@pytest.fixture(scope="module")
def server():
    with FaultInjectingServer(delay_ms=150) as running:
        yield running


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    text = (sample_corpus_dir() / "persuasion.txt").read_text()
    return [Document(f"p{i}", text[i * 4000:(i + 1) * 4000]) for i in range(1, 41)]


def _config(server, **overrides) -> GenerationConfig:
    from datafactory.embedded import ensure_embedded_model

    values = dict(engine="openai", base_url=server.base_url, tokenizer=str(ensure_embedded_model()),
                  min_doc_tokens=100, chunk_tokens=300, chunks_per_doc=1, concurrency=16, max_retries=0,
                  request_timeout=10)
    values.update(overrides)
    return GenerationConfig(**values)


def test_requests_of_many_documents_are_in_flight_together(server, docs, tmp_path):
    server.configure(mode="ok", delay_ms=150)
    config = _config(server)
    manifest = run_generation(docs, config, tmp_path, progress=False, tokenizers=load_tokenizers(config))
    assert manifest["counts"]["qa"] == 40 and manifest["counts"]["accepted"] == 40
    assert manifest["counts"]["instances"] == 40 and manifest["model"] == "fault-injecting-stub"
    stats = server.stats()
    assert stats["chat_requests"] == 80  # a question and a critique per document
    assert stats["max_in_flight"] >= 16  # one document at a time would never exceed 1
    records = list(read_jsonl(tmp_path / "qa.jsonl"))
    assert all(r["prompt_mode"] == "zero-shot" and r["critique"]["verdict"] == "yes" for r in records)
    # output tokens are the server's usage.completion_tokens, summed: the stub reports len(text) // 4 per reply
    from datafactory.testing.fault_server import CANNED_QA, CANNED_VERDICT

    assert manifest["this_run"]["output_tokens"] == 40 * (len(CANNED_QA) // 4 + len(CANNED_VERDICT) // 4)
    assert manifest["this_run"]["output_tokens_per_s"] > 0


def test_outage_then_resume_retries_only_the_failures(server, docs, tmp_path):
    config = _config(server)
    tokenizers = load_tokenizers(config)
    server.configure(mode="http_error", status=503, fail_first=15)
    first = run_generation(docs[:20], config, tmp_path, progress=False, tokenizers=tokenizers)
    failed = first["rejection_reasons"].get("engine_error", 0)
    assert failed >= 10 and first["counts"]["accepted"] == 20 - failed
    server.configure(mode="ok")
    second = run_generation(docs[:20], config, tmp_path, progress=False, tokenizers=tokenizers)
    assert second["this_run"]["qa_new"] == failed  # done pairs were skipped, failed ones generated again
    assert second["counts"]["qa"] == 20 and second["counts"]["accepted"] == 20
    assert len(latest_records(tmp_path / "qa.jsonl")) == 20
    assert len(list(read_jsonl(tmp_path / "instances.jsonl"))) == 20


def test_guided_xml_sends_each_reply_shape_to_vllm(server, docs, tmp_path):
    """--guided xml: the QA requests carry the tag regex and the critique requests the verdict regex, in the
    `structured_outputs` field vLLM documents (the stub reports owned_by "vllm", as vllm serve does)."""
    from datafactory.critique import CRITIQUE_REGEX
    from datafactory.prompts import QA_REGEX

    server.configure(mode="ok", delay_ms=0, owned_by="vllm")
    config = _config(server, guided="xml")
    manifest = run_generation(docs[:4], config, tmp_path, progress=False, tokenizers=load_tokenizers(config))
    bodies = [b["body"] for b in server.stats()["bodies"]]
    qa = [b for b in bodies if "verdict" not in b["messages"][-1]["content"]]
    critique = [b for b in bodies if "verdict" in b["messages"][-1]["content"]]
    assert len(qa) == 4 and all(b["structured_outputs"] == {"regex": QA_REGEX} for b in qa)
    assert len(critique) == 4 and all(b["structured_outputs"] == {"regex": CRITIQUE_REGEX} for b in critique)
    assert manifest["counts"]["qa"] == 4 and manifest["config"]["guided"] == "xml"
