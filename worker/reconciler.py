"""The reconciler: every job that is not final either progresses or is finished, whatever happened to Redis
or to its workers.

For each active job it compares three records -- Redis (settled set, live leases, start counts), the
journal on disk (settlements, the truth) and the spool (the documents) -- and
- settles in Redis every journal line Redis missed (a restart, a stall, a lost reply), which sends finalize
  when it completes the count;
- sends again each unsettled document whose lease lapsed after it started (its worker died), and, once the
  job has made no progress for `stall_seconds` and the queue is empty, every unsettled document with no
  live lease (its message was lost: Redis restarted, AOF's last second);
- sends the fan-out again for a job stuck queued/preparing with no live fan-out lease.
Sending twice is safe (settled check, leases). `plan_job` is the pure decision, unit-tested; the workers
run `sweep` on a timer (one at a time, by a Redis lock) and the API calls `restore_job` for a job that
Redis lost entirely: rebuilt from `job.json`, the journal and the spool, or its loss said plainly.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from worker.jobstore import FINAL_STATES, JobStore
from worker.journal import journal_for, read_job_record
from worker.spool import spool_refs

log = logging.getLogger(__name__)
PREPARE = "__prepare__"
LOCK = "longscale:reconciler"
Send = Callable[[str, list], None]  # (task name, args)


@dataclass
class Plan:
    replay: dict[str, dict] = field(default_factory=dict)  # document -> journal entry Redis lacks
    resend: list[str] = field(default_factory=list)  # documents to send again
    prepare_again: bool = False
    finalize: bool = False


def plan_job(job: dict, *, settled: set[str], journal: dict[str, dict], live: set[str], starts: dict[str, int],
             documents: list[str] | None, now: float, stall_seconds: float, queue_empty: bool) -> Plan:
    """What to do for one non-final job (pure)."""
    plan = Plan()
    last = max(job.get("updated_at") or 0, job.get("last_settled_at") or 0, job.get("created_at") or 0)
    stalled = now - last > stall_seconds
    if job["status"] in ("queued", "preparing") or documents is None:
        plan.prepare_again = PREPARE not in live and stalled and job["status"] in ("queued", "preparing")
        return plan
    plan.replay = {d: e for d, e in journal.items() if d not in settled}
    done = settled | set(plan.replay)
    for doc in documents:
        if doc in done or doc in live:
            continue
        if starts.get(doc, 0) > 0 or (stalled and queue_empty):
            plan.resend.append(doc)
    # complete but not final for a while: its finalize was lost (a finalize in flight is left alone)
    plan.finalize = not plan.replay and len(done) >= len(documents) and stalled
    return plan


def reconcile_job(store: JobStore, job_id: str, send: Send, *, queue: str, stall_seconds: float,
                  queue_empty: bool) -> Plan | None:
    job = store.get(job_id, with_errors=False)
    if job is None or job["status"] in FINAL_STATES:
        store.redis.srem("longscale:active", job_id)
        return None
    output_dir = job["output_dir"]
    refs = spool_refs(output_dir)
    starts = store.starts(job_id)
    plan = plan_job(job, settled=store.settled_ids(job_id), journal=journal_for(output_dir).entries(),
                    live=set(store.live_leases(job_id)), starts=starts,
                    documents=None if refs is None else [r.id for r in refs], now=time.time(),
                    stall_seconds=stall_seconds, queue_empty=queue_empty)
    config = job["config"] | {"api_key": None}
    record = read_job_record(output_dir) or {}
    config = record.get("config", config)
    for doc, entry in plan.replay.items():
        added, complete = store.settle(job_id, doc, entry["counts"])
        if added and entry.get("error"):
            store.add_error(job_id, doc, entry["error"])
        if complete:
            send("longscale.finalize_job", [job_id, config])
    by_id = {r.id: r for r in refs or []}
    for doc in plan.resend:
        send("longscale.generate_document", [job_id, by_id[doc].model_dump(), config])
    if plan.finalize:
        send("longscale.finalize_job", [job_id, config])
    if plan.prepare_again and record:
        send("longscale.prepare_job", [job_id, {"input_paths": record["input_paths"], "output_dir": output_dir},
                                       config])
    if plan.replay or plan.resend or plan.prepare_again:
        log.warning("job %s reconciled: %d settlements replayed, %d documents sent again%s", job_id,
                    len(plan.replay), len(plan.resend), ", fan-out sent again" if plan.prepare_again else "")
    return plan


def sweep(store: JobStore, send: Send, *, queue: str, stall_seconds: float) -> int:
    """One pass over the active jobs; returns how many were looked at."""
    queue_empty = store.redis.llen(queue) == 0
    jobs = store.active_jobs()
    for job_id in jobs:
        try:
            reconcile_job(store, job_id, send, queue=queue, stall_seconds=stall_seconds, queue_empty=queue_empty)
        except Exception:  # one broken job must not stop the others being reconciled
            log.exception("job %s: reconcile failed", job_id)
    return len(jobs)


WORKER_KEY = "longscale:worker:"  # one per live worker, refreshed every sweep interval


def run_periodically(store: JobStore, send: Send, *, queue: str, interval: float, stall_seconds: float,
                     stop: threading.Event, worker_name: str = "") -> None:
    """The workers' timer: one sweep per interval across all workers (whoever takes the lock); every worker
    also says it is alive (what lets the API tell a job waiting for workers from one whose workers are gone)."""
    while not stop.wait(interval):
        try:
            store.redis.set(WORKER_KEY + worker_name, time.time(), ex=max(int(3 * interval), 30))
            if store.redis.set(LOCK, "1", nx=True, px=max(int(interval * 900), 100)):
                sweep(store, send, queue=queue, stall_seconds=stall_seconds)
        except Exception as exc:  # Redis away: next time
            log.warning("reconciler sweep skipped: %s", exc)


def workers_alive(store: JobStore) -> bool:
    return next(store.redis.scan_iter(match=WORKER_KEY + "*", count=100), None) is not None


def abandon_stalled(store: JobStore, *, abandon_after: float, retention_seconds: int, now: float | None = None) -> list[str]:
    """With no worker alive, every active job without progress for `abandon_after` ends `failed`, saying why
    (its records stay; resubmitting to the same output directory finishes it). Returns the jobs ended."""
    if workers_alive(store):
        return []
    now = now or time.time()
    ended = []
    for job_id in store.active_jobs():
        job = store.get(job_id, with_errors=False)
        if job is None or job["status"] in FINAL_STATES or store.live_leases(job_id):
            continue
        last = max(job.get("updated_at") or 0, job.get("last_settled_at") or 0, job.get("created_at") or 0)
        if now - last > abandon_after:
            store.set_status(job_id, "failed", retention_seconds=retention_seconds,
                             reason=f"no worker has been alive and the job made no progress for {now - last:.0f} s "
                             f"(LONGSCALE_ABANDON_AFTER_SECONDS); {job['documents_done']} of "
                             f"{job['documents_total']} documents finished and their records are kept")
            ended.append(job_id)
    return ended


def restore_job(store: JobStore, output_dir: str | Path, send: Send) -> dict | None:
    """Rebuild a job Redis lost from its output directory; None when there is no job record there.

    Ended jobs come back with the manifest's status and counts; running ones with their journal's
    settlements, and every unsettled document is sent again (the reconciler finishes the rest)."""
    record = read_job_record(output_dir)
    if record is None:
        return None
    job_id = record["id"]
    if store.exists(job_id):
        return store.get(job_id)
    manifest_path = Path(output_dir) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    extra = {"owner": record.get("owner") or "", "restored_at": time.time()}
    store.create(job_id, output_dir=str(output_dir), config=record["public_config"], source=record["source"],
                 extra=extra)
    if manifest.get("job", {}).get("id") == job_id:
        run = manifest.get("this_run", {})
        store.update(job_id, documents_total=run.get("documents", 0), documents_done=run.get("processed", 0),
                     documents_failed=run.get("failed", 0), documents_cancelled=run.get("cancelled", 0),
                     qa_records=run.get("qa_new", 0), qa_accepted=run.get("accepted_new", 0),
                     requests=run.get("requests", 0))
        store.set_status(job_id, manifest["job"]["status"], reason=(manifest["job"].get("reason") or "") +
                         " (restored from the output directory after Redis lost the job)")
        return store.get(job_id)
    refs = spool_refs(output_dir)
    if refs is None:  # never fanned out: start it again
        send("longscale.prepare_job", [job_id, {"input_paths": record["input_paths"], "output_dir": str(output_dir)},
                                       record["config"]])
        return store.get(job_id)
    store.update(job_id, documents_total=len(refs), reason="restored from the output directory after Redis lost "
                 "the job: settled documents replayed from its journal, the rest sent again")
    store.set_status(job_id, "running")
    journal = journal_for(output_dir).entries()
    for doc, entry in journal.items():
        store.settle(job_id, doc, entry["counts"])
        if entry.get("error"):
            store.add_error(job_id, doc, entry["error"])
    for ref in refs:
        if ref.id not in journal:
            send("longscale.generate_document", [job_id, ref.model_dump(), record["config"]])
    if all(ref.id in journal for ref in refs):
        send("longscale.finalize_job", [job_id, record["config"]])
    return store.get(job_id)
