"""docker-compose.yml and the Dockerfile, checked by parsing (no Docker engine on these machines).

Every command of a service built from our image must parse with the real `longscale` argparse parser and
reach a subcommand; every LONGSCALE_* variable must be a field the settings read.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from api.settings import ApiSettings
from longscale.commands.main import build_parser

REPO = Path(__file__).resolve().parents[2]
OUR_IMAGE = "longscale:latest"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def our_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items()
            if svc.get("image") == OUR_IMAGE or "build" in svc}


def test_the_stack_has_every_service(compose):
    assert {"redis", "api", "worker", "vllm", "flower"} <= set(compose["services"])
    assert set(our_services(compose)) == {"api", "worker", "flower"}


@pytest.mark.parametrize("service", ["api", "worker", "flower"])
def test_commands_are_real_longscale_subcommands(compose, service):
    command = compose["services"][service]["command"]
    assert command[0] == "longscale", command
    args = build_parser().parse_args(command[1:])  # argparse exits (fails the test) on an unknown flag
    assert args.command == command[1] and callable(args.func)


def test_every_longscale_variable_is_a_setting(compose):
    fields = {f"LONGSCALE_{name.upper()}" for name in ApiSettings.model_fields}
    seen = set()
    for name, svc in our_services(compose).items():
        for var in (svc.get("environment") or {}):
            if var.startswith("LONGSCALE_"):
                seen.add(var)
                assert var in fields, f"{name}: {var} is read by no setting ({sorted(fields)})"
    assert {"LONGSCALE_REDIS_URL", "LONGSCALE_API_KEY", "LONGSCALE_JOBS_ROOT"} <= seen


def test_settings_read_the_compose_values(compose, monkeypatch):
    env = compose["services"]["api"]["environment"]
    for var, value in env.items():
        monkeypatch.setenv(var, re.sub(r"\$\{[^}]*\}", "k", str(value)))
    settings = ApiSettings()
    assert settings.redis_url == "redis://redis:6379/0" and settings.jobs_root == Path("/srv/jobs")
    assert settings.engine_url == "http://vllm:8000/v1" and settings.api_key.get_secret_value() == "k"


def test_dependencies_wait_for_health(compose):
    services = compose["services"]
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    for name in ("api", "worker", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has no healthcheck"


def test_worker_scales_and_shares_the_job_volume(compose):
    worker, api = compose["services"]["worker"], compose["services"]["api"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N needs neither
    assert "jobs:/srv/jobs" in worker["volumes"] and "jobs:/srv/jobs" in api["volumes"]


def test_vllm_reserves_a_gpu_and_names_the_model(compose):
    vllm = compose["services"]["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai")
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "--served-model-name" in vllm["command"]
    assert any(v.endswith(":/models/chat:ro") for v in vllm["volumes"])


def test_flower_is_behind_a_profile(compose):
    assert compose["services"]["flower"]["profiles"] == ["monitoring"]


def test_dockerfile_installs_the_service_extras_and_copies_what_they_import():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r'pip install "\.\[api,worker\]"', text)
    for package in ("longscale", "datafactory", "worker", "api"):
        assert f"COPY {package} ./{package}" in text
    assert "USER " in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and yaml.safe_load(cmd.group(1))[0] == "longscale"
