"""Document loading from every input kind, deterministic ids, and clear errors for user mistakes."""
from __future__ import annotations

import json

import pytest

from datafactory.config import GenerationConfig
from datafactory.documents import (
    DocumentError,
    count_documents,
    documents_from_records,
    load_documents,
    sample_corpus_dir,
    text_id,
)

CONFIG = GenerationConfig()


def test_sample_corpus_ships_three_long_books():
    books = sorted(p.name for p in sample_corpus_dir().glob("*.txt"))
    assert len(books) >= 3
    docs = load_documents(sorted(sample_corpus_dir().glob("*.txt")), CONFIG)
    assert all(len(d.text) > 300_000 for d in docs)


def test_text_directory_and_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("Alpha text.")
    (tmp_path / "sub" / "b.md").write_text("# Beta\n\ntext")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    docs = load_documents([tmp_path], CONFIG)
    assert [d.id for d in docs] == ["a", "sub/b"]
    assert docs[1].text.startswith("# Beta") and docs[1].meta["source"].endswith("b.md")
    assert load_documents([tmp_path / "a.txt"], CONFIG)[0].id == "a"


def test_jsonl_with_custom_fields_and_derived_ids(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"body": "first doc", "key": "k1", "lang": "en"}, {"body": "second doc"}, {"body": "first doc", "key": "k1"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    config = GenerationConfig(text_field="body", id_field="key")
    docs = load_documents([path], config)
    assert [d.id for d in docs] == ["k1", text_id("second doc")]  # the repeated k1 is kept once
    assert docs[0].meta["lang"] == "en"
    assert load_documents([path], config)[1].id == docs[1].id  # deterministic


def test_parquet_and_saved_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    pq.write_table(pa.table({"text": ["one long text", "two"], "id": ["p1", "p2"]}), tmp_path / "d.parquet")
    assert [d.id for d in load_documents([tmp_path / "d.parquet"], CONFIG)] == ["p1", "p2"]
    Dataset.from_dict({"text": ["from a dataset"], "id": [7]}).save_to_disk(tmp_path / "saved")
    docs = load_documents([tmp_path / "saved"], CONFIG)
    assert docs[0].id == "7" and docs[0].text == "from a dataset"


def test_json_array(tmp_path):
    (tmp_path / "docs.json").write_text(json.dumps([{"text": "one", "id": "a"}, {"text": "two"}]))
    assert [d.id for d in load_documents([tmp_path / "docs.json"], CONFIG)] == ["a", text_id("two")]


def test_records_from_the_api():
    docs = documents_from_records([{"text": "inline", "title": "T"}], CONFIG)
    assert docs[0].id == text_id("inline") and docs[0].meta["title"] == "T"


@pytest.mark.parametrize("setup,message", [
    (lambda p: p / "missing.txt", "input not found"),
    (lambda p: (p / "x.jsonl").write_text('{"text": "ok"}\n{broken\n') and p / "x.jsonl", "x.jsonl:2: not valid JSON"),
    (lambda p: (p / "y.jsonl").write_text('{"body": "ok"}\n') and p / "y.jsonl", "no 'text' field"),
    (lambda p: (p / "z.jsonl").write_text('{"text": 5}\n') and p / "z.jsonl", "not text"),
    (lambda p: (p / "w.pdf").write_text("%PDF") and p / "w.pdf", "unsupported input"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no .txt, .md, .jsonl, .json or .parquet files"),
    (lambda p: (p / "bad.parquet").write_text("not parquet") and p / "bad.parquet", "cannot read as Parquet"),
    (lambda p: (p / "latin.txt").write_bytes("caf\xe9".encode("latin-1")) and p / "latin.txt", "not UTF-8"),
])
def test_user_errors_are_clear(tmp_path, setup, message):
    with pytest.raises(DocumentError, match=message):
        load_documents([setup(tmp_path)], CONFIG)


def test_same_id_different_text_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "book.txt").write_text("one")
    (tmp_path / "b" / "book.txt").write_text("two")
    with pytest.raises(DocumentError, match="share the id 'book'"):
        load_documents([tmp_path / "a", tmp_path / "b"], CONFIG)


def test_count_documents_counts_what_is_read(tmp_path):
    """What the API admits by: every kind of input counted as the reader reads it (the API's old count took a
    JSON array on one line for one document and a saved dataset for its files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("Alpha text.")
    (corpus / "sub" / "b.md").write_text("Beta text.")
    (corpus / "ignored.csv").write_text("text\nnot read\n")
    (corpus / "docs.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\r\n{"text": "three"}')
    (corpus / "array.json").write_text(json.dumps([{"text": f"json {i}"} for i in range(4)]))
    pq.write_table(pa.table({"text": [f"parquet {i}" for i in range(3)]}), corpus / "t.parquet")
    assert count_documents([corpus]) == len(load_documents([corpus], CONFIG)) == 12
    Dataset.from_dict({"text": [f"row {i}" for i in range(6)]}).save_to_disk(tmp_path / "saved")
    assert count_documents([tmp_path / "saved"]) == 6
    assert count_documents([corpus / "array.json", tmp_path / "saved"]) == 10
    (tmp_path / "only_csv").mkdir()
    (tmp_path / "only_csv" / "x.csv").write_text("a\n")
    with pytest.raises(DocumentError, match="no .txt, .md, .jsonl, .json or .parquet files"):
        count_documents([tmp_path / "only_csv"])
    with pytest.raises(DocumentError, match="input not found"):
        count_documents([tmp_path / "missing.jsonl"])
