"""Issue 12, cases 5-7 and tenancy: keys per client, jobs owned by their key, limits answered with the 4xx/429
that names the setting. The real API under uvicorn with a real Redis; jobs go to a queue no worker listens
on, so they stay in flight (what the per-client limit counts)."""
from __future__ import annotations

import io
import json
import os
import socket
import time

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from api.settings import key_digest
from tests.service.conftest import API_KEY, service_env, start_api

KEYS = {"alice": "alice-key-000000000", "bob": "bob-key-1111111111", "dave": "dave-key-222222222",
        "carol": "carol-key-33333333"}


@pytest.fixture(scope="module")
def api(service_tmp, redis_url):
    root = service_tmp / "tenancy"
    data_root, jobs_root = root / "data", root / "jobs"
    (data_root / "books").mkdir(parents=True)
    (data_root / "books" / "a.txt").write_text("A long document. " * 50)
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the API")
    os.symlink(outside / "secret.txt", data_root / "books" / "link.txt")  # a symlink inside a real folder
    (data_root / "clean").mkdir()
    (data_root / "clean" / "b.txt").write_text("Another document. " * 50)
    counted = data_root / "counted"  # inputs a shortcut miscounts (see the admission test below)
    (counted / "only_csv").mkdir(parents=True)
    (counted / "only_csv" / "x.csv").write_text("text\nnot an input\n")
    (counted / "one_line.json").write_text(json.dumps([{"text": f"doc {i} " * 20} for i in range(6)]))
    (counted / "pretty.json").write_text(json.dumps([{"text": f"doc {i} " * 20} for i in range(3)], indent=2))
    from datasets import Dataset

    Dataset.from_dict({"text": [f"row {i} " * 20 for i in range(6)]}).save_to_disk(counted / "saved")
    keys_file = root / "keys.json"
    keys_file.write_text(json.dumps({"carol": {"sha256": key_digest(KEYS["carol"])}}))
    clients = {name: {"sha256": key_digest(KEYS[name])} for name in ("alice", "bob", "dave")}
    env = service_env(redis_url, LONGSCALE_API_KEY=API_KEY, LONGSCALE_API_KEYS=json.dumps(clients),
                      LONGSCALE_API_KEYS_FILE=str(keys_file), LONGSCALE_DATA_ROOT=str(data_root),
                      LONGSCALE_JOBS_ROOT=str(jobs_root), LONGSCALE_QUEUE="tenancy-no-workers",
                      LONGSCALE_MAX_JOBS_IN_FLIGHT="2", LONGSCALE_MAX_DOCUMENTS_PER_JOB="5",
                      LONGSCALE_MAX_DOCUMENT_BYTES="2048", LONGSCALE_MAX_REQUESTS_IN_FLIGHT_PER_JOB="8",
                      LONGSCALE_MAX_CHUNKS_PER_DOC="4", LONGSCALE_MAX_HEADER_BYTES="8192",
                      LONGSCALE_KEEP_ALIVE_SECONDS="1")
    server, base = start_api(service_tmp, env, name="api-tenancy")
    yield base, jobs_root
    server.stop()


def as_(api, name: str) -> httpx.Client:
    base, _ = api
    return httpx.Client(base_url=base, headers={"X-API-Key": API_KEY if name == "admin" else KEYS[name]}, timeout=30)


