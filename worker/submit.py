"""Submit a generation job to the Celery workers and (optionally) wait for it with a progress bar.

`longscale generate --broker redis://...` calls `submit_generation`; the API calls `start_job` and
returns at once. Both only write the job's record to Redis and send one `longscale.prepare_job` task
by name, so the submitter needs neither the task code nor a model.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from datafactory.config import GenerationConfig
from datafactory.output import MANIFEST_FILE
from longscale.common.errors import ConfigError
from worker.celery_app import make_celery
from worker.jobstore import FINAL_STATES, JobStore, new_job_id
from worker.journal import write_job_record
from worker.reconciler import restore_job
from worker.settings import get_worker_settings

_producer_lock = threading.Lock()


@lru_cache(maxsize=4)
def _producer(broker_url: str):
    """One Celery app per broker URL and process (its connection pool is reused by every submission)."""
    return make_celery(broker_url)


def producer(broker_url: str):
    with _producer_lock:  # the API serves requests on a thread pool: build the app once
        return _producer(broker_url)


def sender(settings) -> "Callable[[str, list], None]":
    """Send a task by name to the settings' queue through this process's one producer."""
    app = producer(settings.redis_url)
    return lambda name, args: app.send_task(name, args=args, queue=settings.queue)


def start_job(store: JobStore, broker_url: str, input_paths: Sequence[str | Path], config: GenerationConfig,
              output_dir: str | Path, *, job_id: str | None = None, source: dict | None = None,
              queue: str | None = None, extra: dict | None = None) -> str:
    """Record the job (status queued) and send its fan-out task; returns the job id."""
    job_id = job_id or new_job_id()
    output_dir = str(Path(output_dir).resolve())
    paths = [str(Path(p).expanduser().resolve()) for p in input_paths]
    source = source or {"kind": "paths", "paths": paths}
    task_config = config.model_dump(mode="json")
    write_job_record(output_dir, {"id": job_id, "owner": (extra or {}).get("owner", ""), "source": source,
                                  "input_paths": paths, "public_config": config.public_dict(),
                                  "config": task_config | {"api_key": None}, "created_at": time.time()})
    store.create(job_id, output_dir=output_dir, config=config.public_dict(), source=source, extra=extra)
    producer(broker_url).send_task("longscale.prepare_job", queue=queue or get_worker_settings().queue,
                                   args=[job_id, {"input_paths": paths, "output_dir": output_dir}, task_config])
    return job_id


def wait_for_job(store: JobStore, job_id: str, *, progress: bool = True, poll_seconds: float = 0.5,
                 timeout: float | None = None, restore: Callable[[], dict | None] | None = None) -> dict:
    """Poll the job until it ends; a rich bar shows documents settled, rate and ETA. A job Redis lost is
    rebuilt by `restore` (from its output directory) if given."""
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = None
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        bar = Progress(TextColumn("[bold]job {task.fields[job]}[/] {task.fields[status]}"), BarColumn(),
                       MofNCompleteColumn(), TextColumn("{task.fields[qa]} QA, {task.fields[rps]} req/s"),
                       TimeElapsedColumn(), TimeRemainingColumn())
        bar.start()
        task = bar.add_task("job", total=None, job=job_id, status="queued", qa=0, rps=0.0)
    try:
        while True:
            job = store.get(job_id)
            if job is None and restore is not None:
                job = restore()
            if job is None:
                raise RuntimeError(f"job {job_id} vanished from Redis (was Redis flushed or restarted?)")
            if bar is not None:
                settled = job["documents_done"] + job["documents_failed"] + job["documents_cancelled"]
                bar.update(task, total=job["documents_total"] or None, completed=settled, status=job["status"],
                           qa=job["qa_records"], rps=job["requests_per_second"])
            if job["status"] in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
            time.sleep(poll_seconds)
    finally:
        if bar is not None:
            bar.stop()


class JobFailed(ConfigError):
    """The job ended before writing any output (its inputs could not be read, or the output dir clashes)."""


def submit_generation(input_paths: Sequence[str | Path], config: GenerationConfig, output_dir: str | Path,
                      broker_url: str | None = None, *, wait: bool = True, progress: bool = True) -> dict:
    """Run a generation job on the Celery workers and return its manifest, as the in-process run does
    (plus `job`: id, status, reason, errors); without `wait`, the queued job's record.

    Ctrl-C while waiting cancels the job: documents not yet started are skipped, finished records are kept.
    """
    url = broker_url or get_worker_settings().redis_url
    store = JobStore.from_url(url)
    job_id = start_job(store, url, input_paths, config, output_dir)
    if not wait:
        return store.require(job_id)
    queue = get_worker_settings().queue

    def restore() -> dict | None:
        return restore_job(store, Path(output_dir).resolve(),
                           lambda name, args: producer(url).send_task(name, args=args, queue=queue))

    try:
        job = wait_for_job(store, job_id, progress=progress, restore=restore)
    except KeyboardInterrupt:
        store.request_cancel(job_id)
        print(f"cancelling job {job_id}: documents not started are skipped; records written so far are kept "
              f"in {output_dir}")
        raise
    manifest_path = Path(output_dir) / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if manifest is None or manifest.get("job", {}).get("id") != job_id:
        raise JobFailed(f"job {job_id} {job['status']}: {job['reason'] or 'no output written'}")
    return manifest
