"""Job state in Redis: one hash per job (status, counters, timings), a settled-documents set, an error list.

Counting is idempotent: a document's outcome is added to the counters only when its id first enters the
job's settled set (one Lua script, atomic), so a task that Redis redelivers after a worker died, or that
Celery retries, never counts twice. The cancel flag lives in the same hash so one HGET answers it.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

PREFIX = "longscale"
JOBS_INDEX = f"{PREFIX}:jobs"
FINAL_STATES = ("succeeded", "partial", "failed", "cancelled")
COUNTERS = ("documents_total", "documents_done", "documents_failed", "documents_cancelled", "documents_too_short",
            "qa_records",
            "qa_accepted", "instances", "requests")
TIMINGS = ("engine_seconds", "task_seconds")
MAX_ERRORS = 200

STARTS_TTL = 30 * 24 * 3600

# A document task's bookkeeping is two round trips: _BEGIN when it starts, _SETTLE when it ends.
_BEGIN = """
local job = redis.call('HGETALL', KEYS[1])
if #job == 0 then return {job, 0, 0} end
local settled = redis.call('SISMEMBER', KEYS[2], ARGV[1])
local starts = 0
if settled == 0 and redis.call('HGET', KEYS[1], 'cancel_requested') ~= '1' then
  starts = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return {job, settled, starts}
"""

_SETTLE = """
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'last_settled_at', ARGV[2])
  for i = 3, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return {added, redis.call('HMGET', KEYS[1], 'status', 'documents_total', 'documents_done', 'documents_failed',
                          'documents_cancelled')}
