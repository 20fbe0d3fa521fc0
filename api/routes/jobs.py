"""/v1/jobs: submit (inline, upload or data-root path), list, inspect, cancel, download."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, StreamingResponse
from pyarrow import ArrowException
from pydantic import ValidationError

from api.admission import (
    check_config_limits,
    check_document_bytes,
    check_document_count,
    check_jobs_in_flight,
    resolve_under_root,
)
from api.deps import Caller, get_settings, get_store, require_api_key
from api.metrics import API_PREFIX
from api.schemas import JOB_ID_PATTERN, Job, JobCreate, JobPage
from api.settings import ApiSettings
from datafactory.config import GenerationConfig
from datafactory.documents import DocumentError, count_documents, iter_documents
from datafactory.output import INSTANCES_FILE, QA_FILE
from worker.engine_policy import EngineNotAllowed, allowed_config
from worker.jobstore import FINAL_STATES, JobStore, new_job_id
from worker.reconciler import restore_job
from worker.submit import sender, start_job

router = APIRouter(prefix="/jobs", tags=["jobs"])
JobId = PathParam(pattern=JOB_ID_PATTERN, description="16 hex digits")
UPLOAD_SUFFIXES = (".jsonl", ".json", ".parquet")


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)*[\w.@+-]+")


def public_text(text: str | None) -> str | None:
    """A reason or error as a client sees it: absolute server paths replaced by their last component."""
    return _ABSOLUTE_PATH.sub(lambda m: ".../" + m.group(0).rsplit("/", 1)[-1], text) if text else text


def _job_view(job: dict, request: Request) -> Job:
    """Links are relative (never built from the client's Host header); reasons carry no server paths."""
    base = f"{API_PREFIX}/jobs/{job['id']}"
    errors = [dict(e, error=public_text(e["error"])) for e in job.get("errors", [])]
    job = dict(job, reason=public_text(job["reason"]), errors=errors,
               links={"self": base, "qa": base + "/qa", "instances": base + "/instances"})
    return Job.model_validate(job)


def _allowed(config: GenerationConfig, engine_name: str | None, settings: ApiSettings) -> GenerationConfig:
    """The operator's engine policy (see worker.engine_policy): a refusal is a 422 naming the field."""
    try:
        return allowed_config(config, settings, engine_name)
    except EngineNotAllowed as exc:
        loc = ("body", "engine_name") if exc.field == "engine_name" else ("body", "config", exc.field)
        raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": str(exc),
                                       "input": None}]) from None


def _submit(store: JobStore, settings: ApiSettings, request: Request, caller: Caller, job_id: str,
            input_path: Path, config: GenerationConfig, source: dict) -> Job:
    output_dir = settings.jobs_root / job_id / "output"
    start_job(store, settings.redis_url, [input_path], config, output_dir, job_id=job_id, source=source,
              queue=settings.queue, extra={"owner": caller.name})
    request.app.state.metrics.jobs_submitted.inc()
    return _job_view(store.require(job_id), request)


def _admit(body_config: GenerationConfig, engine_name: str | None, settings: ApiSettings, store: JobStore,
           caller: Caller) -> GenerationConfig:
    config = _allowed(body_config, engine_name, settings)
    check_config_limits(config, settings)
    check_jobs_in_flight(store, caller.name, settings)
    return config


