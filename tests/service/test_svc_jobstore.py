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
    assert store.begin_document("no-such-job", "d1") == (None, False, 0, False)
    job_id = make_job(store, tmp_path, total=2)
    job, settled, starts, busy = store.begin_document(job_id, "d1", task_id="t1")
    assert (job["id"], job["documents_total"], settled, starts, busy) == (job_id, 2, False, 1, False)
    assert store.live_leases(job_id) == ["d1"]
    assert store.begin_document(job_id, "d1", task_id="t2")[1:] == (False, 0, True)  # lease live: a copy waits
    assert store.begin_document(job_id, "d1", task_id="t1")[2] == 2  # its own retry passes (another start)
    store.release_lease(job_id, "d1")  # as if the lease lapsed (its worker died)
    assert store.begin_document(job_id, "d1", task_id="t2")[2] == 3  # a redelivery takes over
    assert store.settle(job_id, "d1", {"documents_done": 1}) == (True, False)  # d2 still open
    assert store.live_leases(job_id) == []  # settling releases the lease
    assert store.begin_document(job_id, "d1")[1:] == (True, 0, False)
    assert store.settle(job_id, "d1", {"documents_done": 1}) == (False, False)  # not counted again
    assert store.settle(job_id, "d2", {"documents_failed": 1}) == (True, True)  # the last one: finalize
    store.set_status(job_id, "partial")
    assert store.settle(job_id, "d2", {"documents_failed": 1}) == (False, False)  # final already
    cancelled = make_job(store, tmp_path, total=1)
    store.request_cancel(cancelled)
    job, settled, starts, busy = store.begin_document(cancelled, "d1")
    assert job["cancel_requested"] and (settled, starts, busy) == (False, 0, False)


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


def test_spool_round_trip_and_a_rewritten_spool_is_detected(tmp_path):
    docs = [Document("a", "first text é", {"source": "x"}), Document("b", "second")]
    refs = write_spool(docs, tmp_path)
    assert [read_document(r) for r in refs] == docs
    bad = DocumentRef(id="b", path=refs[0].path, offset=refs[0].offset, length=refs[0].length)
    with pytest.raises(ValueError, match="holds document 'a', not 'b'"):
        read_document(bad)
    assert json.loads(open(refs[0].path, "rb").readline())["text"] == "first text é"


def test_jobs_by_status_in_one_round_trip(store, tmp_path):
    before = store.count_by_status()
    job_id = make_job(store, tmp_path, total=1)
    store.set_status(job_id, "partial")
    after = store.count_by_status()
    assert after.get("partial", 0) == before.get("partial", 0) + 1


def test_the_journal_keeps_the_first_settlement(tmp_path):
    from worker.journal import Journal

    first, second = Journal(tmp_path), Journal(tmp_path)  # two processes' readers
    assert first.settle_once("d1", {"documents_done": 1})["counts"] == {"documents_done": 1}
    assert second.settle_once("d1", {"documents_failed": 1}, "late time limit")["counts"] == {"documents_done": 1}
    assert set(second.entries()) == {"d1"} and len((tmp_path / ".longscale-job" / "settled.jsonl").read_text()
                                                   .splitlines()) == 1


def _plan(**overrides):
    from worker.reconciler import plan_job

    job = {"status": "running", "updated_at": 100.0, "created_at": 90.0}
    args = dict(settled={"a"}, journal={"a": {}, "b": {"counts": {"documents_done": 1}}}, live={"c"},
                starts={"d": 1}, documents=["a", "b", "c", "d", "e"], now=110.0, stall_seconds=60,
                queue_empty=True)
    args.update(overrides)
    return plan_job(dict(job, **args.pop("job", {})), **args)


def test_reconciler_plan():
    plan = _plan()  # b: in the journal, not in Redis; d: started, lease lapsed; e: maybe still queued
    assert set(plan.replay) == {"b"} and plan.resend == ["d"] and not plan.finalize
    assert _plan(now=1000.0).resend == ["d", "e"]  # stalled with an empty queue: e's message was lost
    assert _plan(now=1000.0, queue_empty=False).resend == ["d"]
    assert _plan(settled={"a", "b", "c", "d", "e"}, now=1000.0).finalize  # complete, never finalized
    assert not _plan(settled={"a", "b", "c", "d", "e"}).finalize  # complete just now: its finalize is on the way
    assert _plan(job={"status": "preparing"}, documents=None, now=1000.0, live=set()).prepare_again
    assert not _plan(job={"status": "preparing"}, documents=None, now=1000.0, live={"__prepare__"}).prepare_again
