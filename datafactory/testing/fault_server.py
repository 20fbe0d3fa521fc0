"""FaultInjectingServer: a fake OpenAI-compatible chat server that answers canned text or fails on purpose.

It is a fake by design: it runs no model. It exists to exercise the `openai` engine's retry, timeout
and give-up paths and to serve as the "stub engine" in throughput benchmarks. It speaks just enough
HTTP/1.1 (keep-alive, Content-Length bodies) and just enough of the OpenAI API (GET /v1/models, POST
/v1/chat/completions) on raw asyncio streams, in its own process, so that it sustains thousands of
requests/s on one core and never competes with the client's event loop for the GIL.

Faults: the first `fail_first` chat requests (all of them when -1) get `mode`:
  ok          canned text after `delay_ms`
  http_error  status `status` (500, 503, 400, ...) with a JSON error body
  rate_limit  429 with `Retry-After: <retry_after>`
  hang        no answer for `hang_s` seconds (longer than the client's timeout), then the canned text
  drop        the connection is closed without an answer
  malformed   200 with a body that is not JSON
Later requests get the canned text. The reply is CANNED_VERDICT when the request mentions "verdict"
(a self-critique prompt), else CANNED_QA, unless `text` overrides both.

Control (JSON): POST /_control {FaultSpec fields} replaces the spec and resets counters; GET /_stats
returns counts, max in-flight and the last requests ({"body", "authorization"}); POST /_reset clears the stats.

CLI: python -m datafactory.testing.fault_server --port 8011 --delay-ms 200 --mode ok
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from datafactory.testing.processes import stop_process

CANNED_QA = ("Here is a question and answer based on the text.\n"
             "<question>Who wrote the letter that Elizabeth read in the grove?</question>\n"
             "<answer>Mr. Darcy wrote the letter, explaining his conduct towards Wickham and Jane.</answer>")
CANNED_VERDICT = "<verdict>yes</verdict><reason>The answer is stated in the text.</reason>"
MODEL_ID = "fault-injecting-stub"
Mode = Literal["ok", "http_error", "rate_limit", "hang", "drop", "malformed"]


@dataclass
class FaultSpec:
    mode: Mode = "ok"
    fail_first: int = 0          # how many chat requests get `mode` (-1: all of them)
    delay_ms: float = 0.0        # delay before every answer
    status: int = 500            # http_error status
    retry_after: float = 1.0     # rate_limit Retry-After seconds
    hang_s: float = 30.0         # hang duration
    text: str | None = None      # override the canned reply
    finish_reason: str = "stop"
    model: str = MODEL_ID
    owned_by: str = "longscale-testing"  # GET /v1/models' owner ("vllm" makes it pass for vLLM)
    record_bodies: int = 256     # keep this many request bodies for inspection

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FaultSpec":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown FaultSpec fields: {sorted(unknown)}")
        return cls(**data)


class _State:
    def __init__(self, spec: FaultSpec) -> None:
        self.reset(spec)

    def reset(self, spec: FaultSpec | None = None) -> None:
        if spec is not None:
            self.spec = spec
            self.bodies: deque = deque(maxlen=max(spec.record_bodies, 1))
        self.chat_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.faults: Counter[str] = Counter()
        self.responses: Counter[int] = Counter()  # by HTTP status
        self.bodies.clear()
        self.started = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {"chat_requests": self.chat_requests, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "faults": dict(self.faults),
                "responses": {str(k): v for k, v in self.responses.items()},
                "uptime_s": time.monotonic() - self.started, "spec": asdict(self.spec),
                "bodies": list(self.bodies)}


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _response(status: int, body: bytes, content_type: str = "application/json",
              extra: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}", "Connection: keep-alive"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _json(status: int, data: Any, extra: dict[str, str] | None = None) -> bytes:
    return _response(status, json.dumps(data).encode(), extra=extra)


def _completion(spec: FaultSpec, request: dict[str, Any], n: int) -> dict[str, Any]:
    messages = request.get("messages") or []
    mentions_verdict = any("verdict" in str(m.get("content", "")).lower() for m in messages if isinstance(m, dict))
    text = spec.text if spec.text is not None else (CANNED_VERDICT if mentions_verdict else CANNED_QA)
    prompt_chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    return {"id": f"chatcmpl-stub-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model") or spec.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": spec.finish_reason}],
            "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(text) // 4,
                      "total_tokens": (prompt_chars + len(text)) // 4}}


class _Server:
    def __init__(self, spec: FaultSpec) -> None:
        self.state = _State(spec)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                reply = await self.route(method, path.split("?", 1)[0], body, headers)
                if reply is None:  # injected connection drop
                    return
                writer.write(reply)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes | None:
        state = self.state
        if method == "GET" and path in ("/v1/models", "/models"):
            return _json(200, {"object": "list", "data": [{"id": state.spec.model, "object": "model",
                                                            "owned_by": state.spec.owned_by}]})
        if method == "GET" and path in ("/health", "/_health"):
            return _json(200, {"status": "ok"})
        if method == "GET" and path == "/_stats":
            return _json(200, state.stats())
        if method == "POST" and path == "/_reset":
            state.reset()
            return _json(200, {"ok": True})
        if method == "POST" and path == "/_control":
            try:
                state.reset(FaultSpec.from_dict(json.loads(body or b"{}")))
            except (ValueError, TypeError) as exc:
                return _json(400, {"error": {"message": str(exc)}})
            return _json(200, asdict(state.spec))
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            return await self.chat(body, headers)
        return _json(404, {"error": {"message": f"no route {method} {path}"}})

    async def chat(self, body: bytes, headers: dict[str, str]) -> bytes | None:
        state, spec = self.state, self.state.spec
        state.chat_requests += 1
        n = state.chat_requests
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            try:
                request = json.loads(body)
            except ValueError:
                state.responses[400] += 1
                return _json(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
            state.bodies.append({"body": request, "authorization": headers.get("authorization")})
            faulty = spec.mode != "ok" and (spec.fail_first < 0 or n <= spec.fail_first)
            if spec.delay_ms:
                await asyncio.sleep(spec.delay_ms / 1000)
            if faulty:
                state.faults[spec.mode] += 1
                if spec.mode == "http_error":
                    state.responses[spec.status] += 1
                    return _json(spec.status, {"error": {"message": f"injected {spec.status}", "type": "server_error"}})
                if spec.mode == "rate_limit":
                    state.responses[429] += 1
                    return _json(429, {"error": {"message": "injected rate limit", "type": "rate_limit"}},
                                 extra={"Retry-After": f"{spec.retry_after:g}"})
                if spec.mode == "drop":
                    return None
                if spec.mode == "malformed":
                    state.responses[200] += 1
                    return _response(200, b'{"choices": [{"message": {"content": "half')
                if spec.mode == "hang":
                    await asyncio.sleep(spec.hang_s)
            state.responses[200] += 1
            return _json(200, _completion(spec, request, n))
        finally:
            state.in_flight -= 1


async def serve(spec: FaultSpec, host: str = "127.0.0.1", port: int = 0, announce=print) -> None:
    server = _Server(spec)
    srv = await asyncio.start_server(server.handle, host, port, backlog=4096, limit=2 ** 22)
    bound = srv.sockets[0].getsockname()[1]
    announce(f"LISTENING {bound}", flush=True)
    async with srv:
        await srv.serve_forever()


class FaultInjectingServer:
    """Run the fake server in a child process on 127.0.0.1 (a free port); a context manager.

    >>> with FaultInjectingServer(delay_ms=50) as server:
    ...     server.base_url          # http://127.0.0.1:PORT/v1
    ...     server.configure(mode="http_error", status=503, fail_first=2)
    ...     server.stats()["max_in_flight"]
    """

    def __init__(self, **spec: Any) -> None:
        self.spec = FaultSpec.from_dict(spec)
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 30.0) -> "FaultInjectingServer":
        cmd = [sys.executable, "-m", "datafactory.testing.fault_server", "--port", "0",
               "--spec-json", json.dumps(asdict(self.spec))]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None  # stdout=PIPE
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("LISTENING "):
                self.port = int(line.split()[1])
                return self
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"FaultInjectingServer did not start (last output: {line!r})")

    def stop(self) -> None:
        stop_process(self.process, grace_s=5)
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()
        self.process = None

    def _call(self, method: str, path: str, data: dict | None = None) -> dict:
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def configure(self, **spec: Any) -> dict:
        """Replace the fault spec (unnamed fields take their defaults) and reset the counters."""
        self.spec = FaultSpec.from_dict(spec)
        return self._call("POST", "/_control", asdict(self.spec))

    def stats(self) -> dict:
        return self._call("GET", "/_stats")

    def reset_stats(self) -> None:
        self._call("POST", "/_reset", {})

    def __enter__(self) -> "FaultInjectingServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server with injectable faults "
                                     "(a test double: it runs no model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011, help="0 picks a free port (printed as LISTENING <port>)")
    parser.add_argument("--mode", default="ok", choices=["ok", "http_error", "rate_limit", "hang", "drop", "malformed"])
    parser.add_argument("--fail-first", type=int, default=0, help="requests that get --mode (-1: all)")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--status", type=int, default=500)
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--hang-s", type=float, default=30.0)
    parser.add_argument("--text", default=None, help="reply text (default: canned QA pair, or a verdict)")
    parser.add_argument("--model", default=MODEL_ID)
    parser.add_argument("--owned-by", default="longscale-testing", help="GET /v1/models' owner (vllm: pass as vLLM)")
    parser.add_argument("--spec-json", default=None, help="the whole FaultSpec as JSON (overrides the flags)")
    args = parser.parse_args(argv)
    if args.spec_json:
        spec = FaultSpec.from_dict(json.loads(args.spec_json))
    else:
        spec = FaultSpec(mode=args.mode, fail_first=args.fail_first if args.mode != "ok" else 0,
                         delay_ms=args.delay_ms, status=args.status, retry_after=args.retry_after,
                         hang_s=args.hang_s, text=args.text, model=args.model, owned_by=args.owned_by)
        if args.mode != "ok" and args.fail_first == 0:
            spec.fail_first = -1  # a fault mode named on the command line applies to every request
    try:
        asyncio.run(serve(spec, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
