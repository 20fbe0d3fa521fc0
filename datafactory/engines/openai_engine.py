"""The `openai` engine: async chat completions against any OpenAI-compatible server (vllm serve,
transformers serve), with bounded concurrency, a per-request deadline and retries.

Retries use exponential back-off with full jitter (sleep uniform(0, min(cap, base * 2**attempt))) on 429,
5xx, timeouts, dropped or refused connections and unparseable replies; a Retry-After header is honoured
as a floor. Other 4xx mean the request itself is wrong and are not retried. A request that still fails
gives an EngineResult with `error` ("http_503: ...", "timeout", "connect_error: ...") and never raises.
The semaphore is held only while a request is on the wire, not during back-off sleeps, so a struggling
request never blocks a slot.

Transport: aiohttp, one pooled session per event loop shared by all `agenerate` calls on it, kept open
(keep-alive connections reused across calls and documents) until the loop shuts down its async generators
-- `asyncio.run` and `asyncio.Runner.close` do, so `generate_sync` leaks nothing -- or `close()`/`aclose()`.
Reopening it per call cost a Celery worker about 2 ms a document (two sessions, two TCP connects).
Measured here with benchmarks/bench_openai_engine.py against a 200 ms stub at 256 in flight: httpx
peaks near 360 requests/s (its connection pool scans every connection per request, quadratic in the pool
size, even when sharded into small clients), aiohttp sustains over 1,000.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from datafactory.engines import EngineError
from datafactory.engines.base import ChatMessages, EngineResult, SamplingParams
from longscale.common import fast_json

if TYPE_CHECKING:
    import aiohttp

    from datafactory.config import EngineSettings

RETRY_STATUS = {429, 500, 502, 503, 504}


def normalize_base_url(base_url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1/` both become `http://host:8000/v1`."""
    url = base_url.rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EngineError(f"--base-url {base_url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
    return url if parts.path not in ("", "/") else url + "/v1"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retryable(Exception):
    def __init__(self, error: str, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.error, self.retry_after = error, retry_after


class _Final(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class _LoopPool:
    session: "aiohttp.ClientSession"
    semaphore: asyncio.Semaphore
    keeper: Any = None  # the async generator that closes the session when its loop shuts down


class OpenAIEngine:
    """Chat completions over HTTP. `stats` counts attempts, retries and final errors by class;
    `max_in_flight` is the most requests this engine had on the wire at once."""

    name = "openai"

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 concurrency: int = 64, request_timeout: float = 120.0, max_retries: int = 5,
                 backoff_base: float = 0.5, backoff_max: float = 30.0,
                 extra_body: dict[str, Any] | None = None, read_env_key: bool = True) -> None:
        try:
            import aiohttp  # noqa: F401
        except ImportError as exc:
            raise EngineError("the openai engine needs aiohttp: pip install aiohttp") from exc
        self.base_url = normalize_base_url(base_url)
        # read_env_key=False (the Celery workers): only the key given goes out, never the process's own
        self.api_key = api_key or (os.environ.get("OPENAI_API_KEY") if read_env_key else None) or None
        self.concurrency = concurrency
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.extra_body = dict(extra_body or {})  # e.g. vLLM guided decoding: {"structured_outputs": {"regex": ...}}
        self.stats: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._pools: dict[asyncio.AbstractEventLoop, _LoopPool] = {}
        self.model_name = model or self._first_served_model()

    @classmethod
    def from_config(cls, config: EngineSettings, **kwargs: Any) -> "OpenAIEngine":
        if not config.base_url:
            raise EngineError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        engine = cls(config.base_url, config.model, api_key=config.api_key, concurrency=config.concurrency,
                     request_timeout=config.request_timeout, max_retries=config.max_retries, **kwargs)
        if getattr(config, "guided", "off") != "off":  # a recipe setting: EngineSettings alone (eval) has none
            engine.require_structured_outputs()
        return engine

    @property
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _served_models(self) -> list[dict[str, Any]]:
        """GET /v1/models (blocking, stdlib: this may run inside or outside a loop)."""
        url = f"{self.base_url}/models"
        try:
            request = urllib.request.Request(url, headers=self._headers)
            with urllib.request.urlopen(request, timeout=min(self.request_timeout, 30.0)) as resp:
                models = [m for m in json.loads(resp.read()).get("data", []) if isinstance(m.get("id"), str)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EngineError(f"could not list the served models at {url} ({exc}); is the server running? "
                              "pass --model NAME to skip this lookup") from exc
        if not models:
            raise EngineError(f"{url} lists no models; pass --model NAME")
        return models

    def _first_served_model(self) -> str:
        return self._served_models()[0]["id"]

    def require_structured_outputs(self) -> None:
        """Refuse guided decoding unless the server is vLLM (its /v1/models says owned_by "vllm"): other servers
        (transformers serve, most proxies) silently ignore the `structured_outputs` field, which would turn
        --guided xml into unguided decoding without a word."""
        owners = {str(m.get("owned_by")) for m in self._served_models()}
        if "vllm" not in owners:
            raise EngineError(f"--guided xml needs vLLM's structured outputs, but the server at {self.base_url} "
                              f"is not vLLM (its /v1/models says owned_by {', '.join(sorted(owners))}); "
                              "use --guided off with this server, or serve the model with `vllm serve`")

    # -- the pooled session, one per running loop ------------------------------------------------
    async def _pool(self) -> _LoopPool:
        import aiohttp

        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency)
            session = aiohttp.ClientSession(connector=connector, headers=self._headers,
                                            timeout=aiohttp.ClientTimeout(total=self.request_timeout))
            pool = self._pools[loop] = _LoopPool(session, asyncio.Semaphore(self.concurrency))
            pool.keeper = self._keep_open(loop, pool)
            await anext(pool.keeper)  # registers with the loop's shutdown_asyncgens()
        return pool

    async def _keep_open(self, loop: asyncio.AbstractEventLoop, pool: _LoopPool):
        try:
            yield
        finally:
            self._pools.pop(loop, None)
            await pool.session.close()

    async def aclose(self) -> None:
        """Close this loop's session now (the next call on the loop opens a new one)."""
        pool = self._pools.get(asyncio.get_running_loop())
        if pool is not None:
            await pool.keeper.aclose()

    # -- generation -------------------------------------------------------------------------------
    async def agenerate(self, conversations: list[ChatMessages], params: SamplingParams) -> list[EngineResult]:
        pool = await self._pool()
        return list(await asyncio.gather(*(self._complete(pool, c, params) for c in conversations)))

    def _payload(self, messages: ChatMessages, params: SamplingParams) -> bytes:
        payload: dict[str, Any] = {"model": self.model_name, "messages": messages,
                                   "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                                   "top_p": params.top_p}
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.repetition_penalty != 1.0:
            payload["repetition_penalty"] = params.repetition_penalty  # vLLM's extra sampling parameter
        if params.guided_regex is not None:  # vLLM's field (0.20 has no guided_* fields any more)
            payload["structured_outputs"] = {"regex": params.guided_regex}
        payload.update(self.extra_body)
        return fast_json.dumps_bytes(payload)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry `attempt + 1`: full jitter, Retry-After (capped) as a floor."""
        jitter = random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** attempt))
        return max(jitter, min(retry_after, self.backoff_max)) if retry_after is not None else jitter

    async def _complete(self, pool: _LoopPool, messages: ChatMessages, params: SamplingParams) -> EngineResult:
        try:
            body = self._payload(messages, params)
        except (TypeError, ValueError) as exc:
            return self._fail(f"bad_prompt: {exc}", 0)
        error = "not_attempted"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
            try:
                async with pool.semaphore:
                    return await self._attempt(pool.session, body, attempt + 1)
            except _Final as exc:
                return self._fail(exc.error, attempt + 1)
            except _Retryable as exc:
                error = exc.error
                if attempt < self.max_retries:
                    await asyncio.sleep(self.backoff(attempt, exc.retry_after))
        return self._fail(error, self.max_retries + 1)

    def _fail(self, error: str, attempts: int) -> EngineResult:
        self.stats["errors:" + error.split(":", 1)[0]] += 1
        return EngineResult(text=None, error=error, attempts=attempts)

    async def _attempt(self, session: "aiohttp.ClientSession", body: bytes, attempts: int) -> EngineResult:
        import aiohttp

        self.stats["attempts"] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async with session.post(f"{self.base_url}/chat/completions", data=body) as resp:
                status, raw = resp.status, await resp.read()
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise _Retryable("timeout") from None
        except aiohttp.ClientConnectorError as exc:
            raise _Retryable(f"connect_error: {exc}") from None
        except aiohttp.ClientError as exc:  # dropped connection, reset, broken payload
            raise _Retryable(f"connection_error: {type(exc).__name__}: {exc}") from None
        finally:
            self.in_flight -= 1
        text_preview = raw[:300].decode("utf-8", "replace")
        if status != 200:
            error = f"http_{status}: {text_preview}"
            if status in RETRY_STATUS or status >= 500:
                raise _Retryable(error, retry_after)
            raise _Final(error)
        try:
            data = fast_json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(f"bad_response: {type(exc).__name__}: {text_preview[:200]}") from None
        if not isinstance(text, str):
            raise _Final("bad_response: the reply has no message content")
        usage = {k: v for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
        return EngineResult(text=text, finish_reason=choice.get("finish_reason"), attempts=attempts, usage=usage)

    def close(self) -> None:
        """Close the sessions of loops that are idle (not running, not closed); a running loop's session
        closes when that loop shuts down, or by `await engine.aclose()` on it."""
        for loop, pool in list(self._pools.items()):
            if loop.is_closed():
                self._pools.pop(loop, None)
            elif not loop.is_running():
                loop.run_until_complete(pool.keeper.aclose())
