"""Stopping a child server process: terminate, wait a grace period, then kill."""
from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen | None, grace_s: float) -> None:
    """Terminate `process` if it still runs; kill it when it outlives `grace_s` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
