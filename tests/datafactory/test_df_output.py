"""OutputWriter: resume and double-append never duplicate, across processes too; Parquet + manifest."""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from datafactory.config import GenerationConfig
from datafactory.output import OutputDirError, OutputWriter, iter_latest_records, read_jsonl
from tests.instance_records import qa_record


def _qa(i: int, accepted: bool = True) -> dict:
    return qa_record(f"q{i}", f"d{i % 3}", accepted=accepted, chunk_index=i, chunk_token_span=[i, i + 10],
                     answer_type="short" if i % 2 else "normal", question=f"Q{i}?", answer=f"A{i}", model="m")


def _instance(i: int) -> dict:
    return {"id": f"q{i}", "doc_id": f"d{i % 3}", "messages": [{"role": "user", "content": f"doc {i}"},
                                                                 {"role": "assistant", "content": f"A{i}"}]}


def _ids(path: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(path)]


def test_double_append_and_resume_never_duplicate(tmp_path):
    writer = OutputWriter(tmp_path)
    assert writer.append([_qa(0), _qa(1), _qa(1)], [_instance(0), _instance(1)]) == 2
    assert writer.append([_qa(1), _qa(2)], [_instance(1), _instance(2)]) == 1  # a re-delivered task
    again = OutputWriter(tmp_path)  # a re-run in a new process sees what is there
    assert again.done_ids() == {"q0", "q1", "q2"}
    assert again.append([_qa(0), _qa(2), _qa(3, accepted=False)], [_instance(0), _instance(2)]) == 1
    assert _ids(tmp_path / "qa.jsonl") == ["q0", "q1", "q2", "q3"]
    assert _ids(tmp_path / "instances.jsonl") == ["q0", "q1", "q2"]
    assert again.written["skipped_duplicates"] == 2


def test_instance_of_a_crashed_append_is_not_duplicated(tmp_path):
    writer = OutputWriter(tmp_path)
    # a crash after the instance line and before the qa line: the pair is generated again
    (tmp_path / "instances.jsonl").write_text(json.dumps(_instance(5)) + "\n")
    assert writer.append([_qa(5)], [_instance(5)]) == 1
    assert _ids(tmp_path / "instances.jsonl") == ["q5"] and _ids(tmp_path / "qa.jsonl") == ["q5"]


