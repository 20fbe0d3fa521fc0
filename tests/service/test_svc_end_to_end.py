"""End to end with real processes: redis-server, two Celery workers, the API under uvicorn, and the
fault-injecting OpenAI-compatible stub as the engine; jobs go in over HTTP and results come back over HTTP.

The reference is `run_generation` (what `longscale generate` runs) in this process, on the same documents,
config and seed: the service must write the same record ids, the same number of them, none twice.
"""
from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from tests.service.conftest import API_KEY, policy_env, service_env, start_api, start_worker

pytestmark = pytest.mark.slow
BOOK = Path(__file__).resolve().parents[2] / "datafactory" / "sample_corpus" / "prideprejudice.txt"
FINAL = {"succeeded", "partial", "failed", "cancelled"}


def write_docs(path: Path, count: int, *, offset: int = 0, giant_at: int | None = None) -> Path:
    """`count` documents of ~1,500 tokens cut from a public-domain book; `giant_at` gets ~60,000 tokens."""
    text = BOOK.read_text()
    with path.open("w") as fh:
        for i in range(count):
            body = text[20000 + (offset + i) * 6000: 20000 + (offset + i + 1) * 6000]
            if i == giant_at:
                body = text[:240_000]
            fh.write(json.dumps({"id": f"doc-{offset + i:03d}", "text": body}) + "\n")
    return path


def job_config(engine_url: str, tokenizer: Path, **overrides) -> dict:
    config = {"engine": "openai", "base_url": engine_url, "tokenizer": str(tokenizer), "min_doc_tokens": 256,
              "chunk_tokens": 256, "max_context": 1024, "max_retries": 1, "request_timeout": 5, "seed": 7}
    config.update(overrides)
    return config


def unfinished_tasks(log: str) -> set[str]:
    """Document tasks a worker received but never finished, from its log."""
    received = set(re.findall(r"generate_document\[([0-9a-f-]+)\] received", log))
    finished = set(re.findall(r"generate_document\[([0-9a-f-]+)\] (?:succeeded|failed|retry)", log))
    return received - finished


class Stack:
    def __init__(self, base: str, data_root: Path, workers: dict, log_dir: Path, env: dict):
        self.http = httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=30)
        self.data_root, self.workers, self.log_dir, self.env = data_root, workers, log_dir, env

    def submit(self, path: str, config: dict) -> str:
        reply = self.http.post("/v1/jobs", json={"path": path, "config": config})
        assert reply.status_code == 202, reply.text
        return reply.json()["id"]

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, timeout: float = 90, until=lambda job: job["status"] in FINAL) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not get there in {timeout}s: {self.job(job_id)}")

    def records(self, job_id: str, kind: str) -> list[dict]:
        reply = self.http.get(f"/v1/jobs/{job_id}/{kind}")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in reply.text.splitlines()]

    def restart_worker(self, name: str) -> None:
        self.workers[name] = start_worker(name, self.log_dir, self.env)


@pytest.fixture(scope="module")
def outage_engine():
    """A second stub that one test stops mid-job; started first so the operator's allowlist can name it."""
    from datafactory.testing.fault_server import FaultInjectingServer

    engine = FaultInjectingServer(delay_ms=200).start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def stack(service_tmp, redis_url, stub_engine, outage_engine, embedded_model_dir):
    root = service_tmp / "e2e"
    data_root, jobs_root = root / "data", root / "jobs"
    data_root.mkdir(parents=True)
    # a Redis database of its own: other modules' jobs (queued where no worker listens, same API key) would count
    # against this key's jobs-in-flight limit here
    env = service_env(redis_url.rsplit("/", 1)[0] + "/3", LONGSCALE_API_KEY=API_KEY, LONGSCALE_DATA_ROOT=str(data_root),
                      LONGSCALE_JOBS_ROOT=str(jobs_root), LONGSCALE_ENGINE_URL=stub_engine.base_url,
                      LONGSCALE_QUEUE="e2e", LONGSCALE_MAX_CHUNKS_PER_DOC="1000", **policy_env(stub_engine.base_url, outage_engine.base_url,
                                                          model_roots=(embedded_model_dir.parent,)))
    api, base = start_api(service_tmp, env, name="api-e2e")
    workers = {name: start_worker(name, service_tmp, env) for name in ("w1", "w2")}
    stack = Stack(base, data_root, workers, service_tmp, env)
    # warm both workers (tokenizer and engine loaded) so later timings are about the job, not start-up
    write_docs(data_root / "warmup.jsonl", 4, offset=40)
    stack.wait(stack.submit("warmup.jsonl", job_config(stub_engine.base_url, embedded_model_dir)))
    yield stack
    for worker in stack.workers.values():
        worker.stop()
    api.stop()