def submit(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/jobs", json={"documents": [{"text": "word " * 100}], "config": {"concurrency": 1}, **body})


def test_clients_see_and_cancel_only_their_own_jobs(api):
    alice, bob, carol, admin = as_(api, "alice"), as_(api, "bob"), as_(api, "carol"), as_(api, "admin")
    job = submit(alice).json()
    assert job["owner"] == "alice"
    assert bob.get(f"/v1/jobs/{job['id']}").status_code == 404  # not 403: its existence is not revealed
    assert bob.delete(f"/v1/jobs/{job['id']}").status_code == 404
    assert bob.get(f"/v1/jobs/{job['id']}/qa").status_code == 404
    assert job["id"] not in {j["id"] for j in bob.get("/v1/jobs").json()["items"]}
    assert job["id"] in {j["id"] for j in alice.get("/v1/jobs").json()["items"]}
    assert job["id"] in {j["id"] for j in admin.get("/v1/jobs", params={"limit": 200}).json()["items"]}
    assert submit(carol).status_code == 202  # a client from the keys file
    assert admin.delete(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"  # DELETE ends it: no worker
    assert httpx.get(api[0] + "/v1/jobs", headers={"X-API-Key": key_digest(KEYS["alice"])}).status_code == 401


def test_jobs_in_flight_per_client_is_429_naming_the_limit(api):
    dave, bob = as_(api, "dave"), as_(api, "bob")
    assert [submit(dave).status_code for _ in range(2)] == [202, 202]
    refused = submit(dave)
    assert refused.status_code == 429 and "LONGSCALE_MAX_JOBS_IN_FLIGHT" in refused.json()["detail"]
    assert submit(bob).status_code == 202  # another client is not held back by dave's jobs


@pytest.mark.parametrize("body,status,names", [
    ({"documents": [{"text": "w " * 50}] * 6, "config": {"concurrency": 1}}, 413, "MAX_DOCUMENTS_PER_JOB"),
    ({"documents": [{"text": "é" * 1500}], "config": {"concurrency": 1}}, 413, "MAX_DOCUMENT_BYTES"),
    ({"documents": [{"text": "w"}], "config": {"concurrency": 9}}, 422, "MAX_REQUESTS_IN_FLIGHT_PER_JOB"),
    ({"documents": [{"text": "w"}], "config": {"chunks_per_doc": "all", "concurrency": 1}}, 422, "MAX_CHUNKS_PER_DOC"),
    ({"documents": [{"text": "w"}], "config": {"chunks_per_doc": 5, "concurrency": 1}}, 422, "MAX_CHUNKS_PER_DOC"),
])
def test_limits_answer_with_the_setting_they_hit(api, body, status, names):
    reply = as_(api, "bob").post("/v1/jobs", json=body)
    assert reply.status_code == status and names in reply.json()["detail"], reply.text


@pytest.mark.parametrize("raw,field", [(b'{"max_retries": 1000000000}', "max_retries"),
                                       (b'{"request_timeout": 1e999}', "request_timeout"),
                                       (b'{"seed": 100000000000000000000000}', "seed")])
def test_numeric_config_fields_are_bounded(api, raw, field):
    body = b'{"documents": [{"text": "w"}], "config": ' + raw + b"}"
    reply = as_(api, "bob").post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "config", field], reply.text


def _job_folders(api) -> set:
    _, jobs_root = api
    return set(os.listdir(jobs_root)) if jobs_root.exists() else set()


@pytest.mark.parametrize("name,content,status", [
    ("bad.jsonl", b'{"text": "\xff\xfe not utf-8"}\n', 422),
    ("deep.jsonl", b'{"text": "x", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", 422),
    ("many.parquet", None, 413),  # 2,000 rows in a few KB: refused from the footer, before it is read
])
def test_bad_uploads_are_4xx_and_leave_no_job_folder(api, name, content, status):
    if content is None:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"text": ["same text"] * 2000}), buffer)
        content = buffer.getvalue()
    before = _job_folders(api)
    reply = as_(api, "bob").post("/v1/jobs/upload", files={"file": (name, content)},
                                 data={"config": '{"concurrency": 1}'})
    assert reply.status_code == status, reply.text
    assert _job_folders(api) == before
    assert str(api[1]) not in reply.text  # no server path in the message


def test_a_symlink_inside_a_real_folder_is_refused(api):
    bob = as_(api, "bob")
    for path in ("books", "books/link.txt"):
        reply = bob.post("/v1/jobs", json={"path": path, "config": {"concurrency": 1}})
        assert reply.status_code == 403 and "symlink" in reply.json()["detail"], reply.text
    assert bob.post("/v1/jobs", json={"path": "clean", "config": {"concurrency": 1}}).status_code in (202, 429)  # admitted (or bob is at his limit)


def test_health_details_only_with_a_key(api):
    base, _ = api
    assert httpx.get(base + "/v1/healthz").json() == {"status": "ok"}
    detailed = as_(api, "bob").get("/v1/healthz").json()
    assert detailed["redis"] == "ok" and "engine" in detailed


def test_oversized_and_too_many_headers_are_refused(api):
    base, _ = api
    for headers in ({"X-Big": "a" * 200_000}, {f"X-H{i}": "v" for i in range(5000)}):
        try:
            status = httpx.get(base + "/v1/healthz", headers=headers, timeout=30).status_code
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):  # cut off unanswered: refused too
            status = 400
        assert 400 <= status < 500