@router.post("", status_code=202, response_model=Job, summary="Submit a job: documents inline or a data-root path")
def create_job(body: JobCreate, request: Request, settings: ApiSettings = Depends(get_settings),
               store: JobStore = Depends(get_store), caller: Caller = Depends(require_api_key)) -> Job:
    job_id = new_job_id()
    config = _admit(body.config, body.engine_name, settings, store, caller)
    if body.path is not None:
        path = resolve_under_root(settings.data_root, body.path)
        try:
            count = count_documents([path])
        except (DocumentError, OSError) as exc:  # an unsupported or unreadable input: the worker would fail on it
            message = public_text(str(exc).replace(str(path), body.path)) or type(exc).__name__
            raise RequestValidationError([{"type": "value_error", "loc": ("body", "path"), "msg": message,
                                           "input": body.path}]) from None
        check_document_count(count, settings)
        return _submit(store, settings, request, caller, job_id, path, config, {"kind": "path", "path": body.path})
    documents = body.documents or []
    check_document_count(len(documents), settings)
    check_document_bytes((doc.text for doc in documents), settings)
    records = []
    for number, doc in enumerate(documents):
        clash = {config.text_field, config.id_field} & set(doc.meta)
        if clash:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", "documents", number, "meta"),
                                           "msg": f"meta may not use the field names {sorted(clash)}",
                                           "input": doc.meta}])
        record = {config.text_field: doc.text, **doc.meta}
        if doc.id:
            record[config.id_field] = doc.id
        records.append(record)
    input_dir = settings.jobs_root / job_id / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    path = input_dir / "documents.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return _submit(store, settings, request, caller, job_id, path, config,
                   {"kind": "inline", "documents": len(records)})


def _load_upload(path: Path, filename: str, cfg: GenerationConfig, settings: ApiSettings) -> int:
    """Count (cheaply, first) and read the uploaded documents; a bad file is a 422 or 413."""
    try:
        check_document_count(count_documents([path]), settings)
        count = 0
        for doc in iter_documents([path], cfg):  # streamed: an upload may be a corpus
            check_document_bytes([doc.text], settings)
            count += 1
    except (DocumentError, ValueError, RecursionError, OSError, ArrowException) as exc:
        # invalid UTF-8 (UnicodeDecodeError is a ValueError), a line nested too deep, a corrupt Parquet file
        message = public_text(str(exc).replace(str(path), filename)) or type(exc).__name__
        if isinstance(exc, RecursionError):
            message = "a JSON line is nested too deeply"
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "file"), "msg": message,
                                       "input": filename}]) from None
    check_document_count(count, settings)
    return count


@router.post("/upload", status_code=202, response_model=Job,
             summary="Submit a job: upload a JSONL or Parquet file (multipart) with the config as a JSON field")
def create_job_from_upload(request: Request, file: UploadFile = File(description=".jsonl or .parquet documents"),
                           config: str = Form("{}", description="the generation config as JSON"),
                           engine_name: str | None = Form(None, max_length=128,
                                                          description="one of the server's named engines"),
                           settings: ApiSettings = Depends(get_settings),
                           store: JobStore = Depends(get_store), caller: Caller = Depends(require_api_key)) -> Job:
    try:
        cfg = GenerationConfig.model_validate_json(config or "{}")
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", "config", *e["loc"])} for e in exc.errors()]) from None
    cfg = _admit(cfg, engine_name, settings, store, caller)
    suffix = Path(file.filename or "").suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise HTTPException(415, f"upload a .jsonl or .parquet file, not {file.filename!r}")
    job_id = new_job_id()
    input_dir = settings.jobs_root / job_id / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    path = input_dir / f"upload{suffix}"
    try:
        with path.open("wb") as out:
            shutil.copyfileobj(file.file, out, 1024 * 1024)
        count = _load_upload(path, file.filename or "upload", cfg, settings)
        return _submit(store, settings, request, caller, job_id, path, cfg,
                       {"kind": "upload", "filename": file.filename, "documents": count})
    except BaseException:  # refused or broken: no job folder is left behind
        if not store.exists(job_id):
            shutil.rmtree(settings.jobs_root / job_id, ignore_errors=True)
        raise


@router.get("", response_model=JobPage, summary="List your jobs (an admin: every job), newest first")
def list_jobs(request: Request, offset: int = Query(0, ge=0, le=10**9), limit: int = Query(20, ge=1, le=200),
              store: JobStore = Depends(get_store), caller: Caller = Depends(require_api_key)) -> JobPage:
    total, jobs = store.list(offset, limit) if caller.admin else store.list_owned(caller.name, offset, limit)
    return JobPage(total=total, offset=offset, limit=limit, items=[_job_view(j, request) for j in jobs])