def test_cut_off_line_is_dropped_and_whole_lines_kept(tmp_path):
    writer = OutputWriter(tmp_path)
    writer.append([_qa(0)], [])
    with (tmp_path / "qa.jsonl").open("a") as fh:
        fh.write('{"id": "q1", "doc_id": "d1", "quest')  # a writer killed mid-line
    other = OutputWriter(tmp_path)
    assert other.done_ids() == {"q0"}
    other.append([_qa(1)], [])
    lines = (tmp_path / "qa.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["q0", "q1"]


def _append_worker(directory: str, ids: list[int], barrier) -> None:
    writer = OutputWriter(directory)
    barrier.wait()
    for i in ids:
        writer.append([_qa(i)], [_instance(i)])


def test_concurrent_processes_never_duplicate(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    overlapping = [list(range(0, 60)), list(range(30, 90)), list(range(0, 90, 2))]
    procs = [ctx.Process(target=_append_worker, args=(str(tmp_path), ids, barrier)) for ids in overlapping]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    qa_ids, inst_ids = _ids(tmp_path / "qa.jsonl"), _ids(tmp_path / "instances.jsonl")
    assert sorted(qa_ids) == sorted(f"q{i}" for i in range(90)) and len(qa_ids) == 90
    assert sorted(inst_ids) == sorted(qa_ids)


def test_finalize_writes_parquet_and_manifest(tmp_path):
    from datasets import load_dataset

    writer = OutputWriter(tmp_path)
    writer.append([_qa(i, accepted=i != 2) for i in range(4)], [_instance(i) for i in range(4) if i != 2])
    config = GenerationConfig(api_key="secret")
    manifest = writer.finalize(config.public_dict(), "SmolLM2", {"generation_s": 1.5})
    assert manifest["counts"]["qa"] == 4 and manifest["counts"]["accepted"] == 3
    assert manifest["counts"]["instances"] == 3 and manifest["rejection_reasons"] == {"no_answer": 1}
    assert manifest["config"]["api_key"] == "***" and "transformers" in manifest["versions"]
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["counts"] == manifest["counts"] and on_disk["status"] == "complete"
    qa = load_dataset("parquet", data_files=str(tmp_path / "qa.parquet"), split="train")
    instances = load_dataset("parquet", data_files=str(tmp_path / "instances.parquet"), split="train")
    assert qa.num_rows == 4 and set(qa["id"]) == {"q0", "q1", "q2", "q3"}
    assert instances[0]["messages"][1]["role"] == "assistant"


def test_resuming_with_other_settings_is_refused(tmp_path):
    writer = OutputWriter(tmp_path)
    writer.finalize(GenerationConfig(chunk_tokens=500).public_dict(), "m")
    writer.check_compatible(GenerationConfig(chunk_tokens=500, concurrency=8).public_dict())  # harmless change
    with pytest.raises(OutputDirError, match="chunk_tokens: 500 -> 600"):
        writer.check_compatible(GenerationConfig(chunk_tokens=600).public_dict())


def test_engine_errors_are_retried_on_resume(tmp_path):
    failed = qa_record("q7", "d1", reject_reason="engine_error", engine_error="http_503: injected", raw=None)
    writer = OutputWriter(tmp_path)
    writer.append([failed, _qa(8)], [_instance(8)])
    assert OutputWriter(tmp_path).done_ids() == {"q8"}  # q7 is to be generated again
    assert writer.append([failed], []) == 0  # the same failure again adds nothing
    assert writer.append([_qa(7)], [_instance(7)]) == 1
    assert writer.append([_qa(7)], [_instance(7)]) == 0
    manifest = writer.finalize(GenerationConfig().public_dict(), "m")
    assert manifest["counts"]["qa"] == 2 and manifest["counts"]["accepted"] == 2
    assert manifest["rejection_reasons"] == {}


def test_output_loads_as_a_folder_and_parquet_of_two_runs_concatenate(tmp_path):
    """`load_dataset(folder)` gives the instances (the dataset card names the files), `load_dataset(folder,
    "qa")` the pairs; a run without engine errors and one with them write the same qa.parquet schema."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datafactory.output import OutputWriter

    def record(i, error):
        return qa_record(f"r{i}", "d", reject_reason="engine_error" if error else None, engine_error=error,
                         critique=None)

    tables = []
    for run, error in (("ok", None), ("failing", "http_503: injected fault")):
        writer = OutputWriter(tmp_path / run)
        writer.append([record(i, error) for i in range(3)],
                      [{"id": "r0", "messages": [{"role": "user", "content": "x"}]}] if error is None else [])
        writer.finalize({}, "m")
        tables.append(pq.read_table(tmp_path / run / "qa.parquet"))
    assert tables[0].schema == tables[1].schema and pa.types.is_string(tables[0].schema.field("engine_error").type)
    assert pa.concat_tables(tables).num_rows == 6
    instances = datasets.load_dataset(str(tmp_path / "ok"), split="train")
    assert instances.column_names == ["id", "messages"] and len(instances) == 1
    assert len(datasets.load_dataset(str(tmp_path / "ok"), "qa", split="train")) == 3


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal():
    import io
    from types import SimpleNamespace

    from datafactory.progress import GenerationProgress

    stream = io.StringIO()  # not a terminal, as a log file or CI
    with GenerationProgress(2, stream=stream, interval=0) as bar:
        bar.requests_done(3, 1.5)
        bar.document_done(SimpleNamespace(qa_records=[{"accepted": True}, {"accepted": False}]), 1.5)
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "generate: documents 1/2, QA 1 accepted / 1 rejected, 3 requests, 1.50 req/s"
    assert len(lines) == 3 and "\x1b" not in stream.getvalue()  # one per event and one at the end, no escapes
    quiet = io.StringIO()
    with GenerationProgress(2, enabled=False, stream=quiet) as bar:
        bar.requests_done(1, 1.0)
    assert quiet.getvalue() == ""


def _finalized_rows(folder: Path, monkeypatch) -> tuple[list[dict], list[dict], list[str]]:
    """finalize's qa and instance Parquet rows, and the files it made a first pass (_line_ids) over."""
    import pyarrow.parquet as pq

    import datafactory.output as output

    passes = []
    real = output._line_ids
    monkeypatch.setattr(output, "_line_ids", lambda path: passes.append(path) or real(path))
    OutputWriter(folder).finalize(GenerationConfig().public_dict(), "m")
    return (pq.read_table(folder / "qa.parquet").to_pylist(), pq.read_table(folder / "instances.parquet").to_pylist(),
            [Path(path).name for path in passes])


def test_finalize_takes_one_pass_only_when_every_line_is_its_ids_latest(tmp_path, monkeypatch):
    """Distinct ids (the usual run): one pass, rows as written. A retried record, a line appended by another
    writer with an id seen before, or an unreadable line: the two-pass latest-per-id reading as before."""
    plain = tmp_path / "plain"
    writer = OutputWriter(plain)
    writer.append([_qa(0), _qa(1)], [_instance(0), _instance(1)])
    writer.append([_qa(2)], [_instance(2)])
    qa, instances, passes = _finalized_rows(plain, monkeypatch)
    assert passes == [] and [r["id"] for r in qa] == ["q0", "q1", "q2"] and len(instances) == 3

    retried = tmp_path / "retried"
    writer = OutputWriter(retried)
    failed = qa_record("q7", "d1", reject_reason="engine_error", engine_error="http_503: injected", raw=None)
    writer.append([failed, _qa(8)], [_instance(8)])
    writer.append([_qa(7)], [_instance(7)])
    qa, instances, passes = _finalized_rows(retried, monkeypatch)
    assert passes == ["qa.jsonl"]  # q7 twice in qa.jsonl; the instances' ids are distinct
    assert [(r["id"], r["accepted"]) for r in qa] == [("q8", True), ("q7", True)] and len(instances) == 2

    foreign = tmp_path / "foreign"
    writer = OutputWriter(foreign)
    writer.append([_qa(0), _qa(1)], [_instance(0), _instance(1)])
    with (foreign / "qa.jsonl").open("a") as fh:  # another writer's newer record of q0, then a broken line
        fh.write(json.dumps({**_qa(0), "answer": "newer"}) + "\n" + "{not json\n")
    qa, _, passes = _finalized_rows(foreign, monkeypatch)
    assert passes == ["qa.jsonl"] and [(r["id"], r["answer"]) for r in qa] == [("q1", "A1"), ("q0", "newer")]

    broken = tmp_path / "broken"
    writer = OutputWriter(broken)
    writer.append([_qa(0)], [_instance(0)])
    with (broken / "instances.jsonl").open("a") as fh:  # unreadable to the index: the careful path
        fh.write("{not json\n")
    qa, instances, passes = _finalized_rows(broken, monkeypatch)
    assert "instances.jsonl" in passes


def test_lines_that_are_json_but_not_objects_are_skipped_by_every_reader(tmp_path, monkeypatch):
    """`[1, 2]`, `5`, `"q9"`: valid JSON, no record. The index, read_jsonl, the latest-per-id reading and
    finalize all skip them (they crashed the latest-per-id pass with AttributeError before)."""
    writer = OutputWriter(tmp_path)
    writer.append([_qa(0)], [_instance(0)])
    for name in ("qa.jsonl", "instances.jsonl"):
        with (tmp_path / name).open("a") as fh:
            fh.write('[1, 2]\n5\n"q9"\n')
    writer.append([_qa(1)], [_instance(1)])
    assert OutputWriter(tmp_path).done_ids() == {"q0", "q1"}
    assert _ids(tmp_path / "qa.jsonl") == ["q0", "q1"]
    assert [r["id"] for r in iter_latest_records(tmp_path / "qa.jsonl")] == ["q0", "q1"]
    qa, instances, passes = _finalized_rows(tmp_path, monkeypatch)
    assert [r["id"] for r in qa] == ["q0", "q1"] and [r["id"] for r in instances] == ["q0", "q1"]
    assert set(passes) == {"qa.jsonl", "instances.jsonl"}  # the index saw unreadable lines: the careful path


def test_ids_are_read_from_lines_of_either_writer_and_escaped_ids_are_parsed(tmp_path, monkeypatch):
    """Lines written by orjson (`{"id":"q0",...`) and by json.dumps (`{"id": "q1", ...`) both give their id
    from the line's start; an id holding an escaped quote is parsed, not cut at the escape."""
    writer = OutputWriter(tmp_path)
    writer.append([_qa(0)], [_instance(0)])
    assert (tmp_path / "instances.jsonl").read_text().startswith('{"id":"q0",')
    tricky = {**_instance(2), "id": 'q"2'}
    with (tmp_path / "instances.jsonl").open("a") as fh:
        fh.write(json.dumps(_instance(1)) + "\n" + json.dumps(tricky) + "\n")
    with (tmp_path / "qa.jsonl").open("a") as fh:
        fh.write(json.dumps(_qa(1)) + "\n" + json.dumps({**_qa(2), "id": 'q"2'}) + "\n")
    assert [r["id"] for r in read_jsonl(tmp_path / "instances.jsonl")] == ["q0", "q1", 'q"2']
    reopened = OutputWriter(tmp_path)
    reopened.append([], [])
    assert reopened._instances.ids == {"q0", "q1", 'q"2'}
    qa, instances, _ = _finalized_rows(tmp_path, monkeypatch)
    assert [r["id"] for r in instances] == ["q0", "q1", 'q"2'] and [r["id"] for r in qa] == ["q0", "q1", 'q"2']
