"""The Celery app: Redis broker and result backend, JSON only, one task prefetched per process.

`acks_late` + `task_reject_on_worker_lost` are set per task, on the idempotent ones only (document and
finalize tasks: records are keyed by deterministic ids and the writer skips ids already written). The
fan-out task is acknowledged on receipt: running it twice would enqueue every document twice.
"""
from __future__ import annotations

from celery import Celery

from worker.settings import get_worker_settings


def make_celery(redis_url: str | None = None) -> Celery:
    settings = get_worker_settings()
    url = redis_url or settings.redis_url
    transport = {"visibility_timeout": settings.visibility_timeout,
                 "unacked_restore_interval": settings.restore_interval,
                 "unacked_restore_throttle": 1}
    app = Celery("longscale", broker=url, backend=url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"], result_accept_content=["json"],
        task_default_queue=settings.queue,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_expires=7 * 24 * 3600,
        task_ignore_result=True,  # the job hash in Redis is the record of truth; per-task results cost writes
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,  # task events stay off unless Flower switches them on (it does)
    )
    return app


app = make_celery()
