"""Planners: where `planning.plan_tokens` runs. `ProcessPlanner` uses one spawned process per core, each
holding the tokenizers (rebuilt from their JSON, no transformers import), so tokenization never holds the
event loop's GIL and uses every core; `ThreadPlanner` runs it on a thread of this process (one document at
a time: the Celery worker's unit, tests).

The trade-off of processes: a document's text is pickled to a worker (~30 us for 30 KB) and its plan comes
back as chunk spans (their texts are sliced here from the document) plus the target region's compact
offsets (word-level: 4 bytes a word; else 8 bytes a token), and each worker costs ~100 MB and a second to
start.
"""
from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from typing import Any

from datafactory.chunking import TokenizedText, backend_of
from datafactory.planning import DocPlan, PlanSettings, plan_tokens

_worker_tokenizers: tuple[Any, Any] | None = None
# documents one planner task carries: a process pool's per-task cost (futures, its manager and feeder threads,
# one pickle round trip each) falls on the event loop's process, ~0.4 ms a task; batches of a few documents
# share it, and a group of `concurrency` documents still spreads over every worker
PLAN_BATCH = 8


def _init_worker(generator_json: str, target_json: str | None) -> None:
    global _worker_tokenizers
    # the pool is the parallelism: a worker's own Rust threads would only spin against its siblings
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Ctrl-C reaches the whole process group: the parent decides (it stops the run and shuts the pool down)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tokenizers import Tokenizer

    generator = Tokenizer.from_str(generator_json)
    target = generator if target_json is None else Tokenizer.from_str(target_json)
    _worker_tokenizers = (generator, target)


def _plan_in_worker(text: str, doc_id: str, settings: PlanSettings) -> DocPlan:
    assert _worker_tokenizers is not None, "worker not initialised"
    plan = plan_tokens(text, doc_id, *_worker_tokenizers, settings)
    if plan.target is not None:
        plan.target = _detached(plan.target)
    plan.chunks = [replace(chunk, text="") for chunk in plan.chunks]  # the parent slices them from its text
    return plan


def _plan_batch_in_worker(docs: list[tuple[str, str]], settings: PlanSettings) -> list[DocPlan]:
    return [_plan_in_worker(text, doc_id, settings) for text, doc_id in docs]


def _detached(tokenized: TokenizedText) -> TokenizedText:
    """The encoding without its document text (the parent has the text and re-attaches it)."""
    tokenized.text = ""
    return tokenized


class ThreadPlanner:
    """plan_tokens on a worker thread of this process."""

    def __init__(self, tokenizers: Any) -> None:
        self.generator = backend_of(tokenizers.generator)
        self.target = self.generator if tokenizers.same else backend_of(tokenizers.target)

    async def plan_batch(self, docs: list[tuple[str, str]], settings: PlanSettings) -> list[DocPlan]:
        """Plans of (text, doc_id) pairs, in order."""
        return await asyncio.to_thread(lambda: [plan_tokens(text, doc_id, self.generator, self.target, settings)
                                                for text, doc_id in docs])

    def close(self) -> None:
        pass


class ProcessPlanner:
    """plan_tokens in `workers` processes (default: every core)."""

    def __init__(self, tokenizers: Any, workers: int | None = None) -> None:
        generator = backend_of(tokenizers.generator).to_str()
        target = None if tokenizers.same else backend_of(tokenizers.target).to_str()
        self.workers = workers or os.cpu_count() or 1
        self._executor = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                             initializer=_init_worker, initargs=(generator, target))

    async def plan_batch(self, docs: list[tuple[str, str]], settings: PlanSettings) -> list[DocPlan]:
        """Plans of (text, doc_id) pairs, in order: one task of the pool for all of them."""
        loop = asyncio.get_running_loop()
        plans = await loop.run_in_executor(self._executor, _plan_batch_in_worker, docs, settings)
        for (text, _), plan in zip(docs, plans, strict=True):
            if plan.target is not None:
                plan.target.text = text
            plan.chunks = [replace(chunk, text=text[chunk.char_start:chunk.char_end]) for chunk in plan.chunks]
        return plans

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
