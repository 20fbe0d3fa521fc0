"""The FaultInjectingServer itself: its command line (used by other components' end-to-end tests) and
its control surface."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from datafactory.testing import FaultInjectingServer, FaultSpec


def post(url: str, body: bytes) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_cli_faults_every_request_unless_fail_first():
    cmd = [sys.executable, "-m", "datafactory.testing.fault_server", "--port", "0", "--mode", "rate_limit",
           "--retry-after", "7", "--fail-first", "1", "--model", "served-x"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()
            assert line.startswith("LISTENING "), line
            url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
            with urllib.request.urlopen(url + "/models", timeout=10) as resp:
                assert json.loads(resp.read())["data"][0]["id"] == "served-x"
            body = json.dumps({"model": "served-x", "messages": [{"role": "user", "content": "hi"}]}).encode()
            status, headers, _ = post(url + "/chat/completions", body)
            assert status == 429 and headers["Retry-After"] == "7"
            status, _, raw = post(url + "/chat/completions", body)
            reply = json.loads(raw)
            assert status == 200 and "<question>" in reply["choices"][0]["message"]["content"]
            status, _, _ = post(url + "/chat/completions", b"{not json")
            assert status == 400
        finally:
            proc.terminate()
            proc.wait(10)


def test_configure_rejects_unknown_fields_and_stats_count():
    with pytest.raises(ValueError, match="unknown FaultSpec fields"):
        FaultSpec.from_dict({"mode": "ok", "bogus": 1})
    with FaultInjectingServer(text="<verdict>no</verdict>") as server:
        body = json.dumps({"messages": [{"role": "user", "content": "q"}]}).encode()
        status, _, raw = post(server.base_url + "/chat/completions", body)
        assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "<verdict>no</verdict>"
        stats = server.stats()
        assert stats["chat_requests"] == 1 and stats["responses"] == {"200": 1} and stats["max_in_flight"] == 1
        server.reset_stats()
        assert server.stats()["chat_requests"] == 0
