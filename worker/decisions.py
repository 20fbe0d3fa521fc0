"""What the document task decides, as pure functions of what Redis and Celery tell it, so that every branch is
unit-tested without a broker (tests/service/test_svc_decisions.py); tasks.py only carries them out.

Trade-off: a decision sees a snapshot (the job record read at the task's start), not a lock; the settlement in
Redis (jobstore, Lua) is what makes a document count exactly once, whatever two racing tasks decide here.
"""
from __future__ import annotations

from typing import Any, Literal

Start = Literal["orphaned", "already-settled", "running-elsewhere", "cancelled", "run"]


def start_decision(job: dict[str, Any] | None, settled: bool, busy: bool) -> Start:
    """What a delivered document task does first: the job gone from Redis (orphaned), the document settled by an
    earlier delivery (the worker died before the ack), a live lease held by another worker, the job cancelled, or
    run it."""
    if job is None:
        return "orphaned"
    if settled:
        return "already-settled"
    if busy:
        return "running-elsewhere"
    if job["cancel_requested"]:
        return "cancelled"
    return "run"


def lost_deliveries(starts: int, retries: int) -> int:
    """Starts of this document that never finished: every start but this one that was not a task retry (a worker
    killed mid-document leaves its start counted and its task redelivered, with the same retry number)."""
    return max(0, starts - 1 - retries)


def give_up_lost(starts: int, retries: int, max_lost: int) -> bool:
    """Fail a document whose workers keep dying on it (out of memory? a crash?) instead of redelivering it."""
    return lost_deliveries(starts, retries) >= max_lost


def outage_retry_delay(retries: int, max_retries: int, backoff: float, backoff_max: float) -> float | None:
    """Seconds before retrying a document whose engine was unavailable (exponential back-off, capped), or None
    when the retries are spent and the document fails."""
    if retries >= max_retries:
        return None
    return min(backoff * 2 ** retries, backoff_max)


def final_status(job: dict[str, Any]) -> tuple[str, str | None]:
    """succeeded | partial | failed | cancelled, and why (None when everything succeeded)."""
    done, failed, cancelled = job["documents_done"], job["documents_failed"], job["documents_cancelled"]
    total = job["documents_total"]
    errors = job.get("errors") or []
    first = f"; first error: {errors[0]['error']}" if errors else ""
    if job["cancel_requested"]:
        return "cancelled", f"cancelled by request after {done} of {total} documents ({cancelled} not started)"
    if failed == 0:
        return "succeeded", None
    if done > 0:
        return "partial", f"{failed} of {total} documents failed{first}"
    return "failed", f"all {total} documents failed{first}"
