"""docker-compose.yml and the Dockerfile, checked by parsing (no Docker engine on these machines).

Every command of a service built from our image must parse with the real `longscale` argparse parser and
reach a subcommand; every LONGSCALE_* variable must be a field the settings read.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic_core import to_jsonable_python

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


def test_every_dependency_is_a_service_of_the_stack(compose):
    services = compose["services"]
    assert our_services(compose), "no service runs our image"
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on {dep}, which is not in the stack"


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
    """Each LONGSCALE_* value of the api service arrives in ApiSettings unchanged (compared with the compose
    file's own values, so a renamed field, a wrong type or a silently ignored variable fails)."""
    env = {var: re.sub(r"\$\{[^}]*\}", "k", str(value))
           for var, value in compose["services"]["api"]["environment"].items()}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = ApiSettings()
    for var, value in env.items():
        if not var.startswith("LONGSCALE_"):
            continue
        got = getattr(settings, var.removeprefix("LONGSCALE_").lower())
        got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
        if isinstance(got, (dict, list)) or hasattr(got, "model_dump"):  # a JSON-valued setting
            assert to_jsonable_python(got, exclude_none=True) == json.loads(value), (var, value, got)
        else:
            assert str(got) == value or got == type(got)(value), (var, value, got)


def test_services_that_wait_for_health_wait_on_a_healthcheck(compose):
    services = compose["services"]
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has no healthcheck"


def test_worker_scales_and_sees_the_api_job_folder(compose):
    worker, api = compose["services"]["worker"], compose["services"]["api"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N needs neither
    jobs_root = str(api["environment"]["LONGSCALE_JOBS_ROOT"])
    mounted = [v for v in api["volumes"] if v.split(":")[1] == jobs_root]
    assert mounted and set(mounted) <= set(worker["volumes"]), "the workers must write where the API reads"
