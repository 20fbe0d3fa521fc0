"""The API's defences, against the real server under uvicorn on 127.0.0.1 with a real Redis.

Jobs submitted here go to a queue no worker listens on, so nothing is generated: only the HTTP contract
(auth, paths, body bounds, validation, the OpenAPI schema) is under test.
"""
from __future__ import annotations

import json
import os

import httpx
import pytest

from tests.service.conftest import API_KEY, service_env, start_api

MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def api(service_tmp, redis_url):
    root = service_tmp / "security"
    data_root, jobs_root = root / "data", root / "jobs"
    (data_root / "corpus").mkdir(parents=True)
    (data_root / "corpus" / "book.txt").write_text("A long document. " * 50)
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the API")
    os.symlink(outside, data_root / "escape")  # a symlink inside the root pointing out of it
    env = service_env(redis_url, LONGSCALE_API_KEY=API_KEY, LONGSCALE_DATA_ROOT=str(data_root),
                      LONGSCALE_JOBS_ROOT=str(jobs_root), LONGSCALE_MAX_REQUEST_BYTES=str(MAX_BYTES),
                      LONGSCALE_QUEUE="security-no-workers", LONGSCALE_MAX_JOBS_IN_FLIGHT="10000")
    server, base = start_api(service_tmp, env, name="api-security")
    yield base
    server.stop()


def client(base: str, key: str | None = API_KEY) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"X-API-Key": key} if key else {}, timeout=30)


@pytest.mark.parametrize("key", [None, "wrong-key"])
@pytest.mark.parametrize("method,path", [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/metrics"),
                                         ("GET", "/v1/jobs/0123456789abcdef"),
                                         ("DELETE", "/v1/jobs/0123456789abcdef")])
def test_missing_or_wrong_key_is_401(api, key, method, path):
    reply = client(api, key).request(method, path, json={"path": "corpus"} if method == "POST" else None)
    assert reply.status_code == 401, reply.text
    assert "X-API-Key" in reply.json()["detail"]


def test_health_and_docs_need_no_key(api):
    with client(api, None) as c:
        health = c.get("/v1/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}  # no addresses without a key
        assert client(api).get("/v1/healthz").json()["redis"] == "ok"
        assert c.get("/docs").status_code == 200
        assert "/v1/jobs" in c.get("/openapi.json").json()["paths"]


def test_path_job_under_the_root_is_accepted(api):
    with client(api) as c:
        reply = c.post("/v1/jobs", json={"path": "corpus", "config": {"chunk_tokens": 128, "max_context": 512}})
        assert reply.status_code == 202, reply.text
        job = reply.json()
        assert job["status"] == "queued" and job["source"] == {"kind": "path", "path": "corpus"}
        assert c.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]


@pytest.mark.parametrize("path", ["../outside/secret.txt", "corpus/../../outside", "/etc/passwd", "escape",
                                  "escape/secret.txt"])
def test_traversal_and_symlink_escape_are_refused(api, path):
    reply = client(api).post("/v1/jobs", json={"path": path})
    assert reply.status_code == 403, reply.text
    assert "outside the data root" in reply.json()["detail"]


def test_missing_path_under_root_is_422(api):
    reply = client(api).post("/v1/jobs", json={"path": "corpus/nope.jsonl"})
    assert reply.status_code == 422 and "does not exist" in reply.json()["detail"]


def test_oversized_json_body_is_413(api):
    body = {"documents": [{"text": "x" * (MAX_BYTES + 10)}]}
    reply = client(api).post("/v1/jobs", json=body)
    assert reply.status_code == 413, reply.text


