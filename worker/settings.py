"""Settings shared by the Celery app, the job store and the submitter (env prefix LONGSCALE_).

Redis is both broker and result backend, so one URL is enough. The visibility timeout must exceed the
longest task: past it, Redis hands an unacknowledged task to another worker (that is how a SIGKILLed
worker's task comes back), and a task still running would then run twice -- harmless, since records are
idempotent, but wasted work.
"""
from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
                                     "alone (soft limit; the process is replaced 60 s later; prefork pool only)")

    @model_validator(mode="after")
    def _visibility_exceeds_tasks(self) -> "WorkerSettings":
        if self.visibility_timeout <= self.document_time_limit:
            raise ValueError(f"visibility_timeout ({self.visibility_timeout}s) must exceed document_time_limit "
                             f"({self.document_time_limit}s), or a running document is handed to a second worker")
        return self


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
