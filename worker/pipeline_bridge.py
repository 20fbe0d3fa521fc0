"""The worker's only contact with datafactory: load inputs, run one document, write Parquet + manifest.

A worker process keeps one engine and one set of tokenizers per generation config (a job's config is
the same for all its documents), and one `OutputWriter` per output directory (it reads other writers'
ids incrementally, so re-checking `done_ids()` before each document costs only the new bytes), and one
event loop (`asyncio.Runner`) for all its documents, so the engine's keep-alive connections and the
tokenizer thread are made once, not per document. A document that raises takes the loop with it (its
leftover requests are cancelled, its sessions closed) and the next document starts a fresh one.

Engine failures: the engine already retried each request with back-off. When any request of a document
still failed, nothing is written and `EngineUnavailable` asks the task to retry the whole document later;
on the last attempt the records are written as the in-process run would write them (failed requests as
`engine_error` rejections), unless every request failed -- then nothing is written and the document
fails, so a later run generates it afresh.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datafactory.config import GenerationConfig
from datafactory.documents import Document, iter_documents, load_documents  # noqa: F401  (re-exported for the tasks)
from datafactory.engines import Engine, EngineError, build_engine
from datafactory.output import QA_FILE, OutputWriter, QARecordError, read_jsonl
from datafactory.pipeline import aprocess_document, load_tokenizers
from longscale.common.instances import parse_qa_pair
from worker import engine_policy
from worker.settings import get_worker_settings

log = logging.getLogger(__name__)
MAX_WRITERS = 64


class DocumentTimeLimit(RuntimeError):
    """The document's generation ran past LONGSCALE_DOCUMENT_TIME_LIMIT (loading the engine and tokenizers,
    and the job's bookkeeping in Redis, do not count: a slow first load or a Redis stall is not the
    document's fault)."""


class EngineUnavailable(RuntimeError):
    """The engine could not be built or failed requests after its own retries; retry the document later."""


@dataclass
class Outcome:
    qa_records: int
    qa_accepted: int
    instances: int
    requests: int
    engine_seconds: float
    too_short: bool
    engine_errors: int


_runtimes: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
_writers: OrderedDict[str, OutputWriter] = OrderedDict()
_writers_lock = threading.Lock()  # the threads pool shares this process's cache
_local = threading.local()  # the event loop: one per process (prefork, solo), one per thread (threads pool)


def _run(coro: Any) -> Any:
    """Await `coro` on this process's (thread's) event loop, made on first use and kept across documents."""
    runner = getattr(_local, "runner", None) or asyncio.Runner()
    _local.runner = runner
    try:
        return runner.run(coro)
    except BaseException:  # a poison document, the time limit: cancel what is left, start clean next time
        close_runtime()
        raise


def close_runtime() -> None:
    """Close this process's (thread's) event loop, and with it the engines' sessions on it; the worker
    calls this when its process shuts down."""
    runner, _local.runner = getattr(_local, "runner", None), None
    if runner is not None:
        runner.close()


def _runtime(config: GenerationConfig) -> tuple[Any, Any]:
    """(engine, tokenizers) for this config, built once per process; two configs kept at most."""
    key = config.model_dump_json()
    if key in _runtimes:
        _runtimes.move_to_end(key)
        return _runtimes[key]
    allowed = engine_policy.worker_config(config, get_worker_settings())  # EngineNotAllowed: the document fails
    try:
        if allowed.engine == "openai":  # the worker's OPENAI_API_KEY never goes out: only the policy's key
            from datafactory.engines.openai_engine import OpenAIEngine

            engine: Engine = OpenAIEngine.from_config(allowed, read_env_key=False)
        else:
            engine = build_engine(allowed)
    except EngineError as exc:
        log.warning("engine for %s could not be built: %s", allowed.base_url or allowed.engine, exc)
        kind = "connect_error" if isinstance(exc.__cause__, OSError) else "engine_error"  # kinds, not bodies
        raise EngineUnavailable(f"the engine could not be set up: {kind} (details in the worker log)") from exc
    runtime = (engine, load_tokenizers(config))
    _runtimes[key] = runtime
    while len(_runtimes) > 2:
        old_engine, _ = _runtimes.popitem(last=False)[1]
        old_engine.close()
    return runtime


