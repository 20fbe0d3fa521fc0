"""parquet_out.ParquetFollower through OutputWriter(follow_parquet=True): instances.parquet built while the
instances are appended is the file finalize would write from instances.jsonl (same rows, schema and bytes),
and whenever the follower cannot be sure of that -- a resumed file, another writer's line, a record that
would read back as other values, a schema change -- finalize reads the JSONL file as before."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datafactory import output, parquet_out
from datafactory.output import OutputWriter
from datafactory.parquet_out import FOLLOW_SUFFIX, write_parquet
from tests.instance_records import qa_record


class Note(str):
    pass


def _qa(i: int) -> dict:
    return qa_record(f"q{i}", f"d{i % 3}", accepted=True, chunk_index=i, chunk_token_span=[i, i + 10], model="m")


def _instance(i: int, **extra) -> dict:
    return {"id": f"q{i}", "doc_id": f"d{i % 3}", "truncated": i % 4 == 0, "kept_token_span": [0, i] if i % 2 else None,
            "messages": [{"role": "user", "content": "doc " * (i % 9)}, {"role": "assistant", "content": f"A{i}"}],
            **extra}


def _run(folder: Path, appends: list[list[int]], monkeypatch, between=None, **instance_extra) -> tuple[dict, list]:
    """Append qa/instance pairs in the given groups through a following writer, then finalize; returns the
    manifest and the files finalize rebuilt from JSONL (write_parquet calls)."""
    rebuilt: list[str] = []
    real = output.write_parquet
    monkeypatch.setattr(output, "write_parquet", lambda records, path: (rebuilt.append(path.name), real(records, path)))
    writer = OutputWriter(folder, follow_parquet=True)
    for n, group in enumerate(appends):
        writer.append([_qa(i) for i in group], [_instance(i, **instance_extra.get(str(i), {})) for i in group])
        if between is not None:
            between(n, folder)
    return writer.finalize({}, "m"), rebuilt


def _reference(folder: Path, tmp_path: Path) -> Path:
    """instances.parquet as finalize builds it from the JSONL file."""
    path = tmp_path / "reference.parquet"
    write_parquet(lambda: output.iter_latest_records(folder / "instances.jsonl", True), path)
    return path


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr(parquet_out, "PARQUET_BATCH", 4)  # several row groups


def test_a_followed_file_is_the_file_finalize_would_write(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    manifest, rebuilt = _run(folder, [[0, 1, 2], [3, 4], [5, 6, 7, 8, 9, 10]], monkeypatch)
    assert rebuilt == ["qa.parquet"]  # instances.parquet came from the follower
    followed, reference = folder / "instances.parquet", _reference(folder, tmp_path)
    assert followed.read_bytes() == reference.read_bytes()
    assert pq.ParquetFile(followed).metadata.num_row_groups == 3
    assert manifest["counts"]["instances"] == 11 and manifest["counts"]["truncated_instances"] == 3
    assert not list(folder.glob(f"*{FOLLOW_SUFFIX}"))


def test_a_resumed_file_is_read_by_finalize(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    _run(folder, [[0, 1]], monkeypatch)
    manifest, rebuilt = _run(folder, [[2, 3]], monkeypatch)
    assert rebuilt == ["qa.parquet", "instances.parquet"]
    assert pq.read_table(folder / "instances.parquet").column("id").to_pylist() == ["q0", "q1", "q2", "q3"]
    assert manifest["counts"]["instances"] == 4


def test_another_writers_line_makes_finalize_read_the_file(tmp_path, monkeypatch):
    def other_writer(n: int, folder: Path) -> None:
        if n == 0:
            OutputWriter(folder).append([_qa(50)], [_instance(50)])

    folder = tmp_path / "out"
    manifest, rebuilt = _run(folder, [[0, 1], [2]], monkeypatch, between=other_writer)
    assert rebuilt == ["qa.parquet", "instances.parquet"]
    assert pq.read_table(folder / "instances.parquet").column("id").to_pylist() == ["q0", "q1", "q50", "q2"]
    assert manifest["counts"]["instances"] == 4 and not list(folder.glob(f"*{FOLLOW_SUFFIX}"))


@pytest.mark.parametrize("extra", [{"5": {"new_field": 3}},                 # a later batch changes the schema
                                   {"5": {"score": float("nan")}},          # json writes NaN, not orjson's null
                                   {"1": {"note": Note("a str subclass")}}])  # json's writer, not orjson's
def test_what_the_follower_cannot_vouch_for_is_read_from_the_file(tmp_path, monkeypatch, extra):
    folder = tmp_path / "out"
    manifest, rebuilt = _run(folder, [[0, 1, 2, 3], [4, 5, 6]], monkeypatch, **extra)
    assert rebuilt == ["qa.parquet", "instances.parquet"]
    rows = pq.read_table(folder / "instances.parquet").to_pylist()
    lines = [json.loads(line) for line in (folder / "instances.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [line["id"] for line in lines] and manifest["counts"]["instances"] == 7
    assert not list(folder.glob(f"*{FOLLOW_SUFFIX}"))


def test_a_crashed_followers_file_is_removed_by_the_next_finalize(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    stale = folder / f"instances.parquet.123-abc{FOLLOW_SUFFIX}"
    stale.write_bytes(b"half a file")
    _run(folder, [[0]], monkeypatch)
    assert not stale.exists() and pq.read_table(folder / "instances.parquet").num_rows == 1


def test_a_writer_that_does_not_follow_never_builds_parquet_early(tmp_path, monkeypatch):
    writer = OutputWriter(tmp_path)
    writer.append([_qa(0)], [_instance(0)])
    assert not list(tmp_path.glob("*.parquet*"))
