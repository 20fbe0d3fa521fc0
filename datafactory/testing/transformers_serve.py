"""TransformersServe: a real `transformers serve` process on 127.0.0.1 (a free port), as a context manager.

It is the stand-in for `vllm serve` on machines without vllm: same OpenAI-compatible protocol, a real
model behind it (the embedded SmolLM2 by default). It needs the `transformers[serving]` extra (fastapi,
uvicorn). Starting costs a few seconds of model loading; the process is killed on exit.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from datafactory.testing.processes import stop_process

_LAUNCH = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TransformersServe:
    """`with TransformersServe(model_dir) as srv: srv.base_url` -> http://127.0.0.1:PORT/v1."""

    def __init__(self, model_dir: str | Path, *, port: int | None = None, extra_args: tuple[str, ...] = (),
                 startup_timeout: float = 180.0, env: dict[str, str] | None = None) -> None:
        self.model_dir = str(model_dir)
        self.port = port or free_port()
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="transformers-serve-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log_tail(self, chars: int = 3000) -> str:
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def start(self) -> "TransformersServe":
        cmd = [sys.executable, "-c", _LAUNCH, "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", *self.extra_args, self.model_dir]
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=self.env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, tail = self.process.returncode, self.log_tail()
                self.stop()
                raise RuntimeError(f"transformers serve exited with {code}:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"transformers serve was not ready after {self.startup_timeout:.0f} s:\n{tail}")

    def stop(self) -> None:
        stop_process(self.process, grace_s=10)
        self._log.close()

    def __enter__(self) -> "TransformersServe":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)
