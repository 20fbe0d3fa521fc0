"""The engine interface: a batch of chat conversations in, one result per conversation out.

Engines never raise for a single failed request: the result carries `error` (and the pipeline records
it as `engine_error`), so one bad request never loses the rest of a batch. Construction errors (no such
model, server unreachable at start) do raise, with a message that says what to fix.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

ChatMessages = list[dict[str, str]]  # [{"role": "user", "content": "..."}, ...]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 384
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None
    repetition_penalty: float = 1.0  # >1 discourages loops (small models); 1.0 = off
    stop: tuple[str, ...] = ()
    # guided decoding: the whole reply must match this regular expression (vLLM structured outputs, xgrammar).
    # Engines that cannot constrain decoding fail such a request with a `guided_unsupported` error.
    guided_regex: str | None = None


@dataclass
class EngineResult:
    text: str | None
    error: str | None = None          # machine-readable class + message, e.g. "http_500: ..."
    finish_reason: str | None = None  # "stop", "length", ...
    attempts: int = 1
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


@runtime_checkable
class Engine(Protocol):
    name: str
    model_name: str

    async def agenerate(self, conversations: list[ChatMessages], params: SamplingParams) -> list[EngineResult]:
        """Generate one reply per conversation, in order."""
        ...

    def close(self) -> None:
        ...


def generate_sync(engine: Engine, conversations: list[ChatMessages], params: SamplingParams) -> list[EngineResult]:
    """Run `agenerate` from synchronous code (CLI, Celery tasks)."""
    return asyncio.run(engine.agenerate(conversations, params))
