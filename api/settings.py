"""API settings from the environment (prefix LONGSCALE_), on top of the worker's (Redis URL, queue).

No API key and no explicit opt-out is a startup error: an open jobs API can read and write files under
its roots. The opt-out (`LONGSCALE_AUTH_DISABLED=true`) is honoured only for loopback clients.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from worker.settings import WorkerSettings


class ApiSettings(WorkerSettings):
    model_config = SettingsConfigDict(env_prefix="LONGSCALE_", extra="ignore")

    api_key: SecretStr | None = Field(None, description="value clients send in the X-API-Key header")
    auth_disabled: bool = Field(False, description="serve without a key, to loopback clients only")
    data_root: Path = Field(Path("./data"), description="jobs may name input paths under this folder only")
    jobs_root: Path = Field(Path("./jobs"), description="each job's uploads and output land in jobs_root/<id>/ "
                            "(must be shared with the workers)")
    max_request_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="largest request body (413 past it)")
    engine_url: str | None = Field(None, description="OpenAI-compatible base URL that /healthz checks "
                                   "(e.g. http://vllm:8000/v1); unset = not checked")
    host: str = Field("127.0.0.1", description="bind address of `longscale api`")
    port: int = Field(8080, ge=1, le=65535, description="port of `longscale api`")


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