def _existing(request: Request, store: JobStore, job_id: str, caller: Caller) -> dict:
    """The job if this caller may see it; one Redis lost is rebuilt from its output directory; else 404
    (also for another client's job: its existence is not revealed)."""
    job = store.get(job_id)
    if job is None:
        settings: ApiSettings = request.app.state.settings
        restore_job(store, settings.jobs_root / job_id / "output", sender(settings))
        job = store.get(job_id)
    if job is None or not caller.may_see(job):
        raise HTTPException(404, f"no job {job_id}")
    return job


@router.get("/{job_id}", response_model=Job, summary="Status, progress counts, rates, timings, errors")
def get_job(request: Request, job_id: str = JobId, store: JobStore = Depends(get_store),
            caller: Caller = Depends(require_api_key)) -> Job:
    return _job_view(_existing(request, store, job_id, caller), request)


@router.delete("/{job_id}", status_code=202, response_model=Job,
               summary="Cancel: documents not started are skipped, finished records are kept")
def cancel_job(request: Request, job_id: str = JobId, store: JobStore = Depends(get_store),
               caller: Caller = Depends(require_api_key)) -> Job:
    """The job ends: at once when no worker holds a document of it (none may be left), else as soon as
    the documents in flight settle."""
    job = _existing(request, store, job_id, caller)
    if job["status"] in FINAL_STATES:
        raise HTTPException(409, f"job {job_id} already ended ({job['status']})")
    store.request_cancel(job_id)
    if not store.live_leases(job_id):
        settings: ApiSettings = request.app.state.settings
        job = store.require(job_id)
        store.set_status(job_id, "cancelled", reason=f"cancelled by request after {job['documents_done']} of "
                         f"{job['documents_total']} documents", retention_seconds=settings.job_retention_seconds)
        sender(settings)("longscale.finalize_job", [job_id, job["config"] | {"api_key": None}])
    return _job_view(store.require(job_id), request)


def _whole_lines(path: Path, chunk: int = 1 << 20):
    """The file's bytes up to its last newline as it is now: a running job's writer may be mid-line."""
    with path.open("rb") as fh:
        remaining = path.stat().st_size
        pending = b""
        while remaining > 0:
            data = fh.read(min(chunk, remaining))
            if not data:
                break
            remaining -= len(data)
            data = pending + data
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            if cut:
                yield data[:cut]


def _download(request: Request, store: JobStore, job_id: str, caller: Caller, kind: str, fmt: str):
    job = _existing(request, store, job_id, caller)
    folder = Path(job["output_dir"])
    path = folder / ({"qa": QA_FILE, "instances": INSTANCES_FILE}[kind] if fmt == "jsonl" else f"{kind}.parquet")
    if fmt == "parquet":
        if not path.exists():
            raise HTTPException(409, f"the Parquet copy is written when the job ends (job is {job['status']}); "
                                     "JSONL streams while it runs")
        return FileResponse(path, media_type="application/vnd.apache.parquet", filename=f"{job_id}-{kind}.parquet")
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-{kind}.jsonl"'}
    if not path.exists():  # nothing written yet: an empty stream, not an error
        return StreamingResponse(iter(()), media_type="application/x-ndjson", headers=headers)
    return StreamingResponse(_whole_lines(path), media_type="application/x-ndjson", headers=headers)


@router.get("/{job_id}/qa", summary="Every generated QA pair (accepted or not, with why), JSONL or Parquet",
            response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}})
def download_qa(request: Request, job_id: str = JobId, format: Literal["jsonl", "parquet"] = "jsonl",
                store: JobStore = Depends(get_store), caller: Caller = Depends(require_api_key)):
    return _download(request, store, job_id, caller, "qa", format)


@router.get("/{job_id}/instances", summary="Long training instances (chat messages), JSONL or Parquet",
            response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}})
def download_instances(request: Request, job_id: str = JobId, format: Literal["jsonl", "parquet"] = "jsonl",
                       store: JobStore = Depends(get_store), caller: Caller = Depends(require_api_key)):
    return _download(request, store, job_id, caller, "instances", format)
