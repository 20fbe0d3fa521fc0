"""parquet_out.write_parquet: the direct path (first batch's stable schema) writes the same file as the spilling
path whenever the schema holds, and falls back to it (a second pass) when a later batch changes it."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from datafactory import parquet_out
from datafactory.parquet_out import text_size, write_parquet, write_parquet_spilled


def _records(n: int, late: dict | None = None, at: int = -1) -> list[dict]:
    rows = [{"id": f"r{i}", "doc_id": f"d{i // 3}", "accepted": i % 2 == 0, "critique": None,
             "engine_error": None, "extraction_notes": [], "chunk_token_span": None, "question": f"q{i}",
             "messages": [{"role": "user", "content": "x" * (i % 7)}]} for i in range(n)]
    if late is not None:
        rows[at] = {**rows[at], **late}
    return rows


CASES = {
    "stable": _records(23),
    # a field null so far gets a type in a later batch: the stable schema already had it (string)
    "late string": _records(23, {"engine_error": "HTTP 503"}, at=20),
    # a later batch's struct and list types that the stable schema guessed for them
    "late critique": _records(23, {"critique": {"verdict": "yes", "reason": "r", "raw": "x"},
                                   "extraction_notes": ["a note"]}, at=21),
    # a field that appears only later, and a type the guess did not have: the schema changes
    "late field": _records(23, {"new_field": 3}, at=20),  # first row of a batch
    "mid-batch field": _records(23, {"new_field": 3}, at=22),  # not the first row: from_pylist alone drops it
    "late int span": _records(23, {"chunk_token_span": [1, 2]}, at=19),
    "empty": [],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_direct_parquet_equals_the_spilled_file(tmp_path, monkeypatch, name):
    monkeypatch.setattr(parquet_out, "PARQUET_BATCH", 5)  # several batches
    rows = CASES[name]
    passes = []

    def records():
        passes.append(1)
        return iter(rows)

    write_parquet(records, tmp_path / "direct.parquet")
    write_parquet_spilled(iter(rows), tmp_path / "spilled.parquet")
    direct, spilled = (pq.read_table(tmp_path / f"{k}.parquet") for k in ("direct", "spilled"))
    assert direct.schema.equals(spilled.schema)
    assert direct.to_pylist() == spilled.to_pylist()
    assert (tmp_path / "direct.parquet").read_bytes() == (tmp_path / "spilled.parquet").read_bytes()
    changes = name in ("late field", "mid-batch field", "late int span")
    if "field" in name:
        assert [r["new_field"] for r in direct.to_pylist() if r["new_field"] is not None] == [3]
    assert len(passes) == (2 if changes else 1)  # a second pass only when the schema changed
    assert not list(tmp_path.glob("*.tmp"))


def test_finalize_counts_once_when_parquet_falls_back(tmp_path, monkeypatch):
    """The fallback's second pass over the records does not count them twice in the manifest."""
    from datafactory.output import OutputWriter
    from tests.instance_records import qa_record

    monkeypatch.setattr(parquet_out, "PARQUET_BATCH", 2)
    writer = OutputWriter(tmp_path)
    # the first batch's token spans are unknown (null), later ones are lists: the schema changes after batch 1
    records = [qa_record(f"q{i}", doc_id=f"d{i}", chunk_token_span=None if i < 2 else [0, 10]) for i in range(4)]
    records.append(qa_record("q4", doc_id="d4", reject_reason="engine_error", engine_error="boom"))
    writer.append(records)
    calls = []
    real = parquet_out.write_parquet_spilled
    monkeypatch.setattr(parquet_out, "write_parquet_spilled", lambda recs, path: (calls.append(path), real(recs, path)))
    manifest = writer.finalize({}, "m")
    assert calls == [tmp_path / "qa.parquet"]  # the qa file took the second pass
    assert manifest["counts"]["qa"] == 5 and manifest["counts"]["documents"] == 5
    assert manifest["counts"]["accepted"] == 4
    assert manifest["counts"]["engine_errors"] == 1
    assert pq.read_table(tmp_path / "qa.parquet").num_rows == 5


def test_text_size_counts_nested_strings():
    class Name(str):
        pass

    record = {"a": "abc", "b": [{"c": "de", "d": 1}, "f", None], "e": 2.5, "g": Name("xy"), "h": True}
    # 3 + (2 + 8) + 1 + 8 + 8 + 2 + 8
    assert text_size(record) == 40
    assert text_size([Name("abcd"), {"x": Name("yz")}]) == 6


def test_preload_imports_the_parquet_writer():
    """In a fresh interpreter (pyarrow not imported yet), the preload thread imports pyarrow.parquet."""
    import subprocess
    import sys

    code = ("import sys\nfrom datafactory.output import preload_parquet_writer\n"
            "assert 'pyarrow.parquet' not in sys.modules\npreload_parquet_writer().join()\n"
            "print('pyarrow.parquet' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