def test_a_stalled_connection_is_closed(api):
    """A client that opens a connection and trickles half a request head is cut off (keep-alive 1 s here)."""
    base, _ = api
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        deadline = time.monotonic() + 30
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                closed = sock.recv(1024) == b""
            except ConnectionResetError:
                closed = True
    assert closed


def test_finished_jobs_expire_from_redis_and_disk(redis_url, tmp_path):
    from api.housekeeping import expire_finished
    from api.settings import ApiSettings
    from worker.jobstore import JobStore, new_job_id

    redis_url = redis_url.rsplit("/", 1)[0] + "/5"  # a database of its own: retention sweeps everything in it
    store = JobStore.from_url(redis_url)
    settings = ApiSettings(api_key="k", jobs_root=tmp_path, redis_url=redis_url, job_retention_seconds=60)
    job_id = new_job_id()
    (tmp_path / job_id / "output").mkdir(parents=True)
    store.create(job_id, output_dir=str(tmp_path / job_id / "output"), config={}, source={}, extra={"owner": "x"})
    store.set_status(job_id, "succeeded", retention_seconds=settings.job_retention_seconds)
    assert 0 < store.redis.ttl(f"longscale:job:{job_id}") <= 60  # Redis lets it go by itself too
    expire_finished(store, settings, now=time.time())
    assert store.exists(job_id)  # not past retention yet
    assert expire_finished(store, settings, now=time.time() + 61) >= 1
    assert not store.exists(job_id) and not (tmp_path / job_id).exists()
    assert job_id not in store.redis.zrange("longscale:jobs", 0, -1)


def test_metrics_read_jobs_by_status_in_constant_round_trips(redis_url, tmp_path):
    from worker.jobstore import JobStore, new_job_id

    store = JobStore.from_url(redis_url)
    calls = []
    original = store.redis.execute_command
    store.redis.execute_command = lambda *args, **kw: calls.append(args[0]) or original(*args, **kw)

    def round_trips() -> int:
        calls.clear()
        store.count_by_status()
        return len(calls)

    store.count_by_status()  # the first call also loads the script
    few = round_trips()
    for _ in range(100):
        store.create(new_job_id(), output_dir=str(tmp_path), config={}, source={})
    assert round_trips() == few == 1


def test_a_job_whose_workers_are_all_gone_ends_failed_saying_so(redis_url, tmp_path):
    from worker.jobstore import JobStore, new_job_id
    from worker.reconciler import WORKER_KEY, abandon_stalled

    store = JobStore.from_url(redis_url.rsplit("/", 1)[0] + "/6")  # a database no worker reports to
    job_id = new_job_id()
    store.create(job_id, output_dir=str(tmp_path), config={}, source={})
    store.update(job_id, documents_total=3)
    assert abandon_stalled(store, abandon_after=60, retention_seconds=60) == []  # not stalled yet
    store.redis.set(WORKER_KEY + "w", 1, ex=30)
    assert abandon_stalled(store, abandon_after=60, retention_seconds=60, now=time.time() + 120) == []  # a worker lives
    store.redis.delete(WORKER_KEY + "w")
    assert abandon_stalled(store, abandon_after=60, retention_seconds=60, now=time.time() + 120) == [job_id]
    job = store.get(job_id)
    assert job["status"] == "failed" and "no worker has been alive" in job["reason"]


@pytest.mark.parametrize("path,status,names", [
    ("counted/one_line.json", 413, "\"6 documents in one job"),  # six on one line: once counted as 1 and admitted
    ("counted/saved", 413, "\"6 documents in one job"),  # a saved dataset: once counted by its files' lines (26)
    ("counted/pretty.json", 202, ""),  # three documents on 11 lines: once refused as 11
    ("counted/only_csv", 422, "counted/only_csv: no .txt, .md, .jsonl, .json or .parquet files"),  # once admitted
])
def test_data_root_inputs_are_counted_as_the_worker_reads_them(api, path, status, names):
    """A data-root path is never read by the API: its count (datafactory.documents.count_documents, the
    records reader's count) is all that stands between it and MAX_DOCUMENTS_PER_JOB."""
    reply = as_(api, "alice").post("/v1/jobs", json={"path": path, "config": {"concurrency": 1}})
    assert reply.status_code == status and names in reply.text, reply.text
    assert str(api[1].parent) not in reply.text  # no server path in the message
