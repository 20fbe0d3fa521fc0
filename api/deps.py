"""Dependencies: settings, the job store, and the caller (its key's SHA-256 compared in constant time)."""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from api.settings import ApiSettings, is_loopback, key_digest
from worker.jobstore import JobStore

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="your client's API key")


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool

    def may_see(self, job: dict) -> bool:
        return self.admin or job.get("owner") == self.name


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def identify(request: Request, key: str | None) -> Caller | None:
    """The client holding this key, None if none does (every client's digest is compared)."""
    settings: ApiSettings = request.app.state.settings
    if settings.auth_disabled:
        client = request.client.host if request.client else None
        return Caller("local", admin=True) if is_loopback(client) else None
    if not key:
        return None
    digest = key_digest(key)
    found = None
    for name, client in request.app.state.clients.items():
        if hmac.compare_digest(digest, client.sha256):
            found = Caller(name, client.admin)
    return found


def require_api_key(request: Request, key: str | None = Security(api_key_header),
                    settings: ApiSettings = Depends(get_settings)) -> Caller:
    caller = identify(request, key)
    if caller is None:
        if settings.auth_disabled:
            raise HTTPException(403, "authentication is disabled on this server, so only loopback clients "
                                     "are served")
        raise HTTPException(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
    return caller
