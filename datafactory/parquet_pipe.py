"""A Parquet writer whose `write_table` calls run on one background thread, so that the caller builds the
next batch (JSON decoding, Arrow conversion: the GIL) while the last one is encoded, compressed and written
(pyarrow releases the GIL there). finalize's two halves then overlap on two cores instead of adding up.

The trade-off: up to `depth` batches wait in the queue besides the one being written and the one being
built (memory: a few batches, not one), and a write's error surfaces at the next call or at `close`.
The calls reach the file in order on one thread, so the file is byte for byte the synchronous writer's.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any


class PipedParquetWriter:
    """`pyarrow.parquet.ParquetWriter(path, schema)` with its writes queued to a thread."""

    def __init__(self, path: str | Path, schema: Any, depth: int = 1) -> None:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(path, schema)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="parquet-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:  # after a failure the rest is drained unwritten (the caller is told)
                try:
                    self._writer.write_table(table)
                except BaseException as exc:  # noqa: B036 - handed to the caller's thread
                    self._error = exc

    def write_table(self, table: Any) -> None:
        """Queue a table (waits while `depth` are queued); raises an earlier write's error."""
        if self._error is not None:
            raise self._error
        self._queue.put(table)

    def close(self) -> None:
        """Wait for the queued writes, close the file; raises the first write's error."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._writer.close()
        if self._error is not None:
            raise self._error
