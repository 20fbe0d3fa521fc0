"""Progress for every long-running command: a redrawing bar on a terminal, plain lines anywhere else.

A bar that redraws in place (carriage returns, escapes) is noise in a log file, CI or `nohup`, so when the
stream is not a terminal `progress()` returns `PlainProgress`, which prints one whole line at most every
`interval` seconds and one at the end. `LineThrottle` is that timing, shared with generate's rich bar.
The libraries' own bars (transformers, huggingface_hub, datasets) are switched off there for the
command's duration by `library_bars_off_a_terminal`.
"""
from __future__ import annotations

import importlib.abc
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


def _switches() -> dict[str, Any]:
    """Per library: the module that holds its progress-bar switch, and (is_on, off, on) given that module."""
    return {
        "transformers.utils.logging": lambda m: (m.is_progress_bar_enabled, m.disable_progress_bar,
                                                 m.enable_progress_bar),
        "huggingface_hub.utils": lambda m: (lambda: not m.are_progress_bars_disabled(), m.disable_progress_bars,
                                            m.enable_progress_bars),
        "datasets": lambda m: (m.is_progress_bar_enabled, m.disable_progress_bars, m.enable_progress_bars),
    }


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `hooks[name](module)` right after module `name` is first imported (its code has run)."""

    def __init__(self, hooks: dict[str, Any]) -> None:
        self.hooks = hooks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        hook: Any = self.hooks.get(name)
        if hook is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader: Any = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec

        class Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                hook(module)

        spec.loader = Loader()
        return spec


@contextmanager
def library_bars_off_a_terminal(stream: TextIO | None = None) -> Iterator[None]:
    """Off a terminal, the tqdm bars of transformers ("Loading weights"), huggingface_hub (downloads) and
    datasets ("Saving the dataset") are off while the block runs, then restored: they redraw with carriage
    returns and have no plain mode. A library not imported yet is not imported for this (datasets and
    transformers cost ~1 CPU-s to import, which `longscale generate` against a server never needs): its bars
    are switched off when the block imports it."""
    if is_terminal(stream or sys.stderr):
        yield
        return
    restore: list[Any] = []
    switched: set[str] = set()

    def switch_off(name: str, module: Any) -> None:
        is_on, off, on = _switches()[name](module)
        # transformers takes its first state from huggingface_hub's, which this block may have switched off
        if is_on() or (name == "transformers.utils.logging" and "huggingface_hub.utils" in switched):
            restore.append(on)
            switched.add(name)
        off()

    pending: dict[str, Any] = {}
    for name in _switches():
        if name in sys.modules:
            switch_off(name, sys.modules[name])
        else:
            pending[name] = lambda module, name=name: switch_off(name, module)
    finder = _AfterImport(pending)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for on in reversed(restore):
            on()
