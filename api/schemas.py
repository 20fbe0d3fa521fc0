"""Request and response bodies. The generation config is datafactory's own model, so a bad field gets the
same message as on the CLI, and the 422 names it (loc = body.config.<field>)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from datafactory.config import GenerationConfig

JOB_ID_PATTERN = r"^[0-9a-f]{16}$"
JobStatus = Literal["queued", "preparing", "running", "succeeded", "partial", "failed", "cancelled"]


class InlineDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=512, description="document id (default: a hash of the text)")
    text: str = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)


class JobCreate(BaseModel):
    """Documents inline or a path under the data root (uploads: POST /v1/jobs/upload)."""
    model_config = ConfigDict(extra="forbid")

    config: GenerationConfig = Field(default_factory=GenerationConfig)
    engine_name: str | None = Field(None, max_length=128, description="one of the server's named engines "
                                    "(LONGSCALE_ENGINES); sets the config's engine, base_url and model")
    documents: list[InlineDocument] | None = Field(None, min_length=1, max_length=100_000)
    path: str | None = Field(None, min_length=1, max_length=4096,
                             description="file or folder relative to the server's data root")

    @model_validator(mode="after")
    def _one_source(self) -> "JobCreate":
        if (self.documents is None) == (self.path is None):
            raise ValueError("give exactly one of 'documents' (inline) or 'path' (under the data root)")
        return self


class JobError(BaseModel):
    document: str | None
    error: str
    at: float


class Job(BaseModel):
    id: str
    status: JobStatus
    owner: str | None = Field(None, description="the client that submitted it")
    reason: str | None = None
    cancel_requested: bool = False
    documents_total: int = 0
    documents_done: int = 0
    documents_failed: int = 0
    documents_cancelled: int = 0
    documents_too_short: int = 0
    qa_records: int = 0
    qa_accepted: int = 0
    instances: int = 0
    requests: int = 0
    requests_per_second: float = 0.0
    documents_per_second: float = 0.0
    engine_seconds: float = 0.0
    task_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    created_at: float | None = None
    started_at: float | None = None
    last_settled_at: float | None = Field(None, description="when the latest document finished")
    finished_at: float | None = None
    restored_at: float | None = Field(None, description="when the job was rebuilt from its output directory "
                                      "after Redis lost it (its counts then come from the journal)")
    config: dict[str, Any] = Field(default_factory=dict, description="the config, API key masked")
    source: dict[str, Any] = Field(default_factory=dict)
    errors: list[JobError] = Field(default_factory=list, description="latest errors, oldest first")
    links: dict[str, str] = Field(default_factory=dict)


class JobPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[Job]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    redis: str | None = Field(None, description="shown to callers with a key only")
    engine: str | None = Field(None, description="shown to callers with a key only")
