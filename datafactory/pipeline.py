"""The recipe end to end: plan (tokenize, chunk, choose, prompt) -> generate -> extract -> critique -> instances.

Three stable entry points (the Celery worker awaits `aprocess_document` per document, then OutputWriter):

- `plan_document(doc, config, tokenizer) -> list[WorkItem]`: the requests one document will make.
- `process_document(doc, config, engine, tokenizers, skip_ids=frozenset()) -> DocumentResult`: one
  document through the whole recipe; work items whose ids are in `skip_ids` are not generated again
  (`aprocess_document` is the same, awaited on the caller's event loop).
- `run_generation(documents, config, output_dir, engine=None, progress=True) -> manifest dict`: a corpus
  into an output directory, resuming what is there. Documents are processed in groups whose requests go to
  the engine in one call (so the openai engine keeps `concurrency` requests in flight and the transformers
  engine fills its batches), with a few groups overlapping so the engine never drains between groups.

Documents stream in (never all in memory): finished documents (output.py's documents.jsonl) are skipped by
id before anything else happens; the rest are planned (planning.py: a character pass chooses the chunk, and
only a region around it is tokenized, serving chunking and the instance window) in a pool of tokenizer
processes (tokenpool.py), while earlier groups' requests are on the wire.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from datafactory.chunking import Chunk, TokenizedText, backend_of, choose_answer_type
from datafactory.config import GenerationConfig
from datafactory.critique import critique_round
from datafactory.documents import Document
from datafactory.engines import sampling_params_from_config
from datafactory.engines.base import ChatMessages, Engine, EngineResult, SamplingParams
from datafactory.extraction import check_pair, extract_qa
from datafactory.gc_pause import fewer_collections
from datafactory.instances import ChunkDoesNotFit, build_instance
from datafactory.output import OutputWriter, is_retryable, preload_parquet_writer
from datafactory.planning import DocPlan, PlanSettings, plan_tokens
from datafactory.prompts import QA_REGEX, qa_messages, uses_demonstration
from datafactory.tokenizer_dir import DirectoryTokenizer
from datafactory.tokenpool import PLAN_BATCH, ProcessPlanner, ThreadPlanner
from longscale.common.errors import LongscaleError
from longscale.common.tokenizers import load_tokenizer

log = logging.getLogger(__name__)



class TokenizerError(LongscaleError, ValueError):
    """A tokenizer could not be found or loaded; the message says which flag to set."""


@dataclass(frozen=True)
class WorkItem:
    id: str
    doc_id: str
    chunk: Chunk
    answer_type: str
    messages: ChatMessages


@dataclass
class DocumentResult:
    doc_id: str
    qa_records: list[dict[str, Any]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None  # "too_short" | "done" (every item already in the output)
    n_tokens: int | None = 0     # None when only a region of the document was tokenized
    requests: int = 0

    @property
    def finished(self) -> bool:
        """Nothing of this document needs another attempt (no record is retryable)."""
        return not any(is_retryable(r) for r in self.qa_records)

    def marker(self) -> dict[str, Any]:
        """Its line in documents.jsonl."""
        return {"doc_id": self.doc_id, "status": self.skipped or "generated", "records": len(self.qa_records)}


@dataclass
class Tokenizers:
    generator: Any
    target: Any
    _thread_planner: Any = field(default=None, repr=False, compare=False)

    @property
    def same(self) -> bool:
        return self.target is self.generator

    def thread_planner(self) -> ThreadPlanner:
        """A planner on a thread of this process, made once (a document at a time: Celery tasks, tests)."""
        if self._thread_planner is None:
            self._thread_planner = ThreadPlanner(self)
        return self._thread_planner


def record_id(doc_id: str, chunk_index: int, answer_type: str, seed: int) -> str:
    """Deterministic id of a qa record (and of its instance)."""
    return hashlib.sha256(f"{doc_id}\x1f{chunk_index}\x1f{answer_type}\x1f{seed}".encode()).hexdigest()[:20]


# ---- tokenizers -------------------------------------------------------------------------------------------

def _load_tokenizer(name: str, flag: str) -> Any:
    """A local directory with a tokenizer.json loads without transformers (tokenizer_dir.py); anything else
    (a hub name, a slow tokenizer) through transformers."""
    directory = Path(name).expanduser()
    if DirectoryTokenizer.usable(directory):
        try:
            return DirectoryTokenizer(directory)
        except Exception as exc:  # a damaged file: transformers' loader says what is wrong
            log.debug("%s: %s; loading through transformers", directory, exc)
    return load_tokenizer(name, flag=flag, error=TokenizerError)


def load_tokenizers(config: GenerationConfig) -> Tokenizers:
    """Generator tokenizer: --tokenizer, else the model's directory, else the embedded model's."""
    name, flag = config.tokenizer, "--tokenizer"
    if not name:
        if config.model and Path(config.model).expanduser().is_dir():
            name, flag = str(Path(config.model).expanduser()), "--model"
        elif not config.model:
            from datafactory.embedded import ensure_embedded_model

            name, flag = str(ensure_embedded_model()), "(embedded model)"
        else:
            raise TokenizerError(f"--model {config.model!r} is not a local directory, so the chunking tokenizer "
                                 "is unknown: pass --tokenizer DIR (the served model's tokenizer)")
    generator = _load_tokenizer(name, flag)
    target_name = config.target_tokenizer
    if not target_name or target_name == name:
        return Tokenizers(generator, generator)
    return Tokenizers(generator, _load_tokenizer(target_name, "--target-tokenizer"))


# ---- planning ---------------------------------------------------------------------------------------------

def _work_items(doc: Document, chunks: list[Chunk], config: GenerationConfig, demonstration: bool) -> list[WorkItem]:
    items = []
    for chunk in chunks:
        kind = choose_answer_type(config.seed, doc.id, chunk.index, config.short_ratio)
        items.append(WorkItem(record_id(doc.id, chunk.index, kind, config.seed), doc.id, chunk, kind,
                              qa_messages(chunk.text, kind, demonstration)))
    return items


def plan_document(doc: Document, config: GenerationConfig, tokenizer: Any) -> list[WorkItem]:
    """The work items (chunk + prompt) of one document; [] when it is shorter than min_doc_tokens."""
    backend = backend_of(tokenizer)
    plan = plan_tokens(doc.text, doc.id, backend, backend, PlanSettings.from_config(config))
    if plan.too_short:
        return []
    return _work_items(doc, plan.chunks, config, uses_demonstration(config.prompt_mode, config.model))


# ---- generation, extraction, critique ---------------------------------------------------------------------

def _qa_record(item: WorkItem, model: str, prompt_mode: str, result: EngineResult) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": item.id, "doc_id": item.doc_id, "chunk_index": item.chunk.index,
        "chunk_token_span": list(item.chunk.token_span) if item.chunk.token_span else None,
        "chunk_char_span": list(item.chunk.char_span), "chunk_tokens": item.chunk.n_tokens,
        "answer_type": item.answer_type, "prompt_mode": prompt_mode,
        "question": None, "answer": None, "critique": None, "accepted": False, "reject_reason": None,
        "model": model, "raw": result.text, "finish_reason": result.finish_reason,
        "extraction_notes": [], "pairs_found": 0, "engine_error": result.error,
    }
    if not result.ok:
        record["reject_reason"] = "engine_error"
        return record
    extraction = check_pair(extract_qa(result.text, result.finish_reason), item.answer_type, item.chunk.text)
    record.update(question=extraction.question, answer=extraction.answer, reject_reason=extraction.reason,
                  extraction_notes=list(extraction.notes), pairs_found=extraction.pairs,
                  accepted=extraction.ok)
    return record


async def _generate_records(items: list[WorkItem], config: GenerationConfig, engine: Engine, demonstration: bool,
                            counter: "RequestCounter") -> list[dict[str, Any]]:
    """QA generation then (critique=filter) one verification round; one record per item, in order."""
    if not items:
        return []
    prompt_mode = "demonstration" if demonstration else "zero-shot"
    params = sampling_params_from_config(config, guided_regex=QA_REGEX if config.guided == "xml" else None)
    results = await counter.call(engine, [item.messages for item in items], params)
    records = [_qa_record(item, engine.model_name, prompt_mode, res) for item, res in zip(items, results)]
    if config.critique == "filter":
        await critique_round([(item.chunk.text, rec) for item, rec in zip(items, records) if rec["accepted"]],
                             config, engine, demonstration, counter)
    return records


def _instances_for(records: list[dict[str, Any]], chunks: dict[str, Chunk], target_doc: TokenizedText | None,
                   config: GenerationConfig, tokenizers: Tokenizers) -> list[dict[str, Any]]:
    """Long instances of one document's accepted records (a record whose chunk cannot fit is rejected). With
    one tokenizer for both roles the target encoding is the one the chunks were cut from (planning.py), so
    their token spans are reused instead of looked up."""
    instances = []
    for record in records:
        if record["accepted"]:
            assert target_doc is not None  # the caller passes the target encoding whenever a record is accepted
            try:
                instances.append(build_instance(record, chunks[record["id"]], target_doc, config.max_context,
                                                tokenizers.target, same_encoding=tokenizers.same))
            except ChunkDoesNotFit as exc:
                record.update(accepted=False, reject_reason="chunk_exceeds_context")
                record["extraction_notes"].append(str(exc))
    return instances


class RequestCounter:
    """Sends conversations to the engine in slices of `slice_size`, all at once (so the engine still sees
    them together up to its concurrency), and counts completed requests as each slice returns: progress
    and requests/s move during a long group instead of at its end. The price: the transformers engine
    sorts prompts by length within a slice, not across the whole group."""

    def __init__(self, slice_size: int = 8, on_progress=None) -> None:
        self.requests = 0
        self.output_tokens = 0  # the engines' usage.completion_tokens (OpenAI-compatible servers report it)
        self.slice_size = max(1, slice_size)
        self.on_progress = on_progress
        self.started = time.perf_counter()

    async def call(self, engine: Engine, conversations: list[ChatMessages], params: SamplingParams):
        async def one_slice(start: int) -> list[EngineResult]:
            part = conversations[start:start + self.slice_size]
            results = await engine.agenerate(part, params)
            self.requests += len(part)
            self.output_tokens += sum(r.usage.get("completion_tokens", 0) for r in results)
            if self.on_progress:
                self.on_progress(self.requests, self.rate)
            return results

        slices = await asyncio.gather(*(one_slice(i) for i in range(0, len(conversations), self.slice_size)))
        return [result for part in slices for result in part]

    @property
    def rate(self) -> float:
        return self.requests / max(1e-9, time.perf_counter() - self.started)

    @property
    def output_rate(self) -> float:
        return self.output_tokens / max(1e-9, time.perf_counter() - self.started)


async def _process_group(docs: list[Document], config: GenerationConfig, engine: Engine, tokenizers: Tokenizers,
                         skip_ids: frozenset[str], counter: RequestCounter, planner: Any,
                         sink=None) -> list[DocumentResult]:
    """A group of documents: planned in parallel (`planner`), then their items go to the engine together, in
    slices of `counter.slice_size`; each slice is extracted, critiqued and turned into instances as soon as it
    returns, and handed to `await sink(qa_records, instances, finished_documents)` then (the output writer
    appends it), so an interrupted group keeps every slice that finished. A document's marker goes with the
    slice that completes it (documents with nothing to generate: first). The results carry every record."""
    demonstration = uses_demonstration(config.prompt_mode, engine.model_name)
    settings = PlanSettings.from_config(config)
    batches = await asyncio.gather(*(planner.plan_batch([(d.text, d.id) for d in docs[k:k + PLAN_BATCH]], settings)
                                     for k in range(0, len(docs), PLAN_BATCH)))
    plans: list[DocPlan] = [plan for batch in batches for plan in batch]
    results, all_items, remaining = [], [], {}
    for doc, plan in zip(docs, plans):
        result = DocumentResult(doc.id, n_tokens=plan.n_tokens)
        results.append(result)
        items = [] if plan.too_short else [item for item in _work_items(doc, plan.chunks, config, demonstration)
                                           if item.id not in skip_ids]
        if plan.too_short:
            result.skipped = "too_short"
        elif not items:
            result.skipped = "done"
        all_items.extend(items)
        remaining[doc.id] = len(items)
    by_doc = {doc.id: (plan, result) for doc, plan, result in zip(docs, plans, results)}
    if sink is not None and any(r.skipped for r in results):
        await sink([], [], [r.marker() for r in results if r.skipped])

    async def one_slice(items: list[WorkItem]) -> None:
        records = await _generate_records(items, config, engine, demonstration, counter)
        chunks = {item.id: item.chunk for item in items}
        instances, finished = [], []
        for doc_id in dict.fromkeys(item.doc_id for item in items):
            doc_records = [r for r in records if r["doc_id"] == doc_id]
            plan, result = by_doc[doc_id]
            target = plan.target if any(r["accepted"] for r in doc_records) else None
            doc_instances = _instances_for(doc_records, chunks, target, config, tokenizers)
            result.qa_records.extend(doc_records)
            result.instances.extend(doc_instances)
            result.requests += len(doc_records) + sum(1 for r in doc_records if r["critique"] is not None)
            instances += doc_instances
            remaining[doc_id] -= len(doc_records)
            if not remaining[doc_id] and result.finished:
                finished.append(result.marker())
        if sink is not None:
            await sink(records, instances, finished)

    size = counter.slice_size
    await asyncio.gather(*(one_slice(all_items[k:k + size]) for k in range(0, len(all_items), size)))
    return results


async def aprocess_document(doc: Document, config: GenerationConfig, engine: Engine, tokenizers: Tokenizers,
                            skip_ids: frozenset[str] = frozenset()) -> DocumentResult:
    """One document through the whole recipe on the running event loop (the Celery task's unit of work:
    a worker keeps one loop, so the engine's connections and the tokenizer thread outlive a document)."""
    return (await _process_group([doc], config, engine, tokenizers, frozenset(skip_ids), RequestCounter(),
                                 tokenizers.thread_planner()))[0]


def process_document(doc: Document, config: GenerationConfig, engine: Engine, tokenizers: Tokenizers,
                     skip_ids: frozenset[str] = frozenset()) -> DocumentResult:
    """`aprocess_document` on a fresh event loop: simple, but every call pays for a new loop, thread and
    connections (a few ms); callers that process many documents should keep a loop (asyncio.Runner)."""
    return asyncio.run(aprocess_document(doc, config, engine, tokenizers, skip_ids))


# ---- a corpus into an output directory --------------------------------------------------------------------

def _estimated_items(doc: Document, config: GenerationConfig) -> int:
    """Work items a document will make, before tokenizing it: chunks_per_doc, or (for 'all') its length at
    ~4 characters a token. A book then fills a group alone, so the next group's requests are in flight while
    one group's pairs are extracted and written (a constant guess put a whole corpus of books in one group)."""
    if config.chunks_per_doc != "all":
        return config.chunks_per_doc
    return max(1, len(doc.text) // (4 * config.chunk_tokens))


def _groups(documents: Iterable[Document], min_items: int, config: GenerationConfig) -> Iterable[list[Document]]:
    """Documents in groups holding about `min_items` work items (estimated by `_estimated_items`)."""
    group: list[Document] = []
    items = 0
    for doc in documents:
        group.append(doc)
        items += _estimated_items(doc, config)
        if items >= min_items:
            yield group
            group, items = [], 0
    if group:
        yield group


GROUPS_IN_FLIGHT = 3  # one being planned, one on the wire, one draining: the engine never waits on planning


async def _run_groups(documents: Iterable[Document], config: GenerationConfig, engine: Engine, tokenizers: Tokenizers,
                      writer: OutputWriter, skip_ids: frozenset[str], counter: RequestCounter, on_result,
                      planner: Any) -> None:
    """Groups of documents, at most GROUPS_IN_FLIGHT at a time (bounded memory: the documents are read only
    as a slot frees up)."""
    in_flight = asyncio.Semaphore(GROUPS_IN_FLIGHT)
    pending: set[asyncio.Task] = set()

    async def sink(qa_records: list, instances: list, finished_documents: list) -> None:
        await asyncio.to_thread(writer.append, qa_records, instances, finished_documents)

    async def run_one(group: list[Document]) -> None:
        try:
            # one locked, fsynced append per slice of requests (off the event loop): Ctrl-C loses only the
            # slices in flight
            results = await _process_group(group, config, engine, tokenizers, skip_ids, counter, planner, sink)
            for result in results:
                on_result(result)
        finally:
            in_flight.release()

    try:
        for group in _groups(documents, max(config.concurrency, config.batch_size), config):
            await in_flight.acquire()
            for task in [t for t in pending if t.done()]:
                pending.discard(task)
                task.result()  # a failed group stops the run here, before more work is started
            pending.add(asyncio.create_task(run_one(group)))
        await asyncio.gather(*pending)
    finally:
        for task in pending:
            task.cancel()


def run_generation(documents: Iterable[Document], config: GenerationConfig, output_dir: str | Path, engine: Engine | None = None,
                   progress: bool = True, tokenizers: Tokenizers | None = None,
                   processes: int | None = None) -> dict[str, Any]:
    """Generate into `output_dir` (resuming what is there) and return the manifest.

    `documents` is consumed lazily, once. Documents finished by an earlier run are skipped by id before
    they are tokenized. Planning runs in `processes` tokenizer processes (default: one per core; 0 = a
    thread of this process). On an interruption or an engine failure, what was produced is kept and the
    manifest says so (status "interrupted" / "failed") before the exception goes on.
    """
    from datafactory.progress import GenerationProgress

    total = len(documents) if isinstance(documents, Sized) else None
    writer = OutputWriter(output_dir, follow_parquet=True)  # finalized below, whatever happens
    writer.check_compatible(config.public_dict())
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    own_engine = engine is None
    if engine is None:
        from datafactory.engines import build_engine

        engine = build_engine(config)
    timings["setup_s"] = round(time.perf_counter() - t0, 3)
    done_documents = writer.done_documents()
    skip_ids = writer.done_ids()
    writer.write_manifest({"status": "running", "config": config.public_dict(), "model": engine.model_name,
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    this_run: dict[str, Any] = {"documents": 0, "processed": 0, "too_short": 0, "already_done": 0,
                "qa_new": 0, "accepted_new": 0, "engine_errors": 0, "first_engine_error": None, "requests": 0,
                "resumed_from": len(skip_ids)}
    status = "failed"
    planner = None
    with GenerationProgress(total, enabled=progress) as bar, fewer_collections():
        counter = RequestCounter(config.batch_size, on_progress=bar.requests_done)

        def on_result(result: DocumentResult) -> None:
            this_run["processed"] += result.skipped is None
            this_run["too_short"] += result.skipped == "too_short"
            this_run["already_done"] += result.skipped == "done"
            this_run["qa_new"] += len(result.qa_records)
            this_run["accepted_new"] += sum(1 for r in result.qa_records if r["accepted"])
            errors = [r["engine_error"] for r in result.qa_records if r["reject_reason"] == "engine_error"]
            this_run["engine_errors"] += len(errors)
            if errors and not this_run["first_engine_error"]:
                this_run["first_engine_error"] = errors[0]
            bar.document_done(result, counter.rate)

        def not_done(docs: Iterable[Document]) -> Iterator[Document]:
            for doc in docs:
                this_run["documents"] += 1
                if doc.id in done_documents:
                    this_run["already_done"] += 1
                    bar.document_done(DocumentResult(doc.id, skipped="done"), counter.rate)
                    continue
                yield doc

        t1 = time.perf_counter()
        try:
            pending = not_done(documents)
            first = next(pending, None)
            if first is not None:  # a resume with nothing left to do never loads a tokenizer
                tokenizers = tokenizers or load_tokenizers(config)
                planner = ProcessPlanner(tokenizers, processes) if processes != 0 else tokenizers.thread_planner()
                preload_parquet_writer()  # finalize's imports, while the requests are on the wire
                asyncio.run(_run_groups(chain([first], pending), config, engine, tokenizers, writer, skip_ids,
                                        counter, on_result, planner))
            status = "complete"
        except (KeyboardInterrupt, asyncio.CancelledError):
            status = "interrupted"
            raise
        finally:
            if planner is not None:
                planner.close()
            timings["generation_s"] = round(time.perf_counter() - t1, 3)
            this_run["requests"] = counter.requests
            this_run["requests_per_s"] = round(counter.rate, 3)
            this_run["output_tokens"] = counter.output_tokens
            this_run["output_tokens_per_s"] = round(counter.output_rate, 1)
            if own_engine:
                engine.close()
            manifest = writer.finalize(config.public_dict(), engine.model_name, timings,
                                       extra={"this_run": this_run}, status=status)
    return manifest
