"""Corpus scale: lazy readers, bounded documents in flight, resume before tokenization, and windowed
tokenization equal to the whole document's on the sample books."""
from __future__ import annotations

import json

import pytest

from datafactory.chunking import backend_of
from datafactory.config import GenerationConfig
from datafactory.documents import Document, DocumentError, iter_documents, sample_corpus_dir
from datafactory.engines.base import EngineResult
from datafactory.instances import build_instance
from datafactory.output import read_jsonl
from datafactory.pipeline import GROUPS_IN_FLIGHT, Tokenizers, load_tokenizers, run_generation
from datafactory.planning import PlanSettings, plan_tokens
from datafactory.testing.fault_server import CANNED_QA


@pytest.fixture(scope="module")
def tokenizers(embedded_model_dir) -> Tokenizers:
    return load_tokenizers(GenerationConfig(model=str(embedded_model_dir)))


def test_jsonl_is_read_line_by_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "first"}) + "\n{broken\n")
    docs = iter_documents([path], GenerationConfig())
    assert next(docs).id == "a"  # the broken second line is not read yet
    with pytest.raises(DocumentError, match="corpus.jsonl:2"):
        next(docs)


def test_parquet_is_read_by_batches(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import longscale.common.records as records

    pq.write_table(pa.table({"id": [f"r{i}" for i in range(200)], "text": ["x" * 50] * 200}),
                   tmp_path / "c.parquet", row_group_size=20)
    monkeypatch.setattr(records, "PARQUET_BATCH_ROWS", 10)  # the one reader (longscale/common/records.py)
    decoded = []
    real = pq.ParquetFile.iter_batches

    def counting(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            decoded.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    docs = iter_documents([tmp_path / "c.parquet"], GenerationConfig())
    first = [next(docs) for _ in range(15)]
    assert [d.id for d in first] == [f"r{i}" for i in range(15)]
    assert sum(decoded) <= 20  # two batches of 10 decoded, not 200 rows
    assert len(list(docs)) == 185


def test_saved_dataset_and_folders_are_lazy(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": [f"doc {i}" for i in range(50)], "id": list(range(50))}).save_to_disk(tmp_path / "ds")
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text("alpha")
    (tmp_path / "books" / "b.txt").write_bytes(b"\xff\xfe not utf-8")
    docs = iter_documents([tmp_path / "ds", tmp_path / "books"], GenerationConfig())
    assert [next(docs).id for _ in range(50)] == [str(i) for i in range(50)]
    assert next(docs).id == "a"  # b.txt is not opened before it is asked for
    with pytest.raises(DocumentError, match="b.txt: not UTF-8"):
        next(docs)


class CountingSource:
    """A document generator that counts how far it has been consumed."""

    def __init__(self, n: int, text: str):
        self.n, self.text, self.yielded = n, text, 0

    def __iter__(self):
        for i in range(self.n):
            self.yielded += 1
            yield Document(f"s{i}", f"Document {i}. " + self.text)


class RecordingEngine:
    """A fake engine (no model exists in this test) answering the canned QA at once; at each call it records
    how many documents the source had yielded and how many groups had completed."""

    name = "recording"
    model_name = "recording-fake"

    def __init__(self, source: CountingSource):
        self.source, self.calls, self.seen = source, 0, []

    async def agenerate(self, conversations, params):
        self.calls += 1
        self.seen.append((self.source.yielded, self.calls))
        return [EngineResult(text=CANNED_QA, finish_reason="stop") for _ in conversations]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("processes", [0, 2])
def test_documents_in_flight_are_bounded(tmp_path, tokenizers, processes):
    text = (sample_corpus_dir() / "persuasion.txt").read_text()[10_000:12_000]
    source = CountingSource(600, text)
    config = GenerationConfig(chunk_tokens=100, chunks_per_doc=1, min_doc_tokens=50, max_context=600,
                              critique="off", concurrency=8, batch_size=8)
    engine = RecordingEngine(source)
    manifest = run_generation(source, config, tmp_path, engine=engine, progress=False, tokenizers=tokenizers,
                              processes=processes)
    assert manifest["counts"]["qa"] == 600 and manifest["this_run"]["documents"] == 600
    group = 8
    # one engine call per slice of batch_size items = one call per group here; before call k, at most
    # k - 1 groups completed, and the reader is at most GROUPS_IN_FLIGHT + 1 groups ahead of call k
    worst_lead = max(yielded - call * group for yielded, call in engine.seen)
    assert worst_lead <= (GROUPS_IN_FLIGHT + 1) * group, engine.seen[:20]
    assert source.yielded == 600


class CountingBackend:
    """A `tokenizers.Tokenizer` wrapper that counts the texts it was asked to encode."""

    truncation = None
    padding = None

    def __init__(self, inner):
        self.inner, self.texts = inner, 0

    def encode_batch(self, texts, **kwargs):
        self.texts += len(texts)
        return self.inner.encode_batch(texts, **kwargs)

    def encode(self, text, **kwargs):
        self.texts += 1
        return self.inner.encode(text, **kwargs)


class CountingTokenizer:
    def __init__(self, tokenizer):
        self.backend_tokenizer = CountingBackend(backend_of(tokenizer))
        self.chat_template = getattr(tokenizer, "chat_template", None)
        self._inner = tokenizer

    def apply_chat_template(self, *args, **kwargs):
        return self._inner.apply_chat_template(*args, **kwargs)


def test_resume_skips_finished_documents_before_tokenizing(tmp_path, tokenizers):
    text = (sample_corpus_dir() / "prideprejudice.txt").read_text()
    docs = [Document(f"pp{i}", text[i * 5_000:(i + 1) * 5_000]) for i in range(1, 13)]
    docs.append(Document("tiny", "Too short to use."))
    config = GenerationConfig(chunk_tokens=200, chunks_per_doc=2, min_doc_tokens=100, max_context=1024,
                              critique="off", concurrency=4, batch_size=4)
    counting = CountingTokenizer(tokenizers.generator)
    counted = Tokenizers(counting, counting)
    first = run_generation(docs, config, tmp_path, engine=RecordingEngine(CountingSource(0, "")), progress=False,
                           tokenizers=counted, processes=0)
    assert first["counts"]["qa"] == 24 and first["this_run"]["too_short"] == 1
    assert counting.backend_tokenizer.texts > 0
    markers = list(read_jsonl(tmp_path / "documents.jsonl"))
    assert {m["doc_id"] for m in markers} == {d.id for d in docs}
    counting.backend_tokenizer.texts = 0
    engine = RecordingEngine(CountingSource(0, ""))
    again = run_generation(iter(docs), config, tmp_path, engine=engine, progress=False, tokenizers=counted,
                           processes=0)
    assert counting.backend_tokenizer.texts == 0 and engine.calls == 0  # nothing tokenized, nothing sent
    assert again["this_run"]["already_done"] == 13 and again["counts"]["qa"] == 24


def _books():
    return [(p.stem, p.read_text()) for p in sorted(sample_corpus_dir().glob("*.txt"))]


@pytest.mark.parametrize("max_context,chunks_per_doc", [(16384, 1), (2048, 2)])
def test_windowed_plan_equals_the_whole_encoding(tokenizers, max_context, chunks_per_doc):
    """On the sample books, the region tokenized around the chosen chunks gives the chunks and instances
    that the whole document's encoding gives, while tokenizing a fraction of each book."""
    backend = backend_of(tokenizers.generator)
    qa = {"id": "q", "doc_id": "d", "question": "Who wrote the letter?", "answer": "Captain Wentworth did."}
    for name, text in _books():
        for seed in range(2):
            settings = PlanSettings(chunk_tokens=1500, chunks_per_doc=chunks_per_doc, seed=seed,
                                    min_doc_tokens=4096, max_context=max_context)
            # words=False: the tokenizer's own encodings (word-level counting is tested in test_df_word_tokens.py)
            windowed = plan_tokens(text, name, backend, backend, settings, words=False)
            whole = plan_tokens(text, name, backend, backend, settings, whole=True, words=False)
            if chunks_per_doc == 1:  # one region spans all chosen chunks: two may lie far apart
                assert windowed.tokenized_chars < len(text) / 2
            assert not windowed.too_short and not whole.too_short
            assert len(windowed.chunks) == chunks_per_doc
            for a, b in zip(windowed.chunks, whole.chunks, strict=True):
                assert (a.index, a.char_span, a.text, a.n_tokens) == (b.index, b.char_span, b.text, b.n_tokens)
                for answer_type in ("normal", "short"):
                    record = {**qa, "answer_type": answer_type}
                    x = build_instance(record, a, windowed.target, max_context, tokenizers.target)
                    y = build_instance(record, b, whole.target, max_context, tokenizers.target)
                    assert x["kept_char_span"] == y["kept_char_span"] and x["messages"] == y["messages"]
                    assert x["approx_tokens"] == y["approx_tokens"] and x["truncated"] and y["truncated"]
                    start, end = x["kept_char_span"]
                    assert start <= a.char_start and a.char_end <= end
