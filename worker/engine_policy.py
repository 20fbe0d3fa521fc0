"""What a job may make the workers call: operator-named engines, an allowlist, model names under roots.

Pure functions on a GenerationConfig and the settings, used twice: by the API (a refused job is a 4xx
before anything is queued) and by the worker (the same check again, so a job that reaches the queue
some other way -- `longscale generate --broker`, a forged message -- still calls nothing else). The
worker's credential for a named engine is read from its own environment here and goes to that engine's
base URL only; an allowlisted URL gets the client's own key or none (the OpenAI engine's
OPENAI_API_KEY fallback is switched off on workers). Names that do not resolve under a model root are
refused with one message whether the path exists or not, so a client cannot probe the worker's disk.
"""
from __future__ import annotations

import os
from pathlib import Path

from datafactory.config import GenerationConfig
from datafactory.engines import EngineError
from datafactory.engines.openai_engine import normalize_base_url
from worker.settings import EngineSpec, WorkerSettings

LOCAL_MODEL_FIELDS = ("model", "tokenizer", "target_tokenizer")


class EngineNotAllowed(ValueError):
    """The job names an engine, URL or model path the operator did not allow; `field` names the config field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _normalized(url: str) -> str | None:
    try:
        return normalize_base_url(url)
    except EngineError:
        return None


def named_engine(config: GenerationConfig, settings: WorkerSettings) -> EngineSpec | None:
    """The operator's engine whose base URL the config names, if any."""
    url = _normalized(config.base_url or "")
    return next((spec for spec in settings.engines.values() if url and _normalized(spec.base_url) == url), None)


def resolve_model_name(field: str, name: str, roots: list[Path]) -> str:
    """`name` (relative to a root, or absolute) as a resolved path under one of `roots`, or EngineNotAllowed."""
    for root in roots:
        base = root.resolve()
        try:
            candidate = (base / name).resolve()
        except (OSError, ValueError):
            continue
        if candidate.is_relative_to(base) and candidate.exists():
            return str(candidate)
    raise EngineNotAllowed(field, f"{field} {name!r} is not a model under the server's model roots")


def _check_models(config: GenerationConfig, settings: WorkerSettings) -> dict:
    fields = LOCAL_MODEL_FIELDS if config.engine != "openai" else LOCAL_MODEL_FIELDS[1:]
    return {f: resolve_model_name(f, getattr(config, f), settings.model_roots) for f in fields if getattr(config, f)}


def allowed_config(config: GenerationConfig, settings: WorkerSettings, engine_name: str | None = None) -> GenerationConfig:
    """The config a job runs with (named engine filled in, model paths resolved), or EngineNotAllowed."""
    update: dict = {}
    if engine_name is not None:
        spec = settings.engines.get(engine_name)
        if spec is None:
            raise EngineNotAllowed("engine_name", f"no engine named {engine_name!r} (this server offers: "
                                   f"{sorted(settings.engines) or 'none'})")
        update = {"engine": "openai", "base_url": spec.base_url, "model": spec.model or config.model}
        config = config.model_copy(update=update)
    if config.engine == "openai":
        url = _normalized(config.base_url or "")
        allowlist = {_normalized(u) for u in settings.engine_allowlist}
        if named_engine(config, settings) is None and (url is None or url not in allowlist):
            raise EngineNotAllowed("base_url", "base_url is not an engine this server allows; pick one by "
                                   f"engine_name ({sorted(settings.engines) or 'none offered'})")
        update["base_url"] = url
        spec = named_engine(config, settings)
        if spec is not None and spec.model:
            update["model"] = spec.model
    update.update(_check_models(config, settings))
    return config.model_copy(update=update)


def worker_config(config: GenerationConfig, settings: WorkerSettings) -> GenerationConfig:
    """On the worker: the allowed config with the credential it may send (its own for a named engine,
    the client's for an allowlisted URL, never the process's OPENAI_API_KEY)."""
    config = allowed_config(config, settings)
    spec = named_engine(config, settings) if config.engine == "openai" else None
    if spec is not None:
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        return config.model_copy(update={"api_key": key or None})
    return config
