"""Issue 12, case 1 (SSRF, credentials): a job calls only the operator's engines, and each credential goes only
to its own engine. Real processes: redis-server, a Celery worker, the API under uvicorn, two fault-injecting
stub engines (fakes that run no model: one named with a credential, one allowlisted without) and a plain
listening socket standing for an internal service that must receive nothing."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from datafactory.config import GenerationConfig
from tests.service.conftest import API_KEY, service_env, start_api, start_worker
from tests.service.test_svc_end_to_end import FINAL, Stack, job_config, write_docs
from worker.engine_policy import EngineNotAllowed, allowed_config, worker_config
from worker.settings import WorkerSettings

NAMED_SECRET, WORKER_ENV_SECRET = "named-engine-secret-1234", "worker-env-openai-secret-5678"


class Trap:
    """A listening TCP socket that records every connection it gets (it must get none)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.connections = 0
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def engines():
    from datafactory.testing.fault_server import FaultInjectingServer

    with FaultInjectingServer(delay_ms=5) as named, FaultInjectingServer(delay_ms=5) as open_engine:
        trap = Trap()
        yield named, open_engine, trap
        trap.close()


@pytest.fixture(scope="module")
def policy_stack(service_tmp, redis_url, engines, embedded_model_dir):
    named, open_engine, _ = engines
    root = service_tmp / "policy"
    (root / "data").mkdir(parents=True)
    env = service_env(redis_url, LONGSCALE_API_KEY=API_KEY, LONGSCALE_DATA_ROOT=str(root / "data"),
                      LONGSCALE_JOBS_ROOT=str(root / "jobs"), LONGSCALE_QUEUE="policy",
                      LONGSCALE_ENGINES=json.dumps({"chat": {"base_url": named.base_url, "api_key_env": "NAMED_KEY"}}),
                      LONGSCALE_ENGINE_ALLOWLIST=json.dumps([open_engine.base_url]),
                      LONGSCALE_MODEL_ROOTS=json.dumps([str(embedded_model_dir.parent)]),
                      NAMED_KEY=NAMED_SECRET, OPENAI_API_KEY=WORKER_ENV_SECRET,
                      LONGSCALE_DOCUMENT_TIME_LIMIT="120", LONGSCALE_VISIBILITY_TIMEOUT="600")  # no limit under test
    api, base = start_api(service_tmp, env, name="api-policy")
    worker = start_worker("w-policy", service_tmp, env)
    yield Stack(base, root / "data", {"w-policy": worker}, service_tmp, env)
    worker.stop()
    api.stop()


def settings(tmp_path, **extra) -> WorkerSettings:
    return WorkerSettings(engines={"chat": {"base_url": "http://vllm:8000/v1", "model": "chat", "api_key_env": "K"}},
                          engine_allowlist=["http://open:9000/v1"], model_roots=[tmp_path], **extra)


def test_policy_names_engines_allowlists_urls_and_refuses_the_rest(tmp_path, monkeypatch):
    (tmp_path / "tok").mkdir()
    ops = settings(tmp_path)
    cfg = allowed_config(GenerationConfig(), ops, engine_name="chat")
    assert (cfg.engine, cfg.base_url, cfg.model) == ("openai", "http://vllm:8000/v1", "chat")
    assert allowed_config(GenerationConfig(engine="openai", base_url="http://open:9000"), ops).base_url \
        == "http://open:9000/v1"
    for url in ("http://10.0.0.5:6379/v1", "http://open:9000/v1?x=/admin", "http://open:9001/v1", "file:///etc"):
        with pytest.raises(EngineNotAllowed) as refused:
            allowed_config(GenerationConfig(engine="openai", base_url=url), ops)
        assert refused.value.field == "base_url"
    with pytest.raises(EngineNotAllowed, match="no engine named"):
        allowed_config(GenerationConfig(), ops, engine_name="nope")
    # model and tokenizer names: the same refusal whether the path exists outside the roots or not at all
    assert allowed_config(GenerationConfig(tokenizer="tok"), ops).tokenizer == str((tmp_path / "tok").resolve())
    messages = set()
    for name in ("/etc", "/no/such/dir", "../../etc", "missing"):
        with pytest.raises(EngineNotAllowed) as refused:
            allowed_config(GenerationConfig(tokenizer=name), ops)
        messages.add(str(refused.value).replace(repr(name), "NAME"))
    assert len(messages) == 1
    # the worker sends its credential to its own engine only; an allowlisted URL gets the client's key or none
    monkeypatch.setenv("K", "s3cret")
    assert worker_config(GenerationConfig(engine="openai", base_url="http://vllm:8000/v1"), ops).api_key == "s3cret"
    assert worker_config(GenerationConfig(engine="openai", base_url="http://open:9000/v1"), ops).api_key is None