"""
SETTLE_COUNTERS = ("documents_total", "documents_done", "documents_failed", "documents_cancelled")  # _SETTLE's order


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def _job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def all_settled(job: dict) -> bool:
    """Every document of a job that is not yet final has settled: time to finalize it."""
    settled = job["documents_done"] + job["documents_failed"] + job["documents_cancelled"]
    return job["status"] not in FINAL_STATES and 0 < job["documents_total"] <= settled


class JobStore:
    """Reads and writes job state; every method is one or two Redis round trips."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._settle = client.register_script(_SETTLE)
        self._begin = client.register_script(_BEGIN)

    @classmethod
    def from_url(cls, url: str) -> "JobStore":
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10,
                                        socket_connect_timeout=5, health_check_interval=30))

    def create(self, job_id: str, *, output_dir: str, config: dict, source: dict) -> None:
        now = time.time()
        fields: dict[str, Any] = {"id": job_id, "status": "queued", "created_at": now, "updated_at": now,
                                  "output_dir": output_dir, "config": json.dumps(config),
                                  "source": json.dumps(source), "cancel_requested": 0, "reason": ""}
        fields.update({name: 0 for name in COUNTERS + TIMINGS})
        with self.redis.pipeline() as pipe:
            pipe.hset(_job_key(job_id), mapping=fields)
            pipe.zadd(JOBS_INDEX, {job_id: now})
            pipe.execute()

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(_job_key(job_id)))

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        self.redis.hset(_job_key(job_id), mapping={k: v for k, v in fields.items() if v is not None})

    def set_status(self, job_id: str, status: str, reason: str | None = None) -> None:
        fields: dict[str, Any] = {"status": status}
        if reason is not None:
            fields["reason"] = reason
        if status == "running":
            fields["started_at"] = time.time()
        if status in FINAL_STATES:
            fields["finished_at"] = time.time()
        self.update(job_id, **fields)

    def begin_document(self, job_id: str, document_id: str) -> tuple[dict | None, bool, int]:
        """A document task's first look, in one round trip: the job (None when gone, errors left out),
        whether the document is settled already, and -- unless it is settled or the job cancelled -- how
        many times a task for it has started, this one included (`count_start`)."""
        key = _job_key(job_id)
        raw, settled, starts = self._begin(keys=[key, f"{key}:settled", f"{key}:starts"],
                                           args=[document_id, STARTS_TTL])
        if not raw:
            return None, False, 0
        return self._parse(job_id, dict(zip(raw[::2], raw[1::2]))), bool(settled), int(starts)

    def settle(self, job_id: str, document_id: str, counts: dict[str, float]) -> tuple[bool, bool]:
        """Add one document's outcome to the counters, once, in one round trip: (added -- False when it
        was already settled --, whether every document of the job has now settled: see `all_settled`)."""
        args: list[Any] = [document_id, time.time()]
        for name, value in counts.items():
            args += [name, value]
        added, (status, *numbers) = self._settle(keys=[_job_key(job_id), f"{_job_key(job_id)}:settled"], args=args)
        job = {"status": status, **{name: int(float(n or 0)) for name, n in zip(SETTLE_COUNTERS, numbers)}}
        return bool(added), all_settled(job)

    def settle_document(self, job_id: str, document_id: str, counts: dict[str, float]) -> bool:
        """Add one document's outcome to the counters, once; False when it was already settled."""
        return self.settle(job_id, document_id, counts)[0]

    def count_start(self, job_id: str, document_id: str) -> int:
        """How many times a task for this document has started (deliveries, retries and redeliveries)."""
        key = f"{_job_key(job_id)}:starts"
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, document_id, 1)
            pipe.expire(key, STARTS_TTL)
            return int(pipe.execute()[0])

    def add_error(self, job_id: str, document_id: str | None, error: str) -> None:
        entry = json.dumps({"document": document_id, "error": error[:2000], "at": time.time()})
        key = f"{_job_key(job_id)}:errors"
        with self.redis.pipeline() as pipe:
            pipe.rpush(key, entry)
            pipe.ltrim(key, -MAX_ERRORS, -1)
            pipe.execute()

    def errors(self, job_id: str, limit: int = 50) -> list[dict]:
        return [json.loads(e) for e in self.redis.lrange(f"{_job_key(job_id)}:errors", -limit, -1)]

    def request_cancel(self, job_id: str) -> None:
        self.update(job_id, cancel_requested=1)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(_job_key(job_id), "cancel_requested") == "1"

    def get(self, job_id: str, *, with_errors: bool = True) -> dict | None:
        raw = self.redis.hgetall(_job_key(job_id))
        if not raw:
            return None
        job = self._parse(job_id, raw)
        if with_errors:
            job["errors"] = self.errors(job_id)
        return job

    @staticmethod
    def _parse(job_id: str, raw: dict[str, str]) -> dict:
        job: dict[str, Any] = {"id": raw.get("id", job_id), "status": raw.get("status", "unknown"),
                               "reason": raw.get("reason") or None, "output_dir": raw.get("output_dir"),
                               "cancel_requested": raw.get("cancel_requested") == "1"}
        for name in COUNTERS:
            job[name] = int(float(raw.get(name, 0) or 0))
        for name in TIMINGS:
            job[name] = round(float(raw.get(name, 0) or 0), 3)
        for name in ("created_at", "started_at", "last_settled_at", "finished_at", "updated_at"):
            job[name] = float(raw[name]) if raw.get(name) else None
        job["config"] = json.loads(raw.get("config") or "{}")
        job["source"] = json.loads(raw.get("source") or "{}")
        start = job["started_at"] or job["created_at"]
        end = job["finished_at"] or time.time()
        elapsed = max(end - start, 1e-9) if start else 0.0
        job["elapsed_seconds"] = round(elapsed, 3)
        job["documents_per_second"] = round(job["documents_done"] / elapsed, 4) if elapsed else 0.0
        job["requests_per_second"] = round(job["requests"] / elapsed, 4) if elapsed else 0.0
        return job

    def list(self, offset: int = 0, limit: int = 50) -> tuple[int, list[dict]]:
        """Newest first."""
        total = self.redis.zcard(JOBS_INDEX)
        ids = self.redis.zrevrange(JOBS_INDEX, offset, offset + limit - 1)
        jobs = [job for job in (self.get(i, with_errors=False) for i in ids) if job]
        return total, jobs

    def count_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job_id in self.redis.zrange(JOBS_INDEX, 0, -1):
            status = self.redis.hget(_job_key(job_id), "status") or "unknown"
            counts[status] = counts.get(status, 0) + 1
        return counts

    def ping(self) -> bool:
        return bool(self.redis.ping())
