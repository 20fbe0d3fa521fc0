"""worker/decisions.py: every branch of the document task's decisions, without Redis or Celery (the end-to-end
tests in test_svc_end_to_end.py and test_svc_redis_faults.py play the same cases out with real processes)."""
from __future__ import annotations

import pytest

from worker.decisions import final_status, give_up_lost, lost_deliveries, outage_retry_delay, start_decision

JOB = {"cancel_requested": False}


@pytest.mark.parametrize("job,settled,busy,expected", [
    (None, False, False, "orphaned"),
    (None, True, True, "orphaned"),  # the job is gone: nothing else matters
    (JOB, True, True, "already-settled"),  # settled wins over a lease still held by a dying worker
    (JOB, False, True, "running-elsewhere"),
    ({"cancel_requested": True}, False, False, "cancelled"),
    ({"cancel_requested": True}, False, True, "running-elsewhere"),  # the runner settles it, not this copy
    (JOB, False, False, "run"),
])
def test_start_decision(job, settled, busy, expected):
    assert start_decision(job, settled, busy) == expected


def test_lost_deliveries_count_starts_that_were_not_retries():
    assert lost_deliveries(starts=1, retries=0) == 0  # the first start
    assert lost_deliveries(starts=3, retries=2) == 0  # two task retries, nothing lost
    assert lost_deliveries(starts=3, retries=0) == 2  # two workers died on it
    assert lost_deliveries(starts=0, retries=0) == 0
    assert not give_up_lost(starts=3, retries=0, max_lost=3) and give_up_lost(starts=4, retries=0, max_lost=3)
    assert not give_up_lost(starts=4, retries=3, max_lost=1)  # retries are not losses


def test_outage_retry_backs_off_exponentially_up_to_the_cap_then_gives_up():
    delays = [outage_retry_delay(r, max_retries=5, backoff=0.5, backoff_max=3) for r in range(6)]
    assert delays == [0.5, 1.0, 2.0, 3, 3, None]
    assert outage_retry_delay(0, max_retries=0, backoff=1, backoff_max=9) is None


@pytest.mark.parametrize("counts,status,reason", [
    ({"documents_done": 3}, "succeeded", None),
    ({"documents_done": 2, "documents_failed": 1}, "partial", "1 of 3 documents failed; first error: boom"),
    ({"documents_failed": 3}, "failed", "all 3 documents failed; first error: boom"),
    ({"documents_done": 1, "documents_cancelled": 2, "cancel_requested": True}, "cancelled",
     "cancelled by request after 1 of 3 documents (2 not started)"),
])
def test_final_status(counts, status, reason):
    job = {"documents_total": 3, "documents_done": 0, "documents_failed": 0, "documents_cancelled": 0,
           "cancel_requested": False, "errors": [{"document": "d", "error": "boom", "at": 0}]}
    job.update(counts)
    assert final_status(job) == (status, reason)


