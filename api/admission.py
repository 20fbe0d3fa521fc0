"""What a job must pass before it is queued: the operator's limits (429/413/422 naming the setting), inputs
under the data root with no symlink anywhere on the way or inside, documents counted before they are read.

Counting is cheap on purpose, and counts what the worker will read: `datafactory.documents.count_documents`
(the records reader's `count_records`: a Parquet file's rows from its footer, a JSONL file's non-blank lines,
a JSON array's elements one at a time, a saved dataset's rows, one per .txt/.md file), so a small file that
expands into millions of documents is refused before it is loaded, in the memory of one record.
"""
from __future__ import annotations

import os
from pathlib import Path

from fastapi import HTTPException

from api.settings import ApiSettings
from datafactory.config import GenerationConfig
from worker.jobstore import JobStore


def limit_error(status: int, what: str, limit: int, setting: str) -> HTTPException:
    return HTTPException(status, f"{what} (limit {limit}: LONGSCALE_{setting})")


def check_config_limits(config: GenerationConfig, settings: ApiSettings) -> None:
    if config.concurrency > settings.max_requests_in_flight_per_job:
        raise limit_error(422, f"concurrency {config.concurrency} asks for more requests in flight than allowed",
                          settings.max_requests_in_flight_per_job, "MAX_REQUESTS_IN_FLIGHT_PER_JOB")
    if config.chunks_per_doc == "all" or config.chunks_per_doc > settings.max_chunks_per_doc:
        raise limit_error(422, f"chunks_per_doc {config.chunks_per_doc!r} is over the limit",
                          settings.max_chunks_per_doc, "MAX_CHUNKS_PER_DOC")


def check_jobs_in_flight(store: JobStore, owner: str, settings: ApiSettings) -> None:
    running = store.jobs_in_flight(owner)
    if running >= settings.max_jobs_in_flight:
        raise HTTPException(429, f"{running} of your jobs have not ended yet (limit {settings.max_jobs_in_flight}: "
                            "LONGSCALE_MAX_JOBS_IN_FLIGHT); wait for one to end or cancel one",
                            headers={"Retry-After": "30"})


def check_document_count(count: int, settings: ApiSettings) -> None:
    if count > settings.max_documents_per_job:
        raise limit_error(413, f"{count} documents in one job", settings.max_documents_per_job,
                          "MAX_DOCUMENTS_PER_JOB")


def check_document_bytes(texts, settings: ApiSettings) -> None:
    for number, text in enumerate(texts):
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > settings.max_document_bytes:
            raise limit_error(413, f"document {number} has {size} bytes", settings.max_document_bytes,
                              "MAX_DOCUMENT_BYTES")


def resolve_under_root(root: Path, relative: str) -> Path:
    """The path inside the data root, or 403 when it leaves the root or a symlink lies anywhere on the way
    or (for a folder) anywhere inside it; 422 when it does not exist."""
    base = root.resolve()
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise HTTPException(403, f"path {relative!r} is outside the data root (paths are relative to it, "
                                 "without '..')")
    candidate = base / relative
    try:
        parts = candidate.relative_to(base).parts
    except ValueError:
        raise HTTPException(403, f"path {relative!r} is outside the data root") from None
    step = base
    for part in parts:
        step = step / part
        if step.is_symlink():
            raise HTTPException(403, f"path {relative!r} goes through a symlink: symlinks are not followed, "
                                     "so nothing outside the data root is read")
    try:
        exists = candidate.exists()
    except (ValueError, OSError) as exc:  # NUL bytes, over-long names
        raise HTTPException(422, f"invalid path {relative!r}: {type(exc).__name__}") from None
    if not exists:
        raise HTTPException(422, f"path {relative!r} does not exist under the data root")
    if candidate.is_dir():
        for folder, dirs, files in os.walk(candidate):
            for name in dirs + files:
                if os.path.islink(os.path.join(folder, name)):
                    raise HTTPException(403, f"path {relative!r} holds a symlink: symlinks are not followed, "
                                             "so nothing outside the data root is read")
    return candidate
