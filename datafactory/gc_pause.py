"""Fewer and cheaper garbage collections while a corpus is generated.

A run's event-loop process holds ~10^6 long-lived objects (modules: aiohttp, pyarrow and the pandas it
imports, the tokenizer) that every full collection walks again, although almost nothing the factory makes
is cyclic garbage (records, documents and results are freed by reference counting). At 10,000 documents
CPython ran ~1,650 collections there, 12 of them full, ~1.4 CPU-s. `gc.freeze()` moves what exists into a
permanent generation that collections skip, and a larger first-generation threshold makes the young
collections rarer. The trade-off: cyclic garbage made before a freeze is never reclaimed (bounded: what is
alive at that moment), and cycles made during the run wait longer (a few thousand more allocations).
"""
from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)
_lock = threading.Lock()
_active = 0  # fewer_collections blocks entered and not left (freeze_now acts only inside one)
_saved_threshold = gc.get_threshold()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Freeze what exists, raise the young threshold; both restored (unfrozen) when the outermost block
    is left."""
    global _active, _saved_threshold
    with _lock:
        _active += 1
        if _active == 1:
            _saved_threshold = gc.get_threshold()
            gc.set_threshold(max(_saved_threshold[0], YOUNG_THRESHOLD), *_saved_threshold[1:])
        gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                gc.set_threshold(*_saved_threshold)
                gc.unfreeze()


def freeze_now() -> None:
    """Inside a `fewer_collections` block, move what exists now into the permanent generation (after a late
    import, e.g. pyarrow's on a thread); elsewhere nothing."""
    with _lock:
        if _active:
            gc.freeze()
