"""Request-body bound enforced while the body streams in, not only from Content-Length.

A pure ASGI middleware: a declared Content-Length over the bound is refused before anything is read; a
chunked or lying body is counted as it arrives and refused (HTTPException 413, turned into a response
by FastAPI's exception middleware) at the first byte past the bound.
"""
from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes (LONGSCALE_MAX_REQUEST_BYTES)"


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status = 413 if declared.isdigit() else 400
            detail = _too_large(self.max_bytes) if status == 413 else "invalid Content-Length"
            await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=_too_large(self.max_bytes))
            return message

        await self.app(scope, counting_receive, send)


class HeaderSizeLimit:
    """Request headers past `max_bytes` in all (names + values) are a 431. h11 bounds only a head that is
    still incomplete in its buffer; a big head arriving in one read would pass it, so the app checks too."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope.get("headers") or [])
            if size > self.max_bytes:
                detail = f"request headers of {size} bytes (limit {self.max_bytes}: LONGSCALE_MAX_HEADER_BYTES)"
                await JSONResponse({"detail": detail}, status_code=431)(scope, receive, send)
                return
        await self.app(scope, receive, send)