@pytest.fixture
def stub(stub_engine):
    stub_engine.configure(delay_ms=20)
    yield stub_engine
    stub_engine.configure(delay_ms=20)


def reference_run(docs: Path, config: dict, out: Path) -> tuple[list[str], list[str], dict]:
    """What `longscale generate` writes in process for the same documents and config."""
    from datafactory.config import GenerationConfig
    from datafactory.documents import load_documents
    from datafactory.pipeline import run_generation

    cfg = GenerationConfig.model_validate(config)
    manifest = run_generation(load_documents([docs], cfg), cfg, out, progress=False)
    def ids(name: str) -> list[str]:
        path = out / name
        return [json.loads(line)["id"] for line in path.read_text().splitlines()] if path.exists() else []

    return ids("qa.jsonl"), ids("instances.jsonl"), manifest


def test_http_job_equals_the_in_process_run(stack, stub, embedded_model_dir, tmp_path):
    stub.configure(delay_ms=100)  # ~0.25 s a document: long enough that both workers take some
    docs = write_docs(stack.data_root / "twelve.jsonl", 12)
    config = job_config(stub.base_url, embedded_model_dir)
    log_start = {name: len(worker.log_text()) for name, worker in stack.workers.items()}
    job_id = stack.submit("twelve.jsonl", config)
    job = stack.wait(job_id)
    assert job["status"] == "succeeded" and job["reason"] is None, job
    assert job["documents_total"] == job["documents_done"] == 12 and job["requests"] == 24
    assert job["requests_per_second"] > 0 and job["elapsed_seconds"] > 0

    qa, instances = stack.records(job_id, "qa"), stack.records(job_id, "instances")
    ref_qa, ref_instances, ref_manifest = reference_run(docs, config, tmp_path / "in-process")
    assert sorted(r["id"] for r in qa) == sorted(ref_qa) and len(qa) == len(set(ref_qa)) == 12
    assert sorted(i["id"] for i in instances) == sorted(ref_instances)
    by_id = {r["id"]: r for r in qa}
    for line in (tmp_path / "in-process" / "qa.jsonl").read_text().splitlines():
        ref = json.loads(line)
        assert {k: by_id[ref["id"]][k] for k in ("doc_id", "chunk_index", "answer_type", "question", "accepted")} \
            == {k: ref[k] for k in ("doc_id", "chunk_index", "answer_type", "question", "accepted")}

    parquet = pq.read_table(io.BytesIO(stack.http.get(f"/v1/jobs/{job_id}/qa", params={"format": "parquet"}).content))
    assert sorted(parquet.column("id").to_pylist()) == sorted(ref_qa)
    manifest = json.loads((Path(stack.env["LONGSCALE_JOBS_ROOT"]) / job_id / "output" / "manifest.json").read_text())
    assert manifest["counts"] == ref_manifest["counts"] and manifest["status"] == "complete"
    assert manifest["job"]["id"] == job_id
    assert not (Path(stack.env["LONGSCALE_JOBS_ROOT"]) / job_id / "output" / ".longscale-spool").exists()
    for name, worker in stack.workers.items():  # both worker processes took documents of this job
        assert "longscale.generate_document" in worker.log_text()[log_start[name]:], name


