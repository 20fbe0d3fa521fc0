"""Dependencies: settings, the job store, and the API-key check (constant-time compare)."""
from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from api.settings import ApiSettings, is_loopback
from worker.jobstore import JobStore

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's LONGSCALE_API_KEY")


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def require_api_key(request: Request, key: str | None = Security(api_key_header),
                    settings: ApiSettings = Depends(get_settings)) -> None:
    if settings.auth_disabled:
        client = request.client.host if request.client else None
        if not is_loopback(client):
            raise HTTPException(403, "authentication is disabled on this server, so only loopback clients "
                                     "are served")
        return
    expected = settings.api_key.get_secret_value() if settings.api_key else ""
    if not key or not expected or not secrets.compare_digest(key.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
