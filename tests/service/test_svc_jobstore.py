"""Job state in a real Redis: idempotent settlement, the lost-delivery guard, final status rules, the spool."""
from __future__ import annotations

import json

import pytest

from datafactory.config import GenerationConfig
from datafactory.documents import Document
from worker.jobstore import JobStore, new_job_id
from worker.spool import DocumentRef, read_document, write_spool


@pytest.fixture
def store(redis_url) -> JobStore:
    return JobStore.from_url(redis_url)


def make_job(store: JobStore, tmp_path, total: int) -> str:
    job_id = new_job_id()
    store.create(job_id, output_dir=str(tmp_path / "out"), config={}, source={"kind": "test"})
    store.update(job_id, documents_total=total)
    return job_id


def test_a_document_settles_once_however_often_it_is_delivered(store, tmp_path):
    job_id = make_job(store, tmp_path, total=2)
    counts = {"documents_done": 1, "qa_records": 3, "engine_seconds": 0.25}
    assert store.settle_document(job_id, "d1", counts) is True
    assert store.settle_document(job_id, "d1", counts) is False  # redelivered: not counted again
    assert store.settle_document(job_id, "d2", {"documents_failed": 1}) is True
    job = store.get(job_id)
    assert (job["documents_done"], job["documents_failed"], job["qa_records"]) == (1, 1, 3)
    assert job["engine_seconds"] == 0.25 and job["last_settled_at"] is not None


def test_begin_and_settle_answer_the_task_in_one_round_trip_each(store, tmp_path):
    """begin: the job, settled?, starts (not counted once settled or cancelled); settle: added?, all settled?"""
    assert store.begin_document("no-such-job", "d1") == (None, False, 0)
    job_id = make_job(store, tmp_path, total=2)
    job, settled, starts = store.begin_document(job_id, "d1")
    assert (job["id"], job["documents_total"], settled, starts) == (job_id, 2, False, 1)
    assert store.begin_document(job_id, "d1")[2] == 2  # a redelivery counts as another start
    assert store.settle(job_id, "d1", {"documents_done": 1}) == (True, False)  # d2 still open
    assert store.begin_document(job_id, "d1")[1:] == (True, 0)
    assert store.settle(job_id, "d1", {"documents_done": 1}) == (False, False)  # not counted again
    assert store.settle(job_id, "d2", {"documents_failed": 1}) == (True, True)  # the last one: finalize
    store.set_status(job_id, "partial")
    assert store.settle(job_id, "d2", {"documents_failed": 1}) == (False, False)  # final already
    cancelled = make_job(store, tmp_path, total=1)
    store.request_cancel(cancelled)
    job, settled, starts = store.begin_document(cancelled, "d1")
    assert job["cancel_requested"] and (settled, starts) == (False, 0)


def test_errors_are_kept_newest_last_and_bounded(store, tmp_path):
    job_id = make_job(store, tmp_path, total=1)
    for i in range(250):
        store.add_error(job_id, f"d{i}", f"boom {i}")
    errors = store.errors(job_id, limit=500)
    assert len(errors) == 200 and errors[-1]["error"] == "boom 249"


def test_cancel_flag_and_paging(store, tmp_path):
    first, second = make_job(store, tmp_path, 1), make_job(store, tmp_path, 1)
    store.request_cancel(first)
    assert store.cancel_requested(first) and not store.cancel_requested(second)
    total, jobs = store.list(0, 1)
    assert total >= 2 and jobs[0]["id"] == second


def test_a_document_that_keeps_killing_its_worker_fails_instead_of_looping(store, tmp_path, monkeypatch):
    """Two starts that never finished (e.g. the worker was OOM-killed twice): the third start fails it."""
    import worker.tasks as tasks

    monkeypatch.setattr(tasks, "_store", store)
    job_id = make_job(store, tmp_path, total=2)  # 2: the job is not complete after this one, no finalize sent
    ref = write_spool([Document("heavy", "text " * 50)], tmp_path / "out")[0]
    store.count_start(job_id, "heavy")
    store.count_start(job_id, "heavy")
    result = tasks.generate_document.apply(args=[job_id, ref.model_dump(), GenerationConfig().model_dump()]).get()
    assert result["outcome"] == "failed" and "died 2 times" in result["error"]
    job = store.get(job_id)
    assert job["documents_failed"] == 1 and job["errors"][0]["document"] == "heavy"


def test_a_hard_time_limit_settles_the_document_as_failed(store, tmp_path, monkeypatch):
    """Celery calls on_failure in the worker's parent process after a hard time limit kills the child."""
    from celery.exceptions import TimeLimitExceeded

    import worker.tasks as tasks

    monkeypatch.setattr(tasks, "_store", store)
    job_id = make_job(store, tmp_path, total=2)
    ref = write_spool([Document("slow", "text")], tmp_path / "out")[0]
    tasks.generate_document.on_failure(TimeLimitExceeded(68), "task-id", [job_id, ref.model_dump(), {}], {}, None)
    job = store.get(job_id)
    assert job["documents_failed"] == 1 and "TimeLimitExceeded" in job["errors"][0]["error"]


@pytest.mark.parametrize("counts,status,reason", [
    ({"documents_done": 3}, "succeeded", None),
    ({"documents_done": 2, "documents_failed": 1}, "partial", "1 of 3 documents failed; first error: boom"),
    ({"documents_failed": 3}, "failed", "all 3 documents failed; first error: boom"),
    ({"documents_done": 1, "documents_cancelled": 2, "cancel_requested": True}, "cancelled",
     "cancelled by request after 1 of 3 documents (2 not started)"),
])
def test_final_status(counts, status, reason):
    from worker.tasks import final_status

    job = {"documents_total": 3, "documents_done": 0, "documents_failed": 0, "documents_cancelled": 0,
           "cancel_requested": False, "errors": [{"document": "d", "error": "boom", "at": 0}]}
    job.update(counts)
    assert final_status(job) == (status, reason)


def test_spool_round_trip_and_a_rewritten_spool_is_detected(tmp_path):
    docs = [Document("a", "first text é", {"source": "x"}), Document("b", "second")]
    refs = write_spool(docs, tmp_path)
    assert [read_document(r) for r in refs] == docs
    bad = DocumentRef(id="b", path=refs[0].path, offset=refs[0].offset, length=refs[0].length)
    with pytest.raises(ValueError, match="holds document 'a', not 'b'"):
        read_document(bad)
    assert json.loads(open(refs[0].path, "rb").readline())["text"] == "first text é"
