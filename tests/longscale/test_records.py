"""The one records reader (longscale/common/records.py), which documents, finetune, evaluation and pretrain use:
lazy on every format, and errors that name the file and line or row; `count_records` counts what it reads,
in the memory of a block and a record."""
from __future__ import annotations

import json

import pytest

import longscale.common.records as records
from longscale.common.records import RecordsError, count_records, iter_records


def test_jsonl_is_lazy_and_names_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n\n{broken\n")
    rows = iter_records(path)
    assert next(rows) == (f"{path}:1", {"a": 1})  # the broken third line is not read yet
    with pytest.raises(RecordsError, match=r"r.jsonl:3: not valid JSON"):
        next(rows)


def test_parquet_is_read_by_record_batches(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"n": list(range(100))}), tmp_path / "t.parquet", row_group_size=50)
    monkeypatch.setattr(records, "PARQUET_BATCH_ROWS", 10)
    decoded = []
    real = pq.ParquetFile.iter_batches

    def counting(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            decoded.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    rows = iter_records(tmp_path / "t.parquet")
    first = [next(rows) for _ in range(12)]
    assert first[11] == (f"{tmp_path / 't.parquet'}[11]", {"n": 11}) and sum(decoded) == 20
    assert [r["n"] for _, r in rows] == list(range(12, 100))


def test_a_dataset_dict_gives_one_split_or_all(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"n": [1, 2]}), "test": Dataset.from_dict({"n": [3]})}).save_to_disk(tmp_path / "d")
    assert [r["n"] for _, r in iter_records(tmp_path / "d")] == [1, 2]
    every = list(iter_records(tmp_path / "d", split=None))
    assert [r["n"] for _, r in every] == [1, 2, 3] and every[2][0] == f"{tmp_path / 'd'}/test[0]"
    with pytest.raises(RecordsError, match="without a 'dev' split"):
        list(iter_records(tmp_path / "d", split="dev"))


# text of record files whose count a shortcut gets wrong: blank and whitespace lines, CR and CRLF line ends, no
# final newline, JSON arrays on one line and pretty-printed, escapes, one pretty object, JSON Lines named .json
COUNTED = {
    "lines.jsonl": '{"a": 1}\n\n  \n{"a": 2}\r\n{"a": 3}\r{"a": 4}\n\t\n{"a": 5}',
    "one_line.json": json.dumps([{"text": f"doc {i}"} for i in range(7)]),
    "pretty.json": json.dumps([{"text": f"doc {i}", "n": [i, {"m": None}]} for i in range(5)], indent=2),
    "escapes.json": '[{"t": "a\\u00e9\\"x]"}, "ab\\\\", 12345, {"u": "]["}]',
    "empty_array.json": " [ ] ",
    "object.json": json.dumps({"text": "one", "tags": ["a", "b"]}, indent=2),
    "lines.json": '{"a": 1}\n{"a": 2}\n',
    "arrays_as_lines.json": "[1]\n[2]\n",
    "blank.json": "  \n",
}


@pytest.mark.parametrize("block", [1 << 20, 7, 1])  # every value and line end cut by a block's end too
@pytest.mark.parametrize("name", COUNTED)
def test_count_is_what_the_reader_yields(tmp_path, monkeypatch, name, block):
    path = tmp_path / name
    path.write_text(COUNTED[name])
    monkeypatch.setattr(records, "COUNT_BLOCK", block)
    assert count_records(path) == len(list(iter_records(path)))


def test_count_of_parquet_datasets_and_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    pq.write_table(pa.table({"n": list(range(100))}), tmp_path / "t.parquet", row_group_size=30)
    assert count_records(tmp_path / "t.parquet") == 100
    DatasetDict({"train": Dataset.from_dict({"n": [1, 2]}), "test": Dataset.from_dict({"n": [3]})}).save_to_disk(tmp_path / "d")
    assert count_records(tmp_path / "d") == 2 and count_records(tmp_path / "d", split=None) == 3
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    for name in ("lines.jsonl", "pretty.json"):
        (folder / "sub" / name).write_text(COUNTED[name])
    (folder / "notes.txt").write_text("not a record file")
    assert count_records(folder) == len(list(iter_records(folder))) == 10
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="bad.parquet: cannot read as Parquet"):
        count_records(tmp_path / "bad.parquet", error=ValueError)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_count_holds_a_block_and_a_record_not_the_file(tmp_path, suffix):
    """24 MB of 2,000 records on one JSON line (or 2,000 lines): parsing it whole (what counting a JSON array
    by reading it would do) peaks above the file's size; counting peaks at a few MB (Python allocations)."""
    import tracemalloc

    text = "x" * 12_000
    path = tmp_path / f"big{suffix}"
    if suffix == ".json":
        path.write_text("[" + ", ".join(json.dumps({"id": i, "text": text}) for i in range(2000)) + "]")
    else:
        path.write_text("".join(json.dumps({"id": i, "text": text}) + "\n" for i in range(2000)))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        assert count_records(path) == 2000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 24_000_000 and peak < size / 3, (size, peak)
