"""The Celery app: Redis broker and result backend, JSON only, one task prefetched per process.

`acks_late` + `task_reject_on_worker_lost` are set on every task: all are idempotent (records are keyed
by deterministic ids, the writer skips ids already written, each document settles once, leases keep two
copies of a document from running at once). Making the app reads settings but connects to nothing.
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
        # the document limit itself is asyncio's, around the generation only (pipeline_bridge); this hard
        # limit is the backstop for a process stuck anywhere (the prefork pool kills and replaces it)
        task_annotations={"longscale.generate_document": {"time_limit": settings.document_time_limit + 60}},
    )
    return app


app = make_celery()
