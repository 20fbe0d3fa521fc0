"""/v1/jobs: submit (inline, upload or data-root path), list, inspect, cancel, download."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path as PathParam, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError

from api.deps import get_settings, get_store, require_api_key
from api.schemas import JOB_ID_PATTERN, Job, JobCreate, JobPage
from api.settings import ApiSettings
from datafactory.config import GenerationConfig
from datafactory.documents import DocumentError, iter_documents
from datafactory.output import INSTANCES_FILE, QA_FILE
from worker.jobstore import FINAL_STATES, JobStore, new_job_id
from worker.submit import start_job

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])
JobId = PathParam(pattern=JOB_ID_PATTERN, description="16 hex digits")
UPLOAD_SUFFIXES = (".jsonl", ".json", ".parquet")


def _job_view(job: dict, request: Request) -> Job:
    base = str(request.url_for("get_job", job_id=job["id"]))
    job = dict(job, links={"self": base, "qa": base + "/qa", "instances": base + "/instances"})
    return Job.model_validate(job)


def _resolve_under_root(root: Path, relative: str) -> Path:
    """The path inside the data root, or 403: `..`, absolute paths and symlinks that leave the root."""
    base = root.resolve()
    try:
        candidate = (base / relative).resolve()
    except (ValueError, OSError) as exc:  # NUL bytes, loops
        raise HTTPException(422, f"invalid path {relative!r}: {exc}") from None
    if not candidate.is_relative_to(base):
        raise HTTPException(403, f"path {relative!r} resolves outside the data root; only paths under it are served")
    if not candidate.exists():
        raise HTTPException(422, f"path {relative!r} does not exist under the data root")
    return candidate


def _submit(store: JobStore, settings: ApiSettings, request: Request, job_id: str, input_path: Path,
            config: GenerationConfig, source: dict) -> Job:
    output_dir = settings.jobs_root / job_id / "output"
    start_job(store, settings.redis_url, [input_path], config, output_dir, job_id=job_id, source=source)
    request.app.state.metrics.jobs_submitted.inc()
    return _job_view(store.get(job_id), request)


@router.post("", status_code=202, response_model=Job, summary="Submit a job: documents inline or a data-root path")
def create_job(body: JobCreate, request: Request, settings: ApiSettings = Depends(get_settings),
               store: JobStore = Depends(get_store)) -> Job:
    job_id = new_job_id()
    config = body.config
    if body.path is not None:
        return _submit(store, settings, request, job_id, _resolve_under_root(settings.data_root, body.path),
                       config, {"kind": "path", "path": body.path})
    records = []
    for number, doc in enumerate(body.documents or []):
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
    return _submit(store, settings, request, job_id, path, config, {"kind": "inline", "documents": len(records)})


@router.post("/upload", status_code=202, response_model=Job,
             summary="Submit a job: upload a JSONL or Parquet file (multipart) with the config as a JSON field")
def create_job_from_upload(request: Request, file: UploadFile = File(description=".jsonl or .parquet documents"),
                           config: str = Form("{}", description="the generation config as JSON"),
                           settings: ApiSettings = Depends(get_settings),
                           store: JobStore = Depends(get_store)) -> Job:
    try:
        cfg = GenerationConfig.model_validate_json(config or "{}")
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", "config", *e["loc"])} for e in exc.errors()]) from None
    suffix = Path(file.filename or "").suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise HTTPException(415, f"upload a .jsonl or .parquet file, not {file.filename!r}")
    job_id = new_job_id()
    input_dir = settings.jobs_root / job_id / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    path = input_dir / f"upload{suffix}"
    with path.open("wb") as out:
        shutil.copyfileobj(file.file, out, 1024 * 1024)
    try:
        count = sum(1 for _ in iter_documents([path], cfg))  # streamed: an upload may be a corpus
    except DocumentError as exc:
        shutil.rmtree(settings.jobs_root / job_id, ignore_errors=True)
        message = str(exc).replace(str(path), file.filename or "upload")
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "file"), "msg": message,
                                       "input": file.filename}]) from None
    return _submit(store, settings, request, job_id, path, cfg,
                   {"kind": "upload", "filename": file.filename, "documents": count})


@router.get("", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(request: Request, offset: int = Query(0, ge=0, le=10**9), limit: int = Query(20, ge=1, le=200),
              store: JobStore = Depends(get_store)) -> JobPage:
    total, jobs = store.list(offset, limit)
    return JobPage(total=total, offset=offset, limit=limit, items=[_job_view(j, request) for j in jobs])


def _existing(store: JobStore, job_id: str) -> dict:
    job = store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


@router.get("/{job_id}", response_model=Job, summary="Status, progress counts, rates, timings, errors")
def get_job(request: Request, job_id: str = JobId, store: JobStore = Depends(get_store)) -> Job:
    return _job_view(_existing(store, job_id), request)


@router.delete("/{job_id}", status_code=202, response_model=Job,
               summary="Cancel: documents not started are skipped, finished records are kept")
def cancel_job(request: Request, job_id: str = JobId, store: JobStore = Depends(get_store)) -> Job:
    job = _existing(store, job_id)
    if job["status"] in FINAL_STATES:
        raise HTTPException(409, f"job {job_id} already ended ({job['status']})")
    store.request_cancel(job_id)
    return _job_view(store.get(job_id), request)


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


def _download(store: JobStore, job_id: str, kind: str, fmt: str):
    job = _existing(store, job_id)
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
def download_qa(job_id: str = JobId, format: Literal["jsonl", "parquet"] = "jsonl",
                store: JobStore = Depends(get_store)):
    return _download(store, job_id, "qa", format)


@router.get("/{job_id}/instances", summary="Long training instances (chat messages), JSONL or Parquet",
            response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}})
def download_instances(job_id: str = JobId, format: Literal["jsonl", "parquet"] = "jsonl",
                       store: JobStore = Depends(get_store)):
    return _download(store, job_id, "instances", format)
