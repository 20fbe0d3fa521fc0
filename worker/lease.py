"""The worker's heartbeat: the leases of the documents this process runs, renewed every third of their term.

A daemon thread, started on the first document a process runs (never at import: a prefork child starts its
own after the fork). A worker that dies stops renewing, its leases lapse within `lease_seconds`, and the
reconciler sends its documents again: minutes, not the broker's visibility timeout (hours).
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, store, lease_seconds: float):
        self.store, self.lease_seconds = store, lease_seconds
        self._held: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def hold(self, job_id: str, document_id: str, task_id: str) -> None:
        with self._lock:
            self._held.add((job_id, document_id, task_id))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._renew_forever, name="lease-keeper", daemon=True)
                self._thread.start()

    def drop(self, job_id: str, document_id: str, task_id: str) -> None:
        with self._lock:
            self._held.discard((job_id, document_id, task_id))

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                held = sorted(self._held)
            try:
                self.store.renew_leases(held, self.lease_seconds)
            except Exception as exc:  # Redis away: the next beat tries again; a lapsed lease only costs a rerun
                log.warning("could not renew %d leases: %s", len(held), exc)

    def stop(self) -> None:
        self._stop.set()
