"""The one records reader (longscale/common/records.py), which documents, finetune, evaluation and pretrain use:
lazy on every format, and errors that name the file and line or row."""
from __future__ import annotations

import json

import pytest

import longscale.common.records as records
from longscale.common.records import RecordsError, iter_records


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
