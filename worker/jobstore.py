"""Job state in Redis: one hash per job (status, counters, timings), a settled-documents set, an error list.

Counting is idempotent: a document's outcome is added to the counters only when its id first enters the
job's settled set (one Lua script, atomic), so a task that Redis redelivers after a worker died, or that
Celery retries, never counts twice. The cancel flag lives in the same hash so one HGET answers it.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

PREFIX = "longscale"
JOBS_INDEX = f"{PREFIX}:jobs"
ACTIVE = f"{PREFIX}:active"  # jobs not yet final: what the reconciler looks at
FINISHED = f"{PREFIX}:finished"  # final jobs by finish time: what retention removes
EPOCH = f"{PREFIX}:epoch"  # set once per Redis dataset: its absence means Redis lost everything
FINAL_STATES = ("succeeded", "partial", "failed", "cancelled")
COUNTERS = ("documents_total", "documents_done", "documents_failed", "documents_cancelled", "documents_too_short",
            "qa_records",
            "qa_accepted", "instances", "requests")
TIMINGS = ("engine_seconds", "task_seconds")
MAX_ERRORS = 200

STARTS_TTL = 30 * 24 * 3600

# A document task's bookkeeping is two round trips: _BEGIN when it starts, _SETTLE when it ends.
# A running document holds a lease (job:<id>:leases, document -> "expiry:task id", Redis' clock) that its
# worker renews; another task for it while the lease is live does nothing, one after it lapsed takes over;
# the same task (a Celery retry keeps its id) passes its own lease.
_BEGIN = """
local job = redis.call('HGETALL', KEYS[1])
if #job == 0 then return {job, 0, 0, 0} end
local settled = redis.call('SISMEMBER', KEYS[2], ARGV[1])
local starts, busy = 0, 0
local now = tonumber(redis.call('TIME')[1])
if settled == 0 and redis.call('HGET', KEYS[1], 'cancel_requested') ~= '1' then
  local lease = redis.call('HGET', KEYS[4], ARGV[1]) or '0:'
  local expiry, owner = string.match(lease, '^(%d+):(.*)$')
  if tonumber(expiry) > now and owner ~= ARGV[4] then
    busy = 1
  else
    starts = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
    redis.call('EXPIRE', KEYS[3], ARGV[2])
    redis.call('HSET', KEYS[4], ARGV[1], (now + tonumber(ARGV[3])) .. ':' .. ARGV[4])
  end
end
return {job, settled, starts, busy}
"""

_RENEW = """
local now = tonumber(redis.call('TIME')[1])
local n = #KEYS
for i = 1, n do redis.call('HSET', KEYS[i], ARGV[i], (now + tonumber(ARGV[2 * n + 1])) .. ':' .. ARGV[n + i]) end
return now
"""

_LIVE_LEASES = """
local now = tonumber(redis.call('TIME')[1])
local raw = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #raw, 2 do
  if tonumber(string.match(raw[i + 1], '^(%d+)')) > now then table.insert(live, raw[i]) end
end
return live
"""

_BY_STATUS = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local counts = {}
for _, id in ipairs(ids) do
  local status = redis.call('HGET', ARGV[1] .. id, 'status') or 'expired'
  counts[status] = (counts[status] or 0) + 1
end
local out = {}
for status, n in pairs(counts) do table.insert(out, status); table.insert(out, n) end
return out
"""

_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, {false, false, false, false, false}} end
redis.call('HDEL', KEYS[3], ARGV[1])
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'last_settled_at', ARGV[2])
  for i = 3, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return {added, redis.call('HMGET', KEYS[1], 'status', 'documents_total', 'documents_done', 'documents_failed',
                          'documents_cancelled')}
"""
SETTLE_COUNTERS = ("documents_total", "documents_done", "documents_failed", "documents_cancelled")  # _SETTLE's order


def owner_index(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}"


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def _job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def _text(value: bytes | str) -> str:
    """A reply as str: the client decodes (decode_responses=True), redis-py's annotations say bytes | str."""
    return value.decode() if isinstance(value, bytes) else value


