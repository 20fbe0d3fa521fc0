"""Progress of a generation run: documents done, QA accepted/rejected, requests/s, ETA.

On a terminal a live rich bar; otherwise (a log file, CI, `nohup`) plain lines, at most one per
`interval` seconds and one at the end, since a bar that only redraws in place prints nothing there.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from longscale.common.progress import LineThrottle, is_terminal


class GenerationProgress:
    """A progress bar on stderr; a no-op when disabled (tests, the Celery worker)."""

    def __init__(self, total_documents: int | None, enabled: bool = True, stream: TextIO | None = None,
                 interval: float = 10.0):
        self.enabled, self.total, self.interval = enabled, total_documents, interval
        self.accepted = self.rejected = self.documents = self.requests = 0
        self.rate = 0.0
        self._progress: Progress | None = None
        self._stream = stream or sys.stderr
        self._plain = enabled and not is_terminal(self._stream)
        self._throttle = LineThrottle(interval)
        if enabled and not self._plain:
            self._progress = Progress(
                TextColumn("[bold]documents"), BarColumn(), MofNCompleteColumn(),
                TextColumn("QA [green]{task.fields[accepted]} accepted[/] / [red]{task.fields[rejected]} rejected[/]"),
                TextColumn("{task.fields[requests]} requests, {task.fields[rate]:.2f} req/s"), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), console=Console(file=sys.stderr), transient=False)
            self._task = self._progress.add_task("generate", total=total_documents, accepted=0, rejected=0,
                                                 requests=0, rate=0.0)

    def __enter__(self) -> "GenerationProgress":
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress:
            self._progress.stop()
        if self._plain:
            self._line(force=True)

    def _line(self, force: bool = False) -> None:
        if self._throttle.due(force):
            done = f"{self.documents}/{self.total}" if self.total else str(self.documents)
            print(f"generate: documents {done}, QA {self.accepted} accepted / "
                  f"{self.rejected} rejected, {self.requests} requests, {self.rate:.2f} req/s",
                  file=self._stream, flush=True)

    def requests_done(self, requests: int, requests_per_s: float) -> None:
        """Requests completed so far (moves the rate while a group of documents is still running)."""
        self.requests, self.rate = requests, requests_per_s
        if self._plain:
            self._line()
        if self._progress:
            self._progress.update(self._task, requests=requests, rate=requests_per_s)

    def document_done(self, result: Any, requests_per_s: float) -> None:
        self.accepted += sum(1 for r in result.qa_records if r["accepted"])
        self.rejected += sum(1 for r in result.qa_records if not r["accepted"])
        self.documents, self.rate = self.documents + 1, requests_per_s
        if self._plain:
            self._line()
        if self._progress:
            self._progress.update(self._task, advance=1, accepted=self.accepted, rejected=self.rejected,
                                  rate=requests_per_s)
