"""Progress for every long-running command: a redrawing bar on a terminal, plain lines anywhere else.

A bar that redraws in place (carriage returns, escapes) is noise in a log file, CI or `nohup`, so when the
stream is not a terminal `progress()` returns `PlainProgress`, which prints one whole line at most every
`interval` seconds and one at the end. `LineThrottle` is that timing, shared with generate's rich bar.
The libraries' own bars (transformers, huggingface_hub, datasets) are switched off there for the
command's duration by `library_bars_off_a_terminal`.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TextIO

PLAIN_INTERVAL_S = 10.0


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LineThrottle:
    """True at most once per `interval` seconds (always when forced): when the next plain line is due."""

    def __init__(self, interval: float = PLAIN_INTERVAL_S):
        self.interval, self._last = interval, float("-inf")

    def due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            return True
        return False


class PlainProgress:
    """The tqdm calls our commands use (update, set_postfix, close, iteration, `with`), as plain lines:
    `desc: n/total unit, key=value ...`."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, disable: bool = False, stream: TextIO | None = None,
                 interval: float = PLAIN_INTERVAL_S):
        self.iterable, self.desc, self.unit, self.n, self.disable = iterable, desc, unit, initial, disable
        self.total = total if total is not None else (len(iterable) if isinstance(iterable, Sized) else None)
        self.postfix: dict[str, Any] = {}
        self._stream, self._throttle, self._closed = stream or sys.stderr, LineThrottle(interval), False
        self._printed: tuple | None = None

    def _line(self, force: bool = False) -> None:
        if self.disable or not self._throttle.due(force):
            return
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done} {self.unit}{extra}", file=self._stream, flush=True)
        self._printed = (self.n, dict(self.postfix))

    def update(self, n: int = 1) -> None:
        self.n += n
        self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values  # shown with the next line; setting it prints nothing by itself

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._printed != (self.n, self.postfix):  # the last line, unless it was just printed
                self._line(force=True)

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, stream: TextIO | None = None, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, `PlainProgress` otherwise; same arguments (total, desc, unit, initial,
    disable, leave)."""
    stream = stream or sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("leave", None)
    return PlainProgress(iterable, stream=stream, **kwargs)


@contextmanager
def library_bars_off_a_terminal(stream: TextIO | None = None) -> Iterator[None]:
    """Off a terminal, the tqdm bars of transformers ("Loading weights"), huggingface_hub (downloads) and
    datasets ("Saving the dataset") are off while the block runs, then restored: they redraw with carriage
    returns and have no plain mode."""
    if is_terminal(stream or sys.stderr):
        yield
        return
    import datasets
    import huggingface_hub.utils as hub
    import transformers.utils.logging as hf_logging

    switches = [(hf_logging.is_progress_bar_enabled, hf_logging.disable_progress_bar, hf_logging.enable_progress_bar),
                (lambda: not hub.are_progress_bars_disabled(), hub.disable_progress_bars, hub.enable_progress_bars),
                (datasets.is_progress_bar_enabled, datasets.disable_progress_bars, datasets.enable_progress_bars)]
    were_on = [is_on() for is_on, _, _ in switches]
    for _, off, _ in switches:
        off()
    try:
        yield
    finally:
        for (_, _, on), was_on in zip(switches, were_on, strict=True):
            if was_on:
                on()
