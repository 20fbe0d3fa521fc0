"""Issue 12, cases 2-4 and 8: job state survives Redis and dead workers. A real redis-server of this module's own
(AOF on, fsync always) is stopped and started, paused (CLIENT PAUSE), and restarted empty, under two real Celery
workers and the API, with the fault-injecting stub engine (a fake that runs no model) slowing each request so
the faults land mid-job. Every job must end with an honest status, each document settled exactly once (the
journal has one line per document, the counts add up) and no record id twice.

Leases are 3 s and the reconciler sweeps every second; the broker's visibility timeout is an hour, so a
dead worker's document that runs again within the test's deadline was re-run by its lapsed lease.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from tests.service.conftest import (
    API_KEY,
    ManagedProcess,
    free_port,
    policy_env,
    redis_server_binary,
    service_env,
    start_api,
    start_worker,
)
from tests.service.test_svc_end_to_end import Stack, job_config, write_docs

pytestmark = pytest.mark.slow
DOCS = 10


class RedisServer:
    """redis-server on a fixed port that a test may stop, pause, and start again (with or without its data)."""

    def __init__(self, log_dir: Path):
        self.port, self.log_dir = free_port(), log_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data = log_dir / f"redis-faults-{self.port}"
        self.data.mkdir()
        self.process: ManagedProcess | None = None
        self.starts = 0

    def start(self, *, persist: bool = True) -> None:
        self.starts += 1
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data), "--save", "",
                "--appendonly", "yes" if persist else "no", "--appendfsync", "always"]
        self.process = ManagedProcess(f"redis-faults-{self.starts}", [redis_server_binary(), *args], self.log_dir)

        def pong() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
            except redis.RedisError:
                return False

        self.process.wait_for(pong, "PONG", timeout=20)

    def stop(self) -> None:
        self.process.stop()

    def wipe(self) -> None:
        """Gone with its data: what a Redis without persistence looks like after a restart."""
        self.process.kill()
        for file in self.data.rglob("*"):
            if file.is_file():
                file.unlink()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture(scope="module")
def faults(service_tmp, stub_engine, embedded_model_dir):
    server = RedisServer(service_tmp)
    server.start()
    root = service_tmp / "faults"
    (root / "data").mkdir(parents=True)
    env = service_env(server.url, LONGSCALE_API_KEY=API_KEY, LONGSCALE_DATA_ROOT=str(root / "data"),
                      LONGSCALE_JOBS_ROOT=str(root / "jobs"), LONGSCALE_QUEUE="faults",
                      LONGSCALE_VISIBILITY_TIMEOUT="3600", LONGSCALE_LEASE_SECONDS="3",
                      LONGSCALE_RECONCILE_INTERVAL="1",
                      **policy_env(stub_engine.base_url, model_roots=(embedded_model_dir.parent,)))
    api, base = start_api(service_tmp, env, name="api-faults")
    workers = {name: start_worker(name, service_tmp, env) for name in ("f1", "f2")}
    stack = Stack(base, root / "data", workers, service_tmp, env)
    stack.redis = server
    # warm both workers (tokenizer loaded for this config) so the 8 s document limit is about the faults
    write_docs(root / "data" / "warmup.jsonl", 4, offset=40)
    stack.wait(stack.submit("warmup.jsonl", job_config(stub_engine.base_url, embedded_model_dir)), timeout=120)
    yield stack
    for worker in stack.workers.values():
        worker.stop()
    api.stop()
    server.stop()


@pytest.fixture
def slow_stub(stub_engine):
    stub_engine.configure(delay_ms=150)  # ~0.4 s a document: a 10-document job runs for seconds
    yield stub_engine
    stub_engine.configure(delay_ms=20)


def wait_quietly(stack: Stack, job_id: str, until, timeout: float = 120) -> dict:
    """Poll through faults: a refused or 503 reply while Redis is away is not an answer yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = stack.http.get(f"/v1/jobs/{job_id}")
            if reply.status_code == 200 and until(reply.json()):
                return reply.json()
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not get there in {timeout}s")


def assert_settled_exactly_once(stack: Stack, job: dict, total: int) -> None:
    output = Path(stack.env["LONGSCALE_JOBS_ROOT"]) / job["id"] / "output"
    lines = [json.loads(line) for line in (output / ".longscale-job" / "settled.jsonl").read_text().splitlines()]
    assert sorted(e["document"] for e in lines) == sorted({e["document"] for e in lines}) and len(lines) == total
    assert job["documents_total"] == total
    assert job["documents_done"] + job["documents_failed"] + job["documents_cancelled"] == total
    qa = stack.records(job["id"], "qa")
    assert len(qa) == len({r["id"] for r in qa})  # no duplicate ids
    assert {r["doc_id"] for r in qa} == {f"doc-{i:03d}" for i in range(total)} - \
        {e["document"] for e in lines if e["counts"].get("documents_failed")}


