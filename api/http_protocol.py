"""uvicorn's h11 protocol with a deadline for every request head (slow-client defence).

uvicorn closes a connection idle *after* a response (`timeout_keep_alive`) but never one that has not yet
sent a whole request line and headers: each byte a client trickles in cancels the timer, so a few hundred
stalled connections stay open for good. Here each connection, and each keep-alive turn, must deliver a
complete request head within `timeout_keep_alive` seconds, or it is closed; a request being served (its
body, the app, the response) is not timed. The head's size is h11's bound (`h11_max_incomplete_event_size`).
"""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class BoundedH11Protocol(H11Protocol):
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self._head_too_slow)

    def _head_too_slow(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete  # no request in service
        if waiting and not self.transport.is_closing():
            self.transport.close()
