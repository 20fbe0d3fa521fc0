"""/v1/healthz (open: for load balancers and compose healthchecks) and /v1/metrics (key required)."""
from __future__ import annotations

import httpx
from fastapi import APIRouter, Depends, Request, Response, Security
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import api_key_header, get_settings, get_store, identify, require_api_key
from api.schemas import Health
from api.settings import ApiSettings
from worker.jobstore import JobStore

router = APIRouter(tags=["service"])


def _engine_state(url: str | None) -> tuple[bool, str]:
    if not url:
        return True, "not checked (LONGSCALE_ENGINE_URL unset)"
    models = url.rstrip("/") + "/models"
    try:
        reply = httpx.get(models, timeout=3.0)
    except httpx.HTTPError as exc:
        return False, f"unreachable: {type(exc).__name__} on GET {models}"
    if reply.status_code != 200:
        return False, f"GET {models} -> HTTP {reply.status_code}"
    return True, "ok"


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, responses={503: {"model": Health}},
            summary="Redis and the configured engine reachable (the details only for a caller with a key)")
def healthz(request: Request, response: Response, settings: ApiSettings = Depends(get_settings),
            store: JobStore = Depends(get_store), key: str | None = Security(api_key_header)) -> Health:
    try:
        store.ping()
        redis_ok, redis_state = True, "ok"
    except Exception as exc:
        redis_ok, redis_state = False, f"unreachable: {type(exc).__name__}: {exc}"
    engine_ok, engine_state = _engine_state(settings.engine_url)
    healthy = redis_ok and engine_ok
    response.status_code = 200 if healthy else 503
    if identify(request, key) is None:  # load balancers need the status; addresses are for operators
        return Health(status="ok" if healthy else "degraded")
    return Health(status="ok" if healthy else "degraded", redis=redis_state, engine=engine_state)


@router.get("/metrics", dependencies=[Depends(require_api_key)], response_class=Response,
            responses={200: {"content": {"text/plain": {}}}}, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