def test_sigkill_of_a_worker_mid_job_loses_and_duplicates_nothing(stack, stub, embedded_model_dir, tmp_path):
    stub.configure(delay_ms=250)  # ~0.6 s per document: the kill lands while documents are in flight
    docs = write_docs(stack.data_root / "kill.jsonl", 10, offset=12)
    config = job_config(stub.base_url, embedded_model_dir)
    job_id = stack.submit("kill.jsonl", config)
    stack.wait(job_id, until=lambda job: job["documents_done"] >= 2)
    assert len(stack.records(job_id, "qa")) >= 2  # JSONL streams while the job runs (whole lines only)
    assert stack.http.get(f"/v1/jobs/{job_id}/qa", params={"format": "parquet"}).status_code == 409
    stack.workers["w1"].kill()
    in_flight = unfinished_tasks(stack.workers["w1"].log_text())
    try:
        job = stack.wait(job_id, timeout=120)
    finally:
        stack.restart_worker("w1")
    assert job["status"] == "succeeded", job
    assert in_flight, "the kill landed between two tasks; nothing was in flight"
    survivor = stack.workers["w2"].log_text()
    for task_id in in_flight:  # Redis handed the dead worker's unacknowledged task to the survivor
        assert re.search(rf"generate_document\[{task_id}\] succeeded", survivor), task_id
    assert job["documents_done"] == 10
    qa, instances = stack.records(job_id, "qa"), stack.records(job_id, "instances")
    ids = [r["id"] for r in qa]
    assert len(ids) == len(set(ids)) == 10, "a record was lost or written twice"
    assert len(instances) == len({i["id"] for i in instances})
    stub.configure(delay_ms=20)
    ref_qa, _, _ = reference_run(docs, config, tmp_path / "in-process")
    assert sorted(ids) == sorted(ref_qa)


def test_engine_stopping_mid_job_retries_then_ends_partial_keeping_records(stack, outage_engine, embedded_model_dir):
    engine = outage_engine
    write_docs(stack.data_root / "outage.jsonl", 8, offset=22)
    job_id = stack.submit("outage.jsonl", job_config(engine.base_url, embedded_model_dir))
    try:
        before = stack.wait(job_id, until=lambda job: job["documents_done"] >= 2)
    finally:
        engine.stop()  # the engine dies mid-job: connections refused from now on
    job = stack.wait(job_id, timeout=120)
    assert job["status"] == "partial", job
    assert job["documents_done"] >= before["documents_done"] and job["documents_failed"] >= 1
    assert job["documents_done"] + job["documents_failed"] == 8
    assert "documents failed" in job["reason"] and "engine unavailable after 2 task retries" in job["reason"]
    assert any("connect" in e["error"].lower() or "refused" in e["error"].lower() for e in job["errors"]), job["errors"]
    qa = stack.records(job_id, "qa")
    assert len(qa) == len({r["id"] for r in qa}) == job["documents_done"]  # finished records intact
    assert all(r["reject_reason"] != "engine_error" for r in qa)


def test_poison_document_fails_alone(stack, stub, embedded_model_dir):
    """A document far longer than the rest, with every chunk asked about, runs past the 8 s per-document
    limit: it fails alone, recorded, and the job goes on to `partial` with the others' records.

    ~235 chunks at one request in flight and 200 ms a request need ~47 s, far past the limit whatever the
    machine's speed; the other documents (~6 chunks) need ~1.2 s each."""
    stub.configure(delay_ms=200)
    write_docs(stack.data_root / "poison.jsonl", 4, offset=30, giant_at=2)
    config = job_config(stub.base_url, embedded_model_dir, chunks_per_doc=1000, concurrency=1, critique="off")
    job = stack.wait(stack.submit("poison.jsonl", config), timeout=60)
    assert job["status"] == "partial" and job["documents_done"] == 3 and job["documents_failed"] == 1, job
    assert [e["document"] for e in job["errors"]] == ["doc-032"]
    assert "1 of 4 documents failed" in job["reason"] and "time limit" in job["reason"]
    assert {r["doc_id"] for r in stack.records(job["id"], "qa")} == {"doc-030", "doc-031", "doc-033"}


def test_cancel_stops_promptly_and_keeps_finished_records(stack, stub, embedded_model_dir):
    stub.configure(delay_ms=300)
    write_docs(stack.data_root / "cancel.jsonl", 30, offset=50)
    job_id = stack.submit("cancel.jsonl", job_config(stub.base_url, embedded_model_dir))
    stack.wait(job_id, until=lambda job: job["documents_done"] >= 1)
    reply = stack.http.delete(f"/v1/jobs/{job_id}")
    assert reply.status_code == 202 and reply.json()["cancel_requested"] is True
    job = stack.wait(job_id, timeout=60)
    # promptly = most documents never started (the whole job needs ~30 s of engine time): counted, not timed,
    # so a loaded CI machine cannot make it flake
    assert job["status"] == "cancelled", job
    assert job["documents_cancelled"] >= 15 and "cancelled by request" in job["reason"]
    assert job["documents_done"] + job["documents_cancelled"] + job["documents_failed"] == 30
    qa = stack.records(job_id, "qa")
    assert len(qa) == len({r["id"] for r in qa}) == job["documents_done"]
    assert stack.http.delete(f"/v1/jobs/{job_id}").status_code == 409  # already ended


