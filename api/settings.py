"""API settings from the environment (prefix LONGSCALE_), on top of the worker's (Redis URL, queue).

No API key and no explicit opt-out is a startup error: an open jobs API can read and write files under
its roots. The opt-out (`LONGSCALE_AUTH_DISABLED=true`) is honoured only for loopback clients.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from worker.settings import WorkerSettings


class ApiClient(BaseModel):
    """One client's key, stored as its SHA-256 (hex); an admin sees and cancels every job."""
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    admin: bool = False


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiSettings(WorkerSettings):
    model_config = SettingsConfigDict(env_prefix="LONGSCALE_", extra="ignore")

    api_key: SecretStr | None = Field(None, description="the admin's X-API-Key value (sees every job)")
    api_keys: dict[str, ApiClient] = Field(default_factory=dict, description="clients by name, each with its "
                                           "key's SHA-256 (JSON: {name: {sha256, admin}}); jobs are owned by "
                                           "the client that submitted them")
    api_keys_file: Path | None = Field(None, description="a JSON file of the same shape as API_KEYS, read at start")
    auth_disabled: bool = Field(False, description="serve without a key, to loopback clients only")
    data_root: Path = Field(Path("./data"), description="jobs may name input paths under this folder only")
    jobs_root: Path = Field(Path("./jobs"), description="each job's uploads and output land in jobs_root/<id>/ "
                            "(must be shared with the workers)")
    max_request_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="largest request body (413 past it)")
    engine_url: str | None = Field(None, description="OpenAI-compatible base URL that /healthz checks "
                                   "(e.g. http://vllm:8000/v1); unset = not checked")
    max_jobs_in_flight: int = Field(8, ge=1, le=10_000, description="jobs not yet ended per client (429 past it)")
    max_documents_per_job: int = Field(10_000, ge=1, le=10_000_000, description="documents in one job (413)")
    max_document_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="UTF-8 bytes of one document's text (413)")
    max_requests_in_flight_per_job: int = Field(64, ge=1, le=4096, description="largest `concurrency` a job may "
                                                "ask for (requests in flight per worker process, 422 past it)")
    max_chunks_per_doc: int = Field(64, ge=1, le=100_000, description="largest `chunks_per_doc` a job may ask "
                                    "for ('all' is refused past it too)")
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024, description="request line + headers "
                                  "(uvicorn's h11 parser refuses more)")
    keep_alive_seconds: int = Field(5, ge=1, le=300, description="idle connections are closed after this")
    host: str = Field("127.0.0.1", description="bind address of `longscale api`")
    port: int = Field(8080, ge=1, le=65535, description="port of `longscale api`")


def api_clients(settings: ApiSettings) -> dict[str, ApiClient]:
    """Every client by name: API_KEYS, API_KEYS_FILE, and API_KEY as the client `admin`."""
    clients = dict(settings.api_keys)
    if settings.api_keys_file is not None:
        data = json.loads(Path(settings.api_keys_file).read_text())
        clients.update({name: ApiClient.model_validate(c) for name, c in data.items()})
    if settings.api_key is not None and settings.api_key.get_secret_value():
        clients["admin"] = ApiClient(sha256=key_digest(settings.api_key.get_secret_value()), admin=True)
    return clients


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    return ApiSettings()
