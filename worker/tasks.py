"""Thin named Celery tasks on validated JSON; the work itself is datafactory's.

    longscale.prepare_job(job_id, request)         read the inputs, spool them, fan out one task per document
    longscale.generate_document(job_id, ref, cfg)  one document -> records appended to the job's output dir
    longscale.finalize_job(job_id, cfg)            Parquet + manifest.json, final status and reason

There is no chord: each document settles exactly once in Redis (see jobstore), and the task whose
settlement completes the count sends finalize. A redelivered task that finds its document settled sends
finalize again if the count is complete, so a worker dying between the two steps cannot stall a job;
finalize is idempotent. Engine outages are retried with exponential back-off at the task level (the
engine already retried each request); a document that raises anything else is poison: it fails alone,
its error is recorded, and the job goes on.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

import redis
from celery import Task, signals
from pydantic import BaseModel, ConfigDict, Field

from datafactory.config import GenerationConfig
from worker import engine_policy, reconciler
from worker import pipeline_bridge as bridge
from worker.celery_app import app
from worker.decisions import final_status, give_up_lost, lost_deliveries, outage_retry_delay, start_decision
from worker.jobstore import JobStore, all_settled
from worker.journal import journal_for
from worker.lease import LeaseKeeper
from worker.settings import get_worker_settings
from worker.spool import DocumentRef, read_document, remove_spool, spool_documents, spooled_refs

log = logging.getLogger(__name__)


class PrepareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_paths: list[str] = Field(min_length=1)
    output_dir: str


_store: JobStore | None = None
_leases: LeaseKeeper | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.from_url(app.conf.broker_url or get_worker_settings().redis_url)
    return _store


def leases() -> LeaseKeeper:
    global _leases
    if _leases is None:
        _leases = LeaseKeeper(store(), get_worker_settings().lease_seconds)
    return _leases


@signals.worker_process_shutdown.connect  # a prefork child exiting
@signals.worker_shutdown.connect  # the solo/threads pool's process exiting
def _close_event_loop(**_: object) -> None:
    bridge.close_runtime()


_stop_reconciler = threading.Event()


@signals.worker_ready.connect  # the worker's main process, once its pool is up (never at import)
def _start_reconciler(**_: object) -> None:
    settings = get_worker_settings()

    def send(name: str, args: list) -> None:
        app.send_task(name, args=args, queue=settings.queue)

    threading.Thread(target=reconciler.run_periodically, name="reconciler", daemon=True,
                     kwargs={"store": store(), "send": send, "queue": settings.queue,
                             "interval": settings.reconcile_interval,
                             "stall_seconds": 2 * settings.lease_seconds + settings.reconcile_interval,
                             "stop": _stop_reconciler,
                             "worker_name": f"{socket.gethostname()}:{os.getpid()}"}).start()


@signals.worker_shutdown.connect
def _end_reconciler(**_: object) -> None:
    _stop_reconciler.set()


def _send_finalize(job_id: str, config: dict) -> None:
    finalize_job.apply_async(args=[job_id, config], queue=get_worker_settings().queue)


def settle(jobs: JobStore, job_id: str, output_dir: str, document_id: str, config: dict, counts: dict[str, float],
           error: str | None = None) -> bool:
    """Settle the document: first in its job's journal on disk (the first settlement written wins, so a
    racing rerun or the hard-limit handler agrees with it), then in Redis (its error recorded first time
    only); send finalize if it was the last. The reconciler replays journal lines Redis missed."""
    entry = journal_for(output_dir).settle_once(document_id, counts, error)
    added, complete = jobs.settle(job_id, document_id, entry["counts"])
    if added and entry["error"]:
        jobs.add_error(job_id, document_id, entry["error"])
    if complete:
        _send_finalize(job_id, config)
    return added


PREPARE = "__prepare__"  # the fan-out's lease, under the documents' name space


@app.task(name="longscale.prepare_job", bind=True, acks_late=True, reject_on_worker_lost=True)
def prepare_job(self: Task, job_id: str, request: dict, config: dict) -> dict:
    """Acknowledged late and idempotent: the spool is rewritten identically (atomically) and a document
    sent twice runs once (settled set, leases); a worker dying here leaves the lease to lapse and the
    reconciler (or the broker) sends the fan-out again."""
    req = PrepareRequest.model_validate(request)
    cfg = GenerationConfig.model_validate(config)
    jobs = store()
    task_id = self.request.id or ""
    job, _, _, busy = jobs.begin_document(job_id, PREPARE, get_worker_settings().lease_seconds, task_id)
    if job is None or busy or job["status"] not in ("queued", "preparing"):
        return {"documents": 0, "outcome": "skipped"}
    leases().hold(job_id, PREPARE, task_id)
    try:
        return _prepare(jobs, job_id, req, cfg, config)
    finally:
        leases().drop(job_id, PREPARE, task_id)


def _prepare(jobs: JobStore, job_id: str, req: PrepareRequest, cfg: GenerationConfig, config: dict) -> dict:
    jobs.set_status(job_id, "preparing")
    try:
        engine_policy.allowed_config(cfg, get_worker_settings())  # EngineNotAllowed: the job fails, saying why
        bridge.check_output_dir(req.output_dir, cfg)
        Path(req.output_dir).mkdir(parents=True, exist_ok=True)
        # streamed: read errors surface here, before any task is sent
        total = spool_documents(bridge.iter_documents(req.input_paths, cfg), req.output_dir)
    except Exception as exc:  # a missing file, a bad field, a clashing output dir: the job fails, saying why
        remove_spool(req.output_dir)
        jobs.add_error(job_id, None, f"{type(exc).__name__}: {exc}")
        jobs.set_status(job_id, "failed", reason=f"could not read the inputs: {exc}")
        return {"documents": 0}
    jobs.update(job_id, documents_total=total)
    jobs.set_status(job_id, "running")
    if not total:
        _send_finalize(job_id, config)
    queue = get_worker_settings().queue
    for ref in spooled_refs(req.output_dir):
        generate_document.apply_async(args=[job_id, ref.model_dump(), config], queue=queue)
    return {"documents": total}


class DocumentTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """The task body raises only for retries and Redis being away past the client's ride-out; this also
        runs in the parent after the hard limit (document limit + 60 s: a load or a stall that never ends)
        killed the child. The hard limit settles the document failed -- unless its outcome is in the journal
        already, which then wins --; a Redis error settles nothing: the reconciler replays the journal or
        runs the document again."""
        if isinstance(exc, redis.RedisError):
            log.warning("document %s of job %s: bookkeeping interrupted (%s: %s); left to the reconciler",
                        args[1]["id"], args[0], type(exc).__name__, exc)
            return
        job_id, ref, config = args
        job = store().get(job_id, with_errors=False)
        if job is not None:
            _fail(store(), job_id, job["output_dir"], ref["id"], config, f"{type(exc).__name__}: {exc} (hard "
                  "limit: LONGSCALE_DOCUMENT_TIME_LIMIT + 60 s)", time.perf_counter())


@app.task(name="longscale.generate_document", base=DocumentTask, bind=True, acks_late=True,
          reject_on_worker_lost=True, max_retries=None)
def generate_document(self: Task, job_id: str, ref: dict, config: dict) -> dict:
    doc_ref = DocumentRef.model_validate(ref)
    settings = get_worker_settings()
    jobs = store()
    task_id = self.request.id or ""
    job, settled, starts, busy = jobs.begin_document(job_id, doc_ref.id, settings.lease_seconds, task_id)
    decision = start_decision(job, settled, busy)
    if job is None:
        log.warning("job %s is gone from Redis; dropping document %s", job_id, doc_ref.id)
    elif decision == "already-settled" and all_settled(job):
        _send_finalize(job_id, config)  # the settling task may have died before sending it
    elif decision == "cancelled":
        settle(jobs, job_id, job["output_dir"], doc_ref.id, config, {"documents_cancelled": 1})
    if job is None or decision != "run":
        return {"outcome": decision}
    leases().hold(job_id, doc_ref.id, task_id)
    try:
        return _generate(self, jobs, job, doc_ref, config, starts)
    finally:
        leases().drop(job_id, doc_ref.id, task_id)


def _generate(self: Task, jobs: JobStore, job: dict, doc_ref: DocumentRef, config: dict, starts: int) -> dict:
    cfg = GenerationConfig.model_validate(config)
    settings = get_worker_settings()
    job_id, output_dir = job["id"], job["output_dir"]
    limit = settings.document_time_limit
    started = time.perf_counter()

    if give_up_lost(starts, self.request.retries, settings.max_lost_deliveries):
        lost = lost_deliveries(starts, self.request.retries)
        return _fail(jobs, job_id, output_dir, doc_ref.id, config, f"its worker died {lost} times while running it (out of "
                     "memory? a crash?); not redelivered again (LONGSCALE_MAX_LOST_DELIVERIES)", started)
    delay = outage_retry_delay(self.request.retries, settings.task_retries, settings.retry_backoff,
                               settings.retry_backoff_max)
    try:
        document = read_document(doc_ref)
        outcome = bridge.run_document(document, cfg, output_dir, last_attempt=delay is None, time_limit=limit)
    except bridge.EngineUnavailable as exc:
        if delay is not None:
            log.warning("job %s doc %s: engine unavailable (%s); retry %d/%d in %.0fs", job_id, doc_ref.id,
                        exc, self.request.retries + 1, settings.task_retries, delay)
            # the retry (same task id) keeps the lease through its back-off; copies stay out
            jobs.renew_leases([(job_id, doc_ref.id, self.request.id or "")], delay + settings.lease_seconds)
            raise self.retry(countdown=delay, exc=exc) from exc
        return _fail(jobs, job_id, output_dir, doc_ref.id, config, f"engine unavailable after "
                     f"{settings.task_retries} task retries: {exc}", started)
    except bridge.DocumentTimeLimit as exc:
        return _fail(jobs, job_id, output_dir, doc_ref.id, config, str(exc), started)
    except redis.RedisError:
        raise  # not the document's fault: on_failure leaves it to the reconciler
    except Exception as exc:  # poison document: it fails alone, the job goes on
        log.exception("job %s doc %s failed", job_id, doc_ref.id)
        return _fail(jobs, job_id, output_dir, doc_ref.id, config, f"{type(exc).__name__}: {exc}", started)

    if outcome.engine_errors:
        jobs.add_error(job_id, doc_ref.id, f"{outcome.engine_errors} requests failed after every retry; kept as "
                       "engine_error rejections")
    counts = {"documents_done": 1, "documents_too_short": int(outcome.too_short), "qa_records": outcome.qa_records, "qa_accepted": outcome.qa_accepted,
              "instances": outcome.instances, "requests": outcome.requests,
              "engine_seconds": outcome.engine_seconds, "task_seconds": time.perf_counter() - started}
    settle(jobs, job_id, output_dir, doc_ref.id, config, counts)
    return {"outcome": "done", "document": doc_ref.id, "qa_records": outcome.qa_records}


def _fail(jobs: JobStore, job_id: str, output_dir: str, document_id: str, config: dict, error: str,
          started: float) -> dict:
    settle(jobs, job_id, output_dir, document_id, config,
           {"documents_failed": 1, "task_seconds": time.perf_counter() - started}, error)
    return {"outcome": "failed", "document": document_id, "error": error}


@app.task(name="longscale.finalize_job", bind=True, acks_late=True, reject_on_worker_lost=True)
def finalize_job(self: Task, job_id: str, config: dict) -> dict:
    """Idempotent: rewrites Parquet and manifest from the JSONL records, then sets the final status."""
    cfg = GenerationConfig.model_validate(config)
    jobs = store()
    job = jobs.get(job_id)
    if job is None:
        return {"status": "orphaned"}
    status, reason = final_status(job)
    try:
        bridge.finalize_output(job["output_dir"], cfg, job, status, reason)
    except Exception as exc:
        log.exception("job %s: finalize failed", job_id)
        jobs.add_error(job_id, None, f"finalize: {type(exc).__name__}: {exc}")
        status, reason = "failed", f"writing Parquet/manifest failed: {exc} (the JSONL records are kept)"
    remove_spool(job["output_dir"])
    jobs.set_status(job_id, status, reason=reason or "", retention_seconds=get_worker_settings().job_retention_seconds)
    return {"status": status}