def _texts(values: Iterable[Any]) -> list[str]:  # Any: redis-py types zrevrange as if withscores
    return [_text(v) for v in values]


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
        self._renew = client.register_script(_RENEW)
        self._live = client.register_script(_LIVE_LEASES)
        self._by_status = client.register_script(_BY_STATUS)

    @classmethod
    def from_url(cls, url: str, *, ride_out_seconds: float = 60.0) -> "JobStore":
        """A client that rides out a Redis restart or stall of about `ride_out_seconds` (retries with
        back-off on connection errors and timeouts) before a call fails."""
        retry = Retry(ExponentialBackoff(cap=5.0, base=0.2), retries=max(1, int(ride_out_seconds / 5) + 4))
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
                                        health_check_interval=30, retry=retry,
                                        retry_on_error=[redis.ConnectionError, redis.TimeoutError]))

    def create(self, job_id: str, *, output_dir: str, config: dict, source: dict, extra: dict | None = None) -> None:
        now = time.time()
        fields: dict[FieldT, EncodableT] = {"id": job_id, "status": "queued", "created_at": now, "updated_at": now,
                                  "output_dir": output_dir, "config": json.dumps(config),
                                  "source": json.dumps(source), "cancel_requested": 0, "reason": ""}
        fields.update({name: 0 for name in COUNTERS + TIMINGS})
        fields.update(extra or {})
        owner = str(fields.get("owner") or "")
        with self.redis.pipeline() as pipe:
            pipe.hset(_job_key(job_id), mapping=fields)
            pipe.zadd(JOBS_INDEX, {job_id: now})
            pipe.sadd(ACTIVE, job_id)
            if owner:
                pipe.zadd(owner_index(owner), {job_id: now})
                pipe.sadd(owner_index(owner) + ":active", job_id)
            pipe.setnx(EPOCH, now)
            pipe.execute()

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(_job_key(job_id)))

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        self.redis.hset(_job_key(job_id), mapping={k: v for k, v in fields.items() if v is not None})

    def set_status(self, job_id: str, status: str, reason: str | None = None,
                   retention_seconds: int | None = None) -> None:
        """A final status takes the job off the active set and, with `retention_seconds`, lets its keys expire."""
        fields: dict[str, Any] = {"status": status}
        if reason is not None:
            fields["reason"] = reason
        if status == "running":
            fields["started_at"] = time.time()
        if status in FINAL_STATES:
            fields["finished_at"] = time.time()
        self.update(job_id, **fields)
        if status in FINAL_STATES:
            key = _job_key(job_id)
            owner = self.owner(job_id)
            with self.redis.pipeline() as pipe:
                pipe.srem(ACTIVE, job_id)
                if owner:
                    pipe.srem(owner_index(owner) + ":active", job_id)
                pipe.zadd(FINISHED, {job_id: fields["finished_at"]})
                if retention_seconds:
                    for name in ("", ":settled", ":errors", ":starts", ":leases"):
                        pipe.expire(key + name, retention_seconds)
                pipe.execute()

    def begin_document(self, job_id: str, document_id: str, lease_seconds: float = 60.0, task_id: str = ""
                       ) -> tuple[dict | None, bool, int, bool]:
        """A document task's first look, in one round trip: the job (None when gone, errors left out),
        whether the document is settled already, how many times a task for it has started, this one
        included (0 when settled, cancelled or busy), and whether another task holds its live lease (busy);
        otherwise this task now holds the lease for `lease_seconds`."""
        key = _job_key(job_id)
        raw, settled, starts, busy = self._begin(keys=[key, f"{key}:settled", f"{key}:starts", f"{key}:leases"],
                                                 args=[document_id, STARTS_TTL, int(lease_seconds) + 1, task_id])
        if not raw:
            return None, False, 0, False
        return self._parse(job_id, dict(zip(raw[::2], raw[1::2]))), bool(settled), int(starts), bool(busy)

    def renew_leases(self, held: list[tuple[str, str, str]], lease_seconds: float) -> None:
        """Extend the leases of the (job, document, task id) this worker is running, in one round trip."""
        if held:
            self._renew(keys=[f"{_job_key(j)}:leases" for j, _, _ in held],
                        args=[d for _, d, _ in held] + [t for _, _, t in held] + [int(lease_seconds) + 1])

    def release_lease(self, job_id: str, document_id: str) -> None:
        self.redis.hdel(f"{_job_key(job_id)}:leases", document_id)

    def live_leases(self, job_id: str) -> list[str]:
        """Documents of the job that a live worker is running now."""
        return list(self._live(keys=[f"{_job_key(job_id)}:leases"]))

    def settled_ids(self, job_id: str) -> set[str]:
        return set(_texts(self.redis.smembers(f"{_job_key(job_id)}:settled")))

    def starts(self, job_id: str) -> dict[str, int]:
        """How many times a task started for each document of the job."""
        return {_text(d): int(n) for d, n in self.redis.hgetall(f"{_job_key(job_id)}:starts").items()}

    def owner(self, job_id: str) -> str | None:
        owner = self.redis.hget(_job_key(job_id), "owner")
        return None if owner is None else _text(owner)

    def jobs_in_flight(self, owner: str) -> int:
        return int(self.redis.scard(owner_index(owner) + ":active"))

    def list_owned(self, owner: str, offset: int = 0, limit: int = 50) -> tuple[int, list[dict]]:
        """One client's jobs, newest first."""
        index = owner_index(owner)
        total = self.redis.zcard(index)
        ids = _texts(self.redis.zrevrange(index, offset, offset + limit - 1))
        return total, [job for job in (self.get(i, with_errors=False) for i in ids) if job]

    def forget(self, job_id: str, owner: str | None) -> None:
        """Remove an expired job from every index (its keys expire by themselves)."""
        key = _job_key(job_id)
        with self.redis.pipeline() as pipe:
            pipe.zrem(JOBS_INDEX, job_id)
            pipe.zrem(FINISHED, job_id)
            if owner:
                pipe.zrem(owner_index(owner), job_id)
            pipe.delete(key, f"{key}:settled", f"{key}:errors", f"{key}:starts", f"{key}:leases")
            pipe.execute()

    def finished_before(self, when: float) -> list[str]:
        return _texts(self.redis.zrangebyscore(FINISHED, "-inf", when))

    def active_jobs(self) -> list[str]:
        return sorted(_texts(self.redis.smembers(ACTIVE)))

    def epoch_missing(self) -> bool:
        """True when this Redis has never seen a job, or lost them all (restarted without persistence)."""
        return not self.redis.exists(EPOCH)

    def mark_epoch(self) -> None:
        self.redis.setnx(EPOCH, time.time())

    def settle(self, job_id: str, document_id: str, counts: dict[str, float]) -> tuple[bool, bool]:
        """Add one document's outcome to the counters, once, in one round trip: (added -- False when it
        was already settled --, whether every document of the job has now settled: see `all_settled`)."""
        args: list[Any] = [document_id, time.time()]
        for name, value in counts.items():
            args += [name, value]
        key = _job_key(job_id)
        added, (status, *numbers) = self._settle(keys=[key, f"{key}:settled", f"{key}:leases"], args=args)
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

    def require(self, job_id: str) -> dict:
        """The job, which the caller knows exists (it just wrote it); KeyError if it is gone meanwhile."""
        job = self.get(job_id)
        if job is None:
            raise KeyError(f"job {job_id} is gone from the store")
        return job

    def get(self, job_id: str, *, with_errors: bool = True) -> dict | None:
        raw = self.redis.hgetall(_job_key(job_id))
        if not raw:
            return None
        job = self._parse(job_id, {_text(k): _text(v) for k, v in raw.items()})
        if with_errors:
            job["errors"] = self.errors(job_id)
        return job

    @staticmethod
    def _parse(job_id: str, raw: dict[str, str]) -> dict:
        job: dict[str, Any] = {"id": raw.get("id", job_id), "status": raw.get("status", "unknown"),
                               "owner": raw.get("owner") or None,
                               "reason": raw.get("reason") or None, "output_dir": raw.get("output_dir"),
                               "cancel_requested": raw.get("cancel_requested") == "1"}
        for name in COUNTERS:
            job[name] = int(float(raw.get(name, 0) or 0))
        for name in TIMINGS:
            job[name] = round(float(raw.get(name, 0) or 0), 3)
        for name in ("created_at", "started_at", "last_settled_at", "finished_at", "updated_at", "restored_at"):
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
        ids = _texts(self.redis.zrevrange(JOBS_INDEX, offset, offset + limit - 1))
        jobs = [job for job in (self.get(i, with_errors=False) for i in ids) if job]
        return total, jobs

    def count_by_status(self) -> dict[str, int]:
        """Jobs by status in one round trip (a Lua script walks the index inside Redis)."""
        raw = self._by_status(keys=[JOBS_INDEX], args=[f"{PREFIX}:job:"])
        return {status: int(n) for status, n in zip(raw[::2], raw[1::2])}

    def ping(self) -> bool:
        return bool(self.redis.ping())
