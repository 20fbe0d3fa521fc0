"""The FastAPI app: /v1 routes, the body bound, metrics; OpenAPI at /docs and /openapi.json.

`create_app()` is the uvicorn factory (`uvicorn --factory api.main:create_app`); settings come from the
environment unless given.
"""
from __future__ import annotations

import json
import logging
import threading
from contextlib import asynccontextmanager

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from api.housekeeping import run_housekeeping
from api.limits import BodySizeLimit, HeaderSizeLimit
from api.metrics import API_PREFIX, Metrics, MetricsMiddleware, record_route
from api.routes import health, jobs
from api.settings import ApiSettings, api_clients, get_api_settings
from longscale import __version__
from longscale.common.errors import ConfigError
from worker.jobstore import JobStore

log = logging.getLogger(__name__)


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:  # registered for RedisError
    log.warning("Redis unavailable: %s", exc)  # the address is for the operator's log, not the client
    return JSONResponse({"detail": f"job store unavailable ({type(exc).__name__}); retry later"},
                        status_code=503, headers={"Retry-After": "5"})


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """FastAPI's 422, rendered ASCII-escaped: the echoed input may hold a lone surrogate, which UTF-8 cannot
    encode (the default renderer would turn the 422 into a 500)."""
    assert isinstance(exc, RequestValidationError)  # registered for it; Starlette types handlers by Exception
    body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


def check_auth_settings(settings: ApiSettings) -> None:
    if not settings.auth_disabled and not api_clients(settings):
        raise ConfigError("set LONGSCALE_API_KEY (clients send it as X-API-Key) or LONGSCALE_API_KEYS / "
                          "LONGSCALE_API_KEYS_FILE, or LONGSCALE_AUTH_DISABLED=true to serve loopback clients "
                          "without a key")


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or get_api_settings()
    check_auth_settings(settings)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        thread = threading.Thread(target=run_housekeeping, args=(app.state.store, settings, stop), daemon=True,
                                  name="housekeeping")
        thread.start()
        yield
        stop.set()

    app = FastAPI(title="longscale", version=__version__, dependencies=[Depends(record_route)], lifespan=lifespan,
                  description="Generation jobs: long documents in, long-context QA instruction data out.")
    app.state.settings = settings
    app.state.clients = api_clients(settings)
    app.state.store = JobStore.from_url(settings.redis_url, ride_out_seconds=5)  # a client waits 5 s at most
    app.state.metrics = Metrics(app.state.store)
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(health.router, prefix=API_PREFIX)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(HeaderSizeLimit, max_bytes=settings.max_header_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_exception_handler(redis.RedisError, _redis_unavailable)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app