def test_inline_documents_and_upload_run_to_the_end(stack, stub, embedded_model_dir):
    lines = write_docs(stack.data_root / "inline-src.jsonl", 2, offset=90).read_text().splitlines()
    config = job_config(stub.base_url, embedded_model_dir)
    inline = stack.http.post("/v1/jobs", json={"config": config,
                                               "documents": [json.loads(line) for line in lines]})
    upload = stack.http.post("/v1/jobs/upload", files={"file": ("docs.jsonl", "\n".join(lines) + "\n")},
                             data={"config": json.dumps(config)})
    for reply in (inline, upload):
        assert reply.status_code == 202, reply.text
        job = stack.wait(reply.json()["id"])
        assert job["status"] == "succeeded" and job["documents_done"] == 2
    assert {r["doc_id"] for r in stack.records(inline.json()["id"], "qa")} == {"doc-090", "doc-091"}
    metrics = stack.http.get("/v1/metrics").text
    assert 'longscale_jobs{status="succeeded"}' in metrics and "longscale_jobs_submitted_total" in metrics
    health = stack.http.get("/v1/healthz").json()
    assert health == {"status": "ok", "redis": "ok", "engine": "ok"}


def test_cli_generate_with_broker_runs_on_the_workers(stack, stub, embedded_model_dir, tmp_path):
    """`longscale generate --broker redis://...` sends the same job through Celery, waits, and leaves the
    output directory that the in-process run leaves."""
    import subprocess
    import sys

    docs = write_docs(tmp_path / "cli.jsonl", 4, offset=70)
    config = job_config(stub.base_url, embedded_model_dir)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in config.items()]
    out = tmp_path / "via-broker"
    env = dict(stack.env, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-m", "longscale.commands.main", "generate", "--input", str(docs), "--output",
                           str(out), "--broker", stack.env["LONGSCALE_REDIS_URL"], "--no-progress", *flags],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    ref_qa, ref_instances, ref_manifest = reference_run(docs, config, tmp_path / "in-process")
    def ids(name: str) -> list[str]:
        return sorted(json.loads(line)["id"] for line in (out / name).read_text().splitlines())

    assert ids("qa.jsonl") == sorted(ref_qa) and ids("instances.jsonl") == sorted(ref_instances)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == ref_manifest["counts"] and manifest["job"]["status"] == "succeeded"
    assert (out / "qa.parquet").exists() and (out / "instances.parquet").exists()


def test_parquet_upload_runs_to_the_end_and_a_bad_one_is_refused(stack, stub, embedded_model_dir, tmp_path):
    """A Parquet corpus POSTed to /v1/jobs/upload over HTTP (real server, real workers) gives a record for every
    document; a damaged Parquet file and one without the text column get a clear 422 and create no job."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in write_docs(tmp_path / "src.jsonl", 3, offset=95).read_text().splitlines()]
    config = job_config(stub.base_url, embedded_model_dir)

    def upload(name: str, data: bytes):
        return stack.http.post("/v1/jobs/upload", files={"file": (name, data)}, data={"config": json.dumps(config)})

    def parquet(table) -> bytes:
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=2)
        return sink.getvalue()

    total_before = stack.http.get("/v1/jobs").json()["total"]
    damaged = upload("broken.parquet", b"PAR1 damaged bytes")
    no_text = upload("notext.parquet", parquet(pa.table({"id": ["a"], "body": ["words"]})))
    for reply, message in ((damaged, "not a parquet file"), (no_text, "notext.parquet[0]: no 'text' field")):
        assert reply.status_code == 422, reply.text
        assert message in json.dumps(reply.json()), reply.json()
    assert stack.http.get("/v1/jobs").json()["total"] == total_before  # refused before any job exists

    reply = upload("corpus.parquet", parquet(pa.Table.from_pylist(rows)))
    assert reply.status_code == 202, reply.text
    job = stack.wait(reply.json()["id"])
    assert job["status"] == "succeeded" and job["documents_done"] == 3, job
    assert {r["doc_id"] for r in stack.records(job["id"], "qa")} == {r["id"] for r in rows}  # nothing lost
