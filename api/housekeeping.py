"""The API's timer: jobs Redis lost are rebuilt from the jobs root, and finished jobs past retention are removed.

A job whose workers are all gone (no worker has said it is alive, no progress for
`abandon_after_seconds`) ends `failed` with that reason. Redis restarted empty (no persistence) is noticed by its missing epoch key: every job folder under the
jobs root with a job record is then restored (`worker.reconciler.restore_job`), and the rest are plainly
lost (logged). Retention: a job finished more than `job_retention_seconds` ago loses its Redis keys (they
also expire by themselves) and its folder under the jobs root.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time

from api.settings import ApiSettings
from worker.jobstore import JobStore
from worker.reconciler import abandon_stalled, restore_job
from worker.submit import sender

log = logging.getLogger(__name__)


def restore_all(store: JobStore, settings: ApiSettings) -> int:
    restored = 0
    root = settings.jobs_root
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if restore_job(store, folder / "output", sender(settings)) is not None:
            restored += 1
        else:
            log.warning("job %s: no job record in its folder; Redis lost it and it cannot be restored", folder.name)
    store.mark_epoch()
    return restored


def expire_finished(store: JobStore, settings: ApiSettings, now: float | None = None) -> int:
    cutoff = (now or time.time()) - settings.job_retention_seconds
    expired = store.finished_before(cutoff)
    for job_id in expired:
        store.forget(job_id, store.owner(job_id))
        folder = (settings.jobs_root / job_id).resolve()
        if folder.parent == settings.jobs_root.resolve():
            shutil.rmtree(folder, ignore_errors=True)
    return len(expired)


def run_housekeeping(store: JobStore, settings: ApiSettings, stop: threading.Event) -> None:
    while True:
        try:
            if store.epoch_missing():
                log.warning("Redis holds no job state (restarted empty?): restored %d jobs from %s",
                            restore_all(store, settings), settings.jobs_root)
            expire_finished(store, settings)
            for job_id in abandon_stalled(store, abandon_after=settings.abandon_after_seconds,
                                          retention_seconds=settings.job_retention_seconds):
                log.warning("job %s failed: no worker alive and no progress", job_id)
        except Exception as exc:  # Redis away: next time
            log.warning("housekeeping skipped: %s", exc)
        if stop.wait(settings.reconcile_interval):
            return
