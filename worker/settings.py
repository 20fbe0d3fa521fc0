"""Settings shared by the Celery app, the job store and the submitter (env prefix LONGSCALE_).

Redis is both broker and result backend, so one URL is enough. The visibility timeout must exceed the
longest task: past it, Redis hands an unacknowledged task to another worker (that is how a SIGKILLed
worker's task comes back), and a task still running would then run twice -- harmless, since records are
idempotent, but wasted work.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSpec(BaseModel):
    """An engine the operator lets jobs use, by name: where it is, which served model, and the name of the
    environment variable holding its credential (read on the workers only, never stored or sent elsewhere)."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://vllm:8000/v1")
    model: str | None = Field(None, description="served model name (default: the server's first)")
    api_key_env: str | None = Field(None, description="environment variable with this engine's API key")


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LONGSCALE_", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis: Celery broker, result backend, job state")
    visibility_timeout: int = Field(3 * 3600, ge=1, description="seconds before an unacknowledged task is "
                                    "redelivered; must exceed the longest document task")
    restore_interval: int = Field(10, ge=1, description="seconds between sweeps that redeliver tasks of dead "
                                  "workers (kombu's unacked_restore_interval; throttle 1)")
    task_retries: int = Field(4, ge=0, description="task-level retries of a document when the engine is down")
    retry_backoff: float = Field(5.0, gt=0, description="first retry delay in seconds (doubles each time)")
    retry_backoff_max: float = Field(300.0, gt=0, description="longest retry delay in seconds")
    queue: str = Field("longscale", description="Celery queue the generation tasks go to")
    max_lost_deliveries: int = Field(2, ge=1, description="a document whose worker died this many times while "
                                     "running it (out of memory, a crash) fails instead of being redelivered")
    document_time_limit: int = Field(2 * 3600, ge=1, description="seconds one document may take before it fails "
                                     "alone (its generation only, not loading the engine or Redis bookkeeping; a process stuck 60 s past it is replaced, prefork pool)")

    engines: dict[str, EngineSpec] = Field(default_factory=dict, description="named engines jobs may use "
                                           "(JSON: {name: {base_url, model, api_key_env}})")
    engine_allowlist: list[str] = Field(default_factory=list, description="further base URLs a client may name "
                                        "itself (JSON list); no worker credential is ever sent to them")
    model_roots: list[Path] = Field(default_factory=list, description="folders under which a job's model and "
                                    "tokenizer names resolve (JSON list); none = only the embedded model")
    lease_seconds: float = Field(60.0, gt=0, le=3600, description="a running document's lease: its worker renews "
                                 "it every third of this; past it unrenewed, the document runs again elsewhere")
    reconcile_interval: float = Field(15.0, gt=0, le=3600, description="seconds between reconciler sweeps "
                                      "(re-run documents of dead workers, finish jobs whose workers are gone)")
    abandon_after_seconds: int = Field(3600, ge=60, description="a job that has made no progress for this long "
                                       "while no worker is alive ends `failed`, saying so (records kept)")
    job_retention_seconds: int = Field(7 * 24 * 3600, ge=60, description="finished jobs expire from Redis and "
                                       "their folders under the jobs root are removed after this")

    @model_validator(mode="after")
    def _visibility_exceeds_tasks(self) -> "WorkerSettings":
        if self.visibility_timeout <= self.document_time_limit:
            raise ValueError(f"visibility_timeout ({self.visibility_timeout}s) must exceed document_time_limit "
                             f"({self.document_time_limit}s), or a running document is handed to a second worker")
        return self


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
