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
import time
from pathlib import Path

from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, ConfigDict, Field

from datafactory.config import GenerationConfig
from worker import pipeline_bridge as bridge
from worker.celery_app import app
from worker.jobstore import JobStore, all_settled
from worker.settings import get_worker_settings
from worker.spool import DocumentRef, read_document, remove_spool, spool_documents, spooled_refs

log = logging.getLogger(__name__)


class PrepareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_paths: list[str] = Field(min_length=1)
    output_dir: str


_store: JobStore | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.from_url(app.conf.broker_url or get_worker_settings().redis_url)
    return _store


@signals.worker_process_shutdown.connect  # a prefork child exiting
@signals.worker_shutdown.connect  # the solo/threads pool's process exiting
def _close_event_loop(**_: object) -> None:
    bridge.close_runtime()


def _send_finalize(job_id: str, config: dict) -> None:
    finalize_job.apply_async(args=[job_id, config], queue=get_worker_settings().queue)


def _settle(jobs: JobStore, job_id: str, document_id: str, config: dict, counts: dict[str, float],
            error: str | None = None) -> bool:
    """Settle the document (its error recorded first time only), then send finalize if it was the last."""
    added, complete = jobs.settle(job_id, document_id, counts)
    if added and error:
        jobs.add_error(job_id, document_id, error)
    if complete:
        _send_finalize(job_id, config)
    return added


@app.task(name="longscale.prepare_job", bind=True)
def prepare_job(self: Task, job_id: str, request: dict, config: dict) -> dict:
    """Acknowledged on receipt (not idempotent: a second run would enqueue every document again)."""
    req = PrepareRequest.model_validate(request)
    cfg = GenerationConfig.model_validate(config)
    jobs = store()
    jobs.set_status(job_id, "preparing")
    try:
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


_LIMIT = get_worker_settings().document_time_limit


class DocumentTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """The task body never raises (but for retries): this runs for a hard time limit, in the parent
        process after it killed the child; the document settles as failed so the job can still end."""
        job_id, ref, config = args
        _fail(store(), job_id, ref["id"], config, f"{type(exc).__name__}: {exc} (hard limit: "
              f"LONGSCALE_DOCUMENT_TIME_LIMIT + 60 s)", time.perf_counter())


@app.task(name="longscale.generate_document", base=DocumentTask, bind=True, acks_late=True,
          reject_on_worker_lost=True, max_retries=None, soft_time_limit=_LIMIT, time_limit=_LIMIT + 60)
def generate_document(self: Task, job_id: str, ref: dict, config: dict) -> dict:
    doc_ref = DocumentRef.model_validate(ref)
    cfg = GenerationConfig.model_validate(config)
    jobs = store()
    settings = get_worker_settings()
    started = time.perf_counter()
    job, settled, starts = jobs.begin_document(job_id, doc_ref.id)
    if job is None:
        log.warning("job %s is gone from Redis; dropping document %s", job_id, doc_ref.id)
        return {"outcome": "orphaned"}
    if settled:  # redelivered after it finished (the worker died before the ack)
        if all_settled(job):
            _send_finalize(job_id, config)
        return {"outcome": "already-settled"}
    if job["cancel_requested"]:
        _settle(jobs, job_id, doc_ref.id, config, {"documents_cancelled": 1})
        return {"outcome": "cancelled"}

    lost = starts - 1 - self.request.retries  # starts that never finished
    if lost >= settings.max_lost_deliveries:
        return _fail(jobs, job_id, doc_ref.id, config, f"its worker died {lost} times while running it (out of "
                     "memory? a crash?); not redelivered again (LONGSCALE_MAX_LOST_DELIVERIES)", started)
    last_attempt = self.request.retries >= settings.task_retries
    try:
        document = read_document(doc_ref)
        outcome = bridge.run_document(document, cfg, job["output_dir"], last_attempt=last_attempt)
    except bridge.EngineUnavailable as exc:
        if not last_attempt:
            delay = min(settings.retry_backoff * 2 ** self.request.retries, settings.retry_backoff_max)
            log.warning("job %s doc %s: engine unavailable (%s); retry %d/%d in %.0fs", job_id, doc_ref.id,
                        exc, self.request.retries + 1, settings.task_retries, delay)
            raise self.retry(countdown=delay, exc=exc)
        return _fail(jobs, job_id, doc_ref.id, config, f"engine unavailable after {settings.task_retries} "
                     f"task retries: {exc}", started)
    except SoftTimeLimitExceeded:
        return _fail(jobs, job_id, doc_ref.id, config, f"exceeded the per-document time limit of {_LIMIT}s "
                     "(LONGSCALE_DOCUMENT_TIME_LIMIT)", started)
    except Exception as exc:  # poison document: it fails alone, the job goes on
        log.exception("job %s doc %s failed", job_id, doc_ref.id)
        return _fail(jobs, job_id, doc_ref.id, config, f"{type(exc).__name__}: {exc}", started)

    if outcome.engine_errors:
        jobs.add_error(job_id, doc_ref.id, f"{outcome.engine_errors} requests failed after every retry; kept as "
                       "engine_error rejections")
    counts = {"documents_done": 1, "documents_too_short": int(outcome.too_short), "qa_records": outcome.qa_records, "qa_accepted": outcome.qa_accepted,
              "instances": outcome.instances, "requests": outcome.requests,
              "engine_seconds": outcome.engine_seconds, "task_seconds": time.perf_counter() - started}
    _settle(jobs, job_id, doc_ref.id, config, counts)
    return {"outcome": "done", "document": doc_ref.id, "qa_records": outcome.qa_records}


def _fail(jobs: JobStore, job_id: str, document_id: str, config: dict, error: str, started: float) -> dict:
    _settle(jobs, job_id, document_id, config, {"documents_failed": 1, "task_seconds": time.perf_counter() - started},
            error)
    return {"outcome": "failed", "document": document_id, "error": error}


def final_status(job: dict) -> tuple[str, str | None]:
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
    jobs.set_status(job_id, status, reason=reason or "")
    return {"status": status}