def writer_for(output_dir: str | Path) -> OutputWriter:
    """This process's writer for an output dir; the least recently used of more than MAX_WRITERS is dropped
    (a writer holds only the ids it has read, and a new one rereads them)."""
    key = str(Path(output_dir).resolve())
    with _writers_lock:
        writer = _writers.get(key)
        if writer is None:
            writer = _writers[key] = OutputWriter(key)
            while len(_writers) > MAX_WRITERS:
                _writers.popitem(last=False)
        _writers.move_to_end(key)
        return writer


def public_engine_error(error: str | None) -> str:
    """What a client may see of an engine error: its kind (http_503, timeout, connect_error), not the body."""
    error = error or "unknown"
    prefix = "critique: " if error.startswith("critique: ") else ""
    return prefix + error[len(prefix):].split(":", 1)[0].strip()


def _scrub_engine_errors(records: list[dict]) -> None:
    for record in records:
        if record.get("engine_error"):
            log.warning("engine error on %s: %s", record.get("id"), record["engine_error"])
            record["engine_error"] = public_engine_error(record["engine_error"])


def check_output_dir(output_dir: str | Path, config: GenerationConfig) -> None:
    """Refuse (OutputDirError) an output directory that holds a run with other record-shaping settings."""
    writer_for(output_dir).check_compatible(config.public_dict())


def run_document(document: Document, config: GenerationConfig, output_dir: str | Path, *,
                 last_attempt: bool, time_limit: float) -> Outcome:
    engine, tokenizers = _runtime(config)
    writer = writer_for(output_dir)
    started = time.perf_counter()
    try:
        result = _run(asyncio.wait_for(aprocess_document(document, config, engine, tokenizers, writer.done_ids()),
                                       timeout=time_limit))
    except TimeoutError:
        raise DocumentTimeLimit(f"exceeded the per-document time limit of {time_limit:g}s "
                                "(LONGSCALE_DOCUMENT_TIME_LIMIT)") from None
    engine_seconds = time.perf_counter() - started
    failed = [r for r in result.qa_records if r.get("reject_reason") == "engine_error"]
    _scrub_engine_errors(result.qa_records)
    if failed and (not last_attempt or len(failed) == len(result.qa_records)):
        raise EngineUnavailable(f"{len(failed)} of {len(result.qa_records)} requests failed after the engine's "
                                f"retries: {failed[0].get('engine_error')} (details in the worker log)")
    writer.append(result.qa_records, result.instances)
    return Outcome(qa_records=len(result.qa_records),
                   qa_accepted=sum(1 for r in result.qa_records if r["accepted"]),
                   instances=len(result.instances), requests=result.requests, engine_seconds=engine_seconds,
                   too_short=result.skipped == "too_short", engine_errors=len(failed))


def finalize_output(output_dir: str | Path, config: GenerationConfig, job: dict, status: str,
                    reason: str | None) -> dict:
    """Parquet copies and manifest.json, as `longscale generate` writes them, plus the job's record."""
    writer = writer_for(output_dir)
    first = next(read_jsonl(Path(output_dir) / QA_FILE), None)  # the model of the first pair (no full read)
    model = (parse_qa_pair(QA_FILE, first, QARecordError).model if first else None) or config.model
    timings = {"generation_s": job["elapsed_seconds"], "engine_s": job["engine_seconds"],
               "task_s": job["task_seconds"]}
    this_run = {"documents": job["documents_total"], "processed": job["documents_done"],
                "too_short": job.get("documents_too_short", 0), "failed": job["documents_failed"],
                "cancelled": job["documents_cancelled"], "qa_new": job["qa_records"],
                "accepted_new": job["qa_accepted"], "requests": job["requests"],
                "requests_per_s": job["requests_per_second"]}
    job_view = {"id": job["id"], "status": status, "reason": reason, "errors": job.get("errors", [])[:20]}
    manifest_status = "complete" if status == "succeeded" else status
    return writer.finalize(config.public_dict(), model, timings, extra={"this_run": this_run, "job": job_view},
                           status=manifest_status)