def test_oversized_upload_is_413_even_without_content_length(api):
    """A chunked body declares no length: the bound is enforced while the bytes stream in."""
    def chunks():
        boundary = b"--b0undary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="docs.jsonl"\r\n\r\n'
        for _ in range(40):
            yield json.dumps({"text": "y" * 4000}).encode() + b"\n"
        yield b"\r\n--b0undary--\r\n"

    reply = client(api).post("/v1/jobs/upload", content=chunks(),
                             headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert reply.status_code == 413, reply.text
    assert "larger than" in reply.json()["detail"]


def test_upload_within_bound_is_accepted(api):
    lines = "".join(json.dumps({"id": f"d{i}", "text": "Some text. " * 20}) + "\n" for i in range(3))
    reply = client(api).post("/v1/jobs/upload", files={"file": ("docs.jsonl", lines)},
                             data={"config": json.dumps({"chunk_tokens": 128, "max_context": 512})})
    assert reply.status_code == 202, reply.text
    assert reply.json()["source"] == {"kind": "upload", "filename": "docs.jsonl", "documents": 3}


def test_malformed_json_is_422(api):
    reply = client(api).post("/v1/jobs", content=b'{"documents": [', headers={"Content-Type": "application/json"})
    assert reply.status_code == 422


@pytest.mark.parametrize("config,field", [({"chunk_tokens": "many"}, "chunk_tokens"),
                                          ({"temperature": 9}, "temperature"),
                                          ({"no_such_setting": 1}, "no_such_setting"),
                                          ({"engine": "openai"}, "config")])
def test_bad_config_is_422_naming_the_field(api, config, field):
    reply = client(api).post("/v1/jobs", json={"documents": [{"text": "t"}], "config": config})
    assert reply.status_code == 422, reply.text
    locs = [err["loc"] for err in reply.json()["detail"]]
    assert any(loc[:2] == ["body", "config"] and loc[-1] == field for loc in locs), locs


def test_bad_config_in_upload_is_422_naming_the_field(api):
    reply = client(api).post("/v1/jobs/upload", files={"file": ("d.jsonl", '{"text": "t"}\n')},
                             data={"config": json.dumps({"top_p": 0})})
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["loc"] == ["body", "config", "top_p"]


def test_upload_without_text_field_is_422_naming_it(api):
    reply = client(api).post("/v1/jobs/upload", files={"file": ("d.jsonl", '{"body": "t"}\n')})
    assert reply.status_code == 422
    assert "'text'" in reply.json()["detail"][0]["msg"]


def test_malformed_unicode_in_inline_text_is_422(api):
    reply = client(api).post("/v1/jobs", content=b'{"documents": [{"text": "ab\\ud800cd"}]}',
                             headers={"Content-Type": "application/json"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "documents", 0, "text"]


def test_unknown_job_is_404_and_bad_id_422(api):
    with client(api) as c:
        assert c.get("/v1/jobs/0123456789abcdef").status_code == 404
        assert c.get("/v1/jobs/..%2F..%2Fetc").status_code in (404, 422)
        assert c.get("/v1/jobs/not-an-id").status_code == 422


def test_jobs_are_paged_newest_first(api):
    with client(api) as c:
        ids = [c.post("/v1/jobs", json={"documents": [{"text": f"doc {i}"}]}).json()["id"] for i in range(3)]
        page = c.get("/v1/jobs", params={"limit": 2}).json()
        assert page["total"] >= 3 and [j["id"] for j in page["items"]] == ids[::-1][:2]
        second = c.get("/v1/jobs", params={"limit": 2, "offset": 1}).json()
        assert second["items"][0]["id"] == ids[1]


def test_metrics_count_requests_and_jobs(api):
    with client(api) as c:
        c.get("/v1/jobs")
        text = c.get("/v1/metrics").text
    assert 'longscale_http_requests_total{method="GET",route="/v1/jobs",status="200"}' in text
    assert 'longscale_jobs{status="queued"}' in text


def test_schemathesis_finds_no_server_errors(api):
    """A bounded property-based run over every operation of the OpenAPI schema: no 500s, valid responses."""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis not installed (pip install schemathesis)")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(api + "/openapi.json")
    failures, statuses = [], []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=12, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case):
            case.headers = {**(case.headers or {}), "X-API-Key": API_KEY}
            reply = case.call(base_url=api)
            statuses.append(reply.status_code)
            if reply.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {reply.status_code}: {reply.text[:300]}")

        check()
    assert not failures, "\n".join(failures)
    assert len(statuses) >= 40 and any(code < 300 for code in statuses), statuses  # it really exercised the API


def _run_api(env_extra: dict, *args: str):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGSCALE_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "longscale.commands.main", "api", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_api_refuses_to_start_without_a_key():
    done = _run_api({})
    assert done.returncode == 2 and "LONGSCALE_API_KEY" in done.stderr


def test_auth_off_refuses_a_non_loopback_bind():
    done = _run_api({"LONGSCALE_AUTH_DISABLED": "true"}, "--host", "0.0.0.0")
    assert done.returncode == 2 and "loopback" in done.stderr


def test_auth_off_serves_loopback_clients_without_a_key(service_tmp, redis_url):
    env = service_env(redis_url, LONGSCALE_AUTH_DISABLED="true", LONGSCALE_QUEUE="security-no-workers",
                      LONGSCALE_JOBS_ROOT=str(service_tmp / "open-jobs"))
    server, base = start_api(service_tmp, env, name="api-open")
    try:
        assert httpx.get(base + "/v1/jobs", timeout=10).status_code == 200
    finally:
        server.stop()
