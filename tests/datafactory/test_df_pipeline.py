"""The pipeline: planning, the whole recipe with the real embedded model, resume, and engine faults."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from datafactory.config import GenerationConfig
from datafactory.documents import Document, sample_corpus_dir
from datafactory.engines.base import EngineResult
from datafactory.output import latest_records, read_jsonl
from datafactory.pipeline import Tokenizers, load_tokenizers, plan_document, process_document, record_id, run_generation
from datafactory.prompts import DEMO_CHUNK, NORMAL_PROMPT, SHORT_PROMPT
from longscale.common.instances import parse_instance

KNOWN_REASONS = {None, "empty_output", "no_question", "no_answer", "empty", "truncated", "short_answer_too_long",
                 "copied_demonstration", "answer_repeats_question", "echoed_prompt", "degenerate_question",
                 "critique_rejected", "critique_unparseable", "engine_error", "chunk_exceeds_context", "unparseable"}
QA_FIELDS = {"id", "doc_id", "chunk_index", "chunk_token_span", "answer_type", "question", "answer", "critique",
             "accepted", "reject_reason", "model", "raw"}


@pytest.fixture(scope="module")
def tokenizers(embedded_model_dir) -> Tokenizers:
    return load_tokenizers(GenerationConfig(model=str(embedded_model_dir)))


@pytest.fixture(scope="module")
def book() -> Document:
    text = (sample_corpus_dir() / "persuasion.txt").read_text()
    return Document("persuasion-part", text[40_000:46_000])


def test_plan_document(tokenizers, book):
    config = GenerationConfig(chunk_tokens=200, chunks_per_doc=3, min_doc_tokens=100, prompt_mode="zero-shot")
    items = plan_document(book, config, tokenizers.generator)
    assert len(items) == 3 and len({i.id for i in items}) == 3
    assert [i.id for i in items] == [i.id for i in plan_document(book, config, tokenizers.generator)]
    for item in items:
        assert item.id == record_id(book.id, item.chunk.index, item.answer_type, config.seed)
        assert item.chunk.n_tokens <= 200 and item.chunk.text in book.text
        (message,) = item.messages  # zero-shot: one user turn, the paper's prompt + the chunk in triple quotes
        prompt = NORMAL_PROMPT if item.answer_type == "normal" else SHORT_PROMPT
        assert message["role"] == "user" and message["content"] == f'{prompt}\n\n"""{item.chunk.text}"""'
    demo = plan_document(book, config.model_copy(update={"prompt_mode": "auto"}), tokenizers.generator)
    assert [m["role"] for m in demo[0].messages] == ["user", "assistant", "user"]  # embedded model: auto = demo
    assert DEMO_CHUNK in demo[0].messages[0]["content"]
    assert plan_document(book, config.model_copy(update={"min_doc_tokens": 100_000}), tokenizers.generator) == []


class FaultInjectingEngine:
    """Injects engine faults: every request fails (as an engine reports a dead server), and the call
    numbered `raise_on_call` raises as a broken engine would."""

    name = "fault-injecting"
    model_name = "fault-injecting"

    def __init__(self, raise_on_call: int | None = None):
        self.calls, self.raise_on_call = 0, raise_on_call

    async def agenerate(self, conversations, params):
        self.calls += 1
        if self.calls == self.raise_on_call:
            raise RuntimeError("injected: the engine died")
        return [EngineResult(text=None, error="http_503: injected fault") for _ in conversations]

    def close(self) -> None:
        pass


def _small_docs(n: int) -> list[Document]:
    text = (sample_corpus_dir() / "prideprejudice.txt").read_text()
    return [Document(f"pp-{i}", text[20_000 * (i + 1):20_000 * (i + 1) + 3_000]) for i in range(n)]


def test_engine_errors_are_recorded_and_retried(tmp_path, tokenizers):
    config = GenerationConfig(chunk_tokens=300, chunks_per_doc=1, min_doc_tokens=100, concurrency=1, batch_size=1)
    docs = _small_docs(3)
    manifest = run_generation(docs, config, tmp_path, engine=FaultInjectingEngine(), progress=False,
                              tokenizers=tokenizers)
    assert manifest["status"] == "failed" and manifest["rejection_reasons"] == {"engine_error": 3}
    assert manifest["counts"]["engine_errors"] == 3  # every request failed: the manifest says so
    records = list(read_jsonl(tmp_path / "qa.jsonl"))
    assert all(r["engine_error"] == "http_503: injected fault" and not r["accepted"] for r in records)
    # a re-run tries the failed requests again (and a broken engine keeps what is there, status "failed")
    with pytest.raises(RuntimeError, match="engine died"):
        run_generation(docs, config, tmp_path, engine=FaultInjectingEngine(raise_on_call=2), progress=False,
                       tokenizers=tokenizers)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["counts"]["qa"] == 3
    assert len(latest_records(tmp_path / "qa.jsonl")) == 3
    for fail_on in (1, 3):  # whichever group's call dies, the run stops with the error, never silently
        with pytest.raises(RuntimeError, match="engine died"):
            run_generation(_small_docs(6), config, tmp_path / f"fail{fail_on}", progress=False,
                           engine=FaultInjectingEngine(raise_on_call=fail_on), tokenizers=tokenizers)
        assert json.loads((tmp_path / f"fail{fail_on}" / "manifest.json").read_text())["status"] == "failed"


class PartlyFailingEngine:
    """Injects a fault into the first conversation of every call; the others get a reply (no pair in it)."""

    name = model_name = "partly-failing"

    async def agenerate(self, conversations, params):
        return [EngineResult(text=None, error="http_503: injected fault") if i == 0 else
                EngineResult(text="no pair here", finish_reason="stop") for i in range(len(conversations))]

    def close(self) -> None:
        pass


def test_some_failed_requests_make_a_partial_run(tmp_path, tokenizers):
    config = GenerationConfig(chunk_tokens=300, chunks_per_doc=1, min_doc_tokens=100, batch_size=2, critique="off")
    manifest = run_generation(_small_docs(4), config, tmp_path, engine=PartlyFailingEngine(), progress=False,
                              tokenizers=tokenizers)
    assert manifest["status"] == "partial" and manifest["counts"]["engine_errors"] == 2
    assert manifest["counts"]["qa"] == 4 and manifest["this_run"]["engine_errors"] == 2


@pytest.mark.slow
def test_pipeline_end_to_end_with_the_embedded_model(tmp_path, tokenizers, book, embedded_model_dir):
    """The real transformers engine on one short document: 2 chunks, generation + critique + instances."""
    from datafactory.engines import build_engine

    # greedy decoding with demonstration prompts: deterministic, and it accepts one of the two pairs here
    # (the other is cut off: 'truncated'), so the accepted path is exercised by the real model
    config = GenerationConfig(chunk_tokens=160, chunks_per_doc=2, min_doc_tokens=100, max_new_tokens=128,
                              max_context=1024, batch_size=4, critique="filter", prompt_mode="demonstration",
                              temperature=0.0)
    engine = build_engine(config)
    manifest = run_generation([book], config, tmp_path, engine=engine, progress=False, tokenizers=tokenizers)
    records = list(read_jsonl(tmp_path / "qa.jsonl"))
    assert len(records) == 2 and manifest["counts"]["qa"] == 2
    assert manifest["this_run"]["requests"] >= 2 and manifest["model"] == "SmolLM2-135M-Instruct"
    for record in records:
        assert QA_FIELDS <= set(record)
        assert record["reject_reason"] in KNOWN_REASONS
        assert record["engine_error"] is None and isinstance(record["raw"], str) and record["raw"]
        assert record["accepted"] == (record["reject_reason"] is None)
        if record["critique"] is not None:
            assert record["critique"]["verdict"] in ("yes", "no", None) and record["critique"]["raw"]
        if record["accepted"]:
            assert record["critique"]["verdict"] == "yes" and record["question"] and record["answer"]
    instances = list(read_jsonl(tmp_path / "instances.jsonl"))
    assert {i["id"] for i in instances} == {r["id"] for r in records if r["accepted"]}
    for number, instance in enumerate(instances, 1):  # every accepted pair's instance is a valid contract record
        assert parse_instance(f"instances.jsonl:{number}", instance).to_record() == instance
        start, end = instance["chunk_char_span"]
        assert book.text[start:end] in instance["messages"][0]["content"]
    # the outcome tally accounts for every attempt: accepted + each rejection reason == the chunks attempted
    counts = manifest["counts"]
    assert counts["accepted"] == len(instances) == counts["instances"] >= 1
    assert counts["accepted"] + sum(manifest["rejection_reasons"].values()) == counts["qa"] == len(records) == 2
    assert manifest["rejection_reasons"] == dict(Counter(r["reject_reason"] for r in records if not r["accepted"]))

    # resume: nothing is generated again, nothing is written twice
    again = run_generation([book], config, tmp_path, engine=engine, progress=False, tokenizers=tokenizers)
    assert again["this_run"]["requests"] == 0 and again["this_run"]["already_done"] == 1
    assert [r["id"] for r in read_jsonl(tmp_path / "qa.jsonl")] == [r["id"] for r in records]
    done = frozenset(r["id"] for r in records)
    assert process_document(book, config, engine, tokenizers, skip_ids=done).qa_records == []


def test_every_chunk_of_books_groups_by_their_length():
    """chunks_per_doc=all: a book (hundreds of chunks) fills a group alone, so the next book's requests are in
    flight while one book is written; short documents share a group."""
    from datafactory.pipeline import _groups

    config = GenerationConfig(chunks_per_doc="all", chunk_tokens=512)
    books = [Document(f"b{i}", "x" * 4 * 512 * 300) for i in range(3)]  # ~300 chunks each
    notes = [Document(f"n{i}", "x" * 4 * 512 * 10) for i in range(60)]  # ~10 chunks each
    assert [len(g) for g in _groups(books, 256, config)] == [1, 1, 1]
    assert [len(g) for g in _groups(notes, 256, config)] == [26, 26, 8]
    fixed = GenerationConfig(chunks_per_doc=2, chunk_tokens=512)
    assert [len(g) for g in _groups(notes, 64, fixed)] == [32, 28]
