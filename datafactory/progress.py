"""Live progress of a generation run (rich): documents done, QA accepted/rejected, requests/s, ETA."""
from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class GenerationProgress:
    """A progress bar on stderr; a no-op when disabled (tests, the Celery worker)."""

    def __init__(self, total_documents: int, enabled: bool = True):
        self.enabled = enabled
        self.accepted = self.rejected = 0
        self._progress: Progress | None = None
        if enabled:
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

    def requests_done(self, requests: int, requests_per_s: float) -> None:
        """Requests completed so far (moves the rate while a group of documents is still running)."""
        if self._progress:
            self._progress.update(self._task, requests=requests, rate=requests_per_s)

    def document_done(self, result: Any, requests_per_s: float) -> None:
        self.accepted += sum(1 for r in result.qa_records if r["accepted"])
        self.rejected += sum(1 for r in result.qa_records if not r["accepted"])
        if self._progress:
            self._progress.update(self._task, advance=1, accepted=self.accepted, rejected=self.rejected,
                                  rate=requests_per_s)
