"""`longscale api`: serve the jobs API with uvicorn (settings from LONGSCALE_* environment variables)."""
from __future__ import annotations

import argparse

from longscale.common.errors import ConfigError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import check_auth_settings
    from api.settings import get_api_settings, is_loopback

    settings = get_api_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    check_auth_settings(settings)
    if settings.auth_disabled and not is_loopback(host):
        raise ConfigError(f"LONGSCALE_AUTH_DISABLED=true serves loopback only; bind --host 127.0.0.1, not {host}, "
                          "or set LONGSCALE_API_KEY")
    from api.http_protocol import BoundedH11Protocol

    # h11 (not httptools) bounds the request head (LONGSCALE_MAX_HEADER_BYTES: a 400 past it); every request
    # head must arrive within LONGSCALE_KEEP_ALIVE_SECONDS, idle connections close after it
    uvicorn.run("api.main:create_app", factory=True, host=host, port=port, log_level=args.log_level,
                workers=args.workers, http=BoundedH11Protocol, h11_max_incomplete_event_size=settings.max_header_bytes,
                timeout_keep_alive=settings.keep_alive_seconds)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("api", help="serve the generation jobs API (FastAPI under /v1, docs at /docs)")
    parser.add_argument("--host", default=None, help="bind address (default: LONGSCALE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: LONGSCALE_PORT or 8080)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=_serve)
