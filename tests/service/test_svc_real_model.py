"""One job through the whole stack with a REAL model: `transformers serve` with the embedded SmolLM2 on CPU,
a Celery worker, the API under uvicorn, redis-server. Greedy decoding, so the service and the in-process
run of the same config and seed ask the same questions of the same server."""
from __future__ import annotations

import json

import pytest

from tests.service.conftest import API_KEY, policy_env, service_env, start_api, start_worker
from tests.service.test_svc_end_to_end import Stack, job_config, reference_run, write_docs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(embedded_model_dir):
    from datafactory.testing import TransformersServe

    with TransformersServe(embedded_model_dir, env={"OMP_NUM_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def real_stack(service_tmp, redis_url, served, embedded_model_dir):
    root = service_tmp / "real"
    data_root = root / "data"
    data_root.mkdir(parents=True)
    # a CPU model takes tens of seconds per document: give documents room, and keep redelivery past that
    env = service_env(redis_url, LONGSCALE_API_KEY=API_KEY, LONGSCALE_DATA_ROOT=str(data_root),
                      LONGSCALE_JOBS_ROOT=str(root / "jobs"), LONGSCALE_ENGINE_URL=served.base_url,
                      LONGSCALE_QUEUE="real", LONGSCALE_DOCUMENT_TIME_LIMIT="600", LONGSCALE_VISIBILITY_TIMEOUT="900",
                      **policy_env(served.base_url, model_roots=(embedded_model_dir.parent,)))
    api, base = start_api(service_tmp, env, name="api-real")
    worker = start_worker("w-real", service_tmp, env)
    yield Stack(base, data_root, {"w-real": worker}, service_tmp, env)
    worker.stop()
    api.stop()


def test_real_model_job_over_http_equals_in_process(real_stack, served, embedded_model_dir, tmp_path):
    docs = write_docs(real_stack.data_root / "real.jsonl", 2, offset=95)
    config = job_config(served.base_url, embedded_model_dir, temperature=0.0, max_new_tokens=128, concurrency=1,
                        request_timeout=300)
    assert real_stack.http.get("/v1/healthz").json()["engine"] == "ok"
    job = real_stack.wait(real_stack.submit("real.jsonl", config), timeout=400)
    assert job["status"] == "succeeded", job
    qa = real_stack.records(job["id"], "qa")
    ref_qa, ref_instances, ref_manifest = reference_run(docs, config, tmp_path / "in-process")
    assert sorted(r["id"] for r in qa) == sorted(ref_qa) and len(qa) == 2
    assert sorted(i["id"] for i in real_stack.records(job["id"], "instances")) == sorted(ref_instances)
    assert all(r["model"] == str(embedded_model_dir) and r["raw"] for r in qa)  # real generations, not canned
    reference = {json.loads(line)["id"]: json.loads(line)
                 for line in (tmp_path / "in-process" / "qa.jsonl").read_text().splitlines()}
    for record in qa:  # greedy decoding, one request at a time: the same text, extraction and verdict
        ref = reference[record["id"]]
        assert (record["raw"], record["reject_reason"], record["critique"]) == \
            (ref["raw"], ref["reject_reason"], ref["critique"])
    assert job["requests"] == ref_manifest["this_run"]["requests"]