def run_through(stack: Stack, embedded_model_dir, stub, name: str, fault) -> dict:
    write_docs(stack.data_root / f"{name}.jsonl", DOCS, offset=0)
    job_id = stack.submit(f"{name}.jsonl", job_config(stub.base_url, embedded_model_dir))
    wait_quietly(stack, job_id, lambda job: job["documents_done"] >= 2)
    fault()
    return wait_quietly(stack, job_id, lambda job: job["status"] in ("succeeded", "partial", "failed", "cancelled"))


def test_redis_stopped_and_started_mid_job_the_job_succeeds(faults, slow_stub, embedded_model_dir):
    def restart():
        faults.redis.stop()  # SIGTERM: AOF flushed, clients cut off mid-call
        time.sleep(2)
        faults.redis.start()

    job = run_through(faults, embedded_model_dir, slow_stub, "restart", restart)
    assert job["status"] == "succeeded", job
    assert_settled_exactly_once(faults, job, DOCS)
    output = Path(faults.env["LONGSCALE_JOBS_ROOT"]) / job["id"] / "output"
    assert (output / "manifest.json").exists() and not (output / ".longscale-spool").exists()


def test_redis_paused_mid_job_fails_no_document(faults, slow_stub, embedded_model_dir):
    """12 s of CLIENT PAUSE, past the 8 s document time limit: the documents are not blamed for Redis."""
    job = run_through(faults, embedded_model_dir, slow_stub, "pause",
                      lambda: faults.redis.client().execute_command("CLIENT", "PAUSE", 12000, "ALL"))
    assert job["status"] == "succeeded" and job["documents_failed"] == 0, job
    assert_settled_exactly_once(faults, job, DOCS)


def test_redis_restarted_empty_the_job_is_rebuilt_from_its_output_dir(faults, slow_stub, embedded_model_dir):
    write_docs(faults.data_root / "before.jsonl", 2, offset=0)
    earlier = faults.submit("before.jsonl", job_config(slow_stub.base_url, embedded_model_dir))
    wait_quietly(faults, earlier, lambda job: job["status"] == "succeeded")

    def wipe():
        faults.redis.wipe()
        faults.redis.start(persist=False)

    job = run_through(faults, embedded_model_dir, slow_stub, "empty", wipe)
    assert job["status"] == "succeeded", job
    assert job["restored_at"] is not None  # said plainly: Redis lost it, the output directory rebuilt it
    assert_settled_exactly_once(faults, job, DOCS)
    before = faults.job(earlier)  # the earlier job comes back too, with the manifest's status
    assert before["status"] == "succeeded" and before["documents_done"] == 2 and before["restored_at"]
    assert "restored from the output directory" in before["reason"]


def test_a_dead_workers_document_runs_again_by_its_lease(faults, slow_stub, embedded_model_dir):
    write_docs(faults.data_root / "kill.jsonl", DOCS, offset=0)
    job_id = faults.submit("kill.jsonl", job_config(slow_stub.base_url, embedded_model_dir))
    wait_quietly(faults, job_id, lambda job: job["documents_done"] >= 2)
    faults.workers["f1"].kill()
    try:
        job = wait_quietly(faults, job_id, lambda job: job["status"] in ("succeeded", "partial", "failed"))
    finally:
        faults.restart_worker("f1")
    assert job["status"] == "succeeded", job
    assert_settled_exactly_once(faults, job, DOCS)


def test_delete_ends_a_job_no_worker_will_ever_take(faults, embedded_model_dir, tmp_path):
    from datafactory.config import GenerationConfig
    from worker.jobstore import JobStore
    from worker.submit import start_job

    store = JobStore.from_url(faults.redis.url)
    write_docs(tmp_path / "stuck.jsonl", 2, offset=0)
    job_id = start_job(store, faults.redis.url, [tmp_path / "stuck.jsonl"], GenerationConfig(),
                       tmp_path / "stuck-out", queue="nobody-listens",
                       extra={"owner": "admin"})
    reply = faults.http.delete(f"/v1/jobs/{job_id}")
    assert reply.status_code == 202 and reply.json()["status"] == "cancelled", reply.text
    assert faults.http.delete(f"/v1/jobs/{job_id}").status_code == 409