def test_client_base_urls_outside_the_allowlist_are_refused_and_nothing_is_sent(policy_stack, engines):
    _, _, trap = engines
    for url in (trap.url, trap.url + "?a=/internal", "http://127.0.0.1:1/v1"):
        reply = policy_stack.http.post("/v1/jobs", json={"documents": [{"text": "x " * 400}],
                                                         "config": {"engine": "openai", "base_url": url}})
        assert reply.status_code == 422, reply.text
        assert reply.json()["detail"][0]["loc"] == ["body", "config", "base_url"]
    reply = policy_stack.http.post("/v1/jobs", json={"documents": [{"text": "x"}], "engine_name": "other"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "engine_name"]
    assert trap.connections == 0


def test_a_job_that_bypasses_the_api_still_calls_nothing_outside_the_allowlist(policy_stack, engines,
                                                                               embedded_model_dir, tmp_path):
    """What `longscale generate --broker` or a forged message does: the worker applies the same policy."""
    from worker.jobstore import JobStore
    from worker.submit import start_job, wait_for_job

    _, _, trap = engines
    store = JobStore.from_url(policy_stack.env["LONGSCALE_REDIS_URL"])
    docs = write_docs(tmp_path / "bypass.jsonl", 2, offset=100)
    config = GenerationConfig.model_validate(job_config(trap.url, embedded_model_dir))
    job_id = start_job(store, policy_stack.env["LONGSCALE_REDIS_URL"], [docs], config, tmp_path / "out",
                       queue="policy")
    job = wait_for_job(store, job_id, progress=False, poll_seconds=0.2, timeout=60)
    assert job["status"] == "failed" and "not an engine this server allows" in job["reason"], job
    assert trap.connections == 0


def test_named_engine_gets_its_credential_and_the_allowlisted_one_none(policy_stack, engines, embedded_model_dir):
    named, open_engine, trap = engines
    named.reset_stats(), open_engine.reset_stats()
    write_docs(policy_stack.data_root / "two.jsonl", 2, offset=104)
    config = {k: v for k, v in job_config("unused", embedded_model_dir).items() if k not in ("engine", "base_url")}
    reply = policy_stack.http.post("/v1/jobs", json={"path": "two.jsonl", "engine_name": "chat", "config": config})
    assert reply.status_code == 202, reply.text
    assert policy_stack.wait(reply.json()["id"])["status"] == "succeeded"
    assert policy_stack.wait(policy_stack.submit("two.jsonl", job_config(open_engine.base_url, embedded_model_dir,
                                                                         seed=8)))["status"] == "succeeded"
    named_auth = {b["authorization"] for b in named.stats()["bodies"]}
    open_auth = {b["authorization"] for b in open_engine.stats()["bodies"]}
    assert named_auth == {f"Bearer {NAMED_SECRET}"}
    assert open_auth == {None}  # neither the named engine's key nor the worker's OPENAI_API_KEY
    assert trap.connections == 0


def test_engine_error_bodies_stay_in_the_worker_log(policy_stack, engines, embedded_model_dir):
    _, open_engine, _ = engines
    open_engine.configure(mode="http_error", status=400, fail_first=-1, delay_ms=5)  # 400: not retried
    try:
        write_docs(policy_stack.data_root / "err.jsonl", 1, offset=108)
        job = policy_stack.wait(policy_stack.submit("err.jsonl", job_config(open_engine.base_url, embedded_model_dir)))
    finally:
        open_engine.configure(mode="ok", delay_ms=5)
    assert job["status"] in FINAL and job["documents_failed"] == 1, job
    shown = json.dumps(job) + policy_stack.http.get(f"/v1/jobs/{job['id']}/qa").text
    assert "injected 400" not in shown and "http_400" in shown
    assert "injected 400" in policy_stack.workers["w-policy"].log_text()


def test_job_links_are_relative_whatever_the_host_header(policy_stack):
    reply = policy_stack.http.get("/v1/jobs", headers={"Host": "evil.example"})
    assert reply.status_code == 200
    assert all(item["links"]["self"].startswith("/v1/jobs/") for item in reply.json()["items"])
    assert "evil.example" not in reply.text


def test_failure_reasons_carry_no_absolute_server_paths():
    from api.routes.jobs import public_text

    shown = public_text("could not read the inputs: [Errno 2] No such file: '/srv/jobs/ab12/input/x.jsonl' "
                        "(engine http://vllm:8000/v1)")
    assert "/srv/jobs" not in shown and ".../x.jsonl" in shown and "http://vllm:8000/v1" in shown
