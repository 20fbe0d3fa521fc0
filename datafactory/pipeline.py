"""The recipe end to end: plan (tokenize, chunk, choose, prompt) -> generate -> extract -> critique -> instances.

Three stable entry points (the Celery worker awaits `aprocess_document` per document, then OutputWriter):

- `plan_document(doc, config, tokenizer) -> list[WorkItem]`: the requests one document will make.
- `process_document(doc, config, engine, tokenizers, skip_ids=frozenset()) -> DocumentResult`: one
  document through the whole recipe; work items whose ids are in `skip_ids` are not generated again
  (`aprocess_document` is the same, awaited on the caller's event loop).
- `run_generation(documents, config, output_dir, engine=None, progress=True) -> manifest dict`: a corpus
  into an output directory, resuming what is there. Documents are processed in groups whose requests go to
  the engine in one call (so the openai engine keeps `concurrency` requests in flight and the transformers
  engine fills its batches), with two groups overlapping so the engine never drains between groups.

Each document is tokenized once with the generator's tokenizer; that encoding serves chunking and, when the
target tokenizer is the same, instance truncation too.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from datafactory.chunking import Chunk, TokenizedText, choose_answer_type, choose_chunks, chunk_document, tokenize_texts
from datafactory.documents import Document
from datafactory.engines import sampling_params_from_config
from datafactory.engines.base import ChatMessages, Engine, EngineResult, SamplingParams
from datafactory.extraction import check_pair, extract_qa, parse_critique
from datafactory.instances import ChunkDoesNotFit, build_instance
from datafactory.output import OutputWriter
from datafactory.prompts import GUIDED_REGEXES, critique_messages, qa_messages, uses_demonstration
from longscale.common.errors import LongscaleError
from longscale.common.tokenizers import load_tokenizer

log = logging.getLogger(__name__)

CRITIQUE_MAX_NEW_TOKENS = 128


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
    n_tokens: int = 0
    requests: int = 0


@dataclass
class Tokenizers:
    generator: Any
    target: Any

    @property
    def same(self) -> bool:
        return self.target is self.generator


def record_id(doc_id: str, chunk_index: int, answer_type: str, seed: int) -> str:
    """Deterministic id of a qa record (and of its instance)."""
    return hashlib.sha256(f"{doc_id}\x1f{chunk_index}\x1f{answer_type}\x1f{seed}".encode()).hexdigest()[:20]


# ---- tokenizers -------------------------------------------------------------------------------------------

def _load_tokenizer(name: str, flag: str) -> Any:
    return load_tokenizer(name, flag=flag, error=TokenizerError)


def load_tokenizers(config: Any) -> Tokenizers:
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

def _plan(doc: Document, tokenized: TokenizedText, config: Any, demonstration: bool) -> list[WorkItem]:
    chunks = chunk_document(tokenized, config.chunk_tokens)
    chosen = choose_chunks(chunks, config.chunks_per_doc, config.seed, doc.id, config.chunk_tokens)
    items = []
    for chunk in chosen:
        kind = choose_answer_type(config.seed, doc.id, chunk.index, config.short_ratio)
        items.append(WorkItem(record_id(doc.id, chunk.index, kind, config.seed), doc.id, chunk, kind,
                              qa_messages(chunk.text, kind, demonstration)))
    return items


def plan_document(doc: Document, config: Any, tokenizer: Any) -> list[WorkItem]:
    """The work items (chunk + prompt) of one document; [] when it is shorter than min_doc_tokens."""
    tokenized = tokenize_texts([doc.text], tokenizer)[0]
    if tokenized.n_tokens < config.min_doc_tokens:
        return []
    return _plan(doc, tokenized, config, uses_demonstration(config.prompt_mode, config.model))


# ---- generation, extraction, critique ---------------------------------------------------------------------

def _qa_record(item: WorkItem, model: str, prompt_mode: str, result: EngineResult) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": item.id, "doc_id": item.doc_id, "chunk_index": item.chunk.index,
        "chunk_token_span": list(item.chunk.token_span), "chunk_char_span": list(item.chunk.char_span),
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


async def _generate_records(items: list[WorkItem], config: Any, engine: Engine, demonstration: bool,
                            counter: "RequestCounter") -> list[dict[str, Any]]:
    """QA generation then (critique=filter) one verification round; one record per item, in order."""
    if not items:
        return []
    prompt_mode = "demonstration" if demonstration else "zero-shot"
    qa_regex, critique_regex = GUIDED_REGEXES[config.guided]
    params = sampling_params_from_config(config, guided_regex=qa_regex)
    results = await counter.call(engine, [item.messages for item in items], params)
    records = [_qa_record(item, engine.model_name, prompt_mode, res) for item, res in zip(items, results)]
    if config.critique == "off":
        return records
    pending = [(item, rec) for item, rec in zip(items, records) if rec["accepted"]]
    if not pending:
        return records
    critique_params = sampling_params_from_config(
        config, max_new_tokens=min(CRITIQUE_MAX_NEW_TOKENS, config.max_new_tokens), temperature=0.0, top_p=1.0,
        guided_regex=critique_regex)
    conversations = [critique_messages(item.chunk.text, rec["question"], rec["answer"], demonstration)
                     for item, rec in pending]
    verdicts = await counter.call(engine, conversations, critique_params)
    for (item, rec), res in zip(pending, verdicts):
        if not res.ok:
            rec.update(accepted=False, reject_reason="engine_error", engine_error=f"critique: {res.error}",
                       critique={"verdict": None, "reason": None, "raw": None})
            continue
        verdict = parse_critique(res.text, res.finish_reason)
        rec["critique"] = {"verdict": verdict.verdict, "reason": verdict.reason, "raw": res.text}
        if verdict.verdict != "yes":
            rec.update(accepted=False,
                       reject_reason="critique_rejected" if verdict.verdict == "no" else "critique_unparseable")
    return records


def _instances_for(records: list[dict[str, Any]], chunks: dict[str, Chunk], target_doc: TokenizedText | None,
                   config: Any, tokenizers: Tokenizers) -> list[dict[str, Any]]:
    """Long instances of one document's accepted records (a record whose chunk cannot fit is rejected)."""
    instances = []
    for record in records:
        if record["accepted"]:
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
        self.slice_size = max(1, slice_size)
        self.on_progress = on_progress
        self.started = time.perf_counter()

    async def call(self, engine: Engine, conversations: list[ChatMessages], params: SamplingParams):
        async def one_slice(start: int) -> list[EngineResult]:
            part = conversations[start:start + self.slice_size]
            results = await engine.agenerate(part, params)
            self.requests += len(part)
            if self.on_progress:
                self.on_progress(self.requests, self.rate)
            return results

        slices = await asyncio.gather(*(one_slice(i) for i in range(0, len(conversations), self.slice_size)))
        return [result for part in slices for result in part]

    @property
    def rate(self) -> float:
        return self.requests / max(1e-9, time.perf_counter() - self.started)


async def _process_group(docs: list[Document], config: Any, engine: Engine, tokenizers: Tokenizers,
                         skip_ids: frozenset[str], counter: RequestCounter, sink=None) -> list[DocumentResult]:
    """A group of documents: their items go to the engine together, in slices of `counter.slice_size`; each
    slice is extracted, critiqued and turned into instances as soon as it returns, and handed to
    `sink(qa_records, instances)` then (the output writer appends it), so an interrupted group keeps every
    slice that finished. The results also carry every record, per document."""
    demonstration = uses_demonstration(config.prompt_mode, engine.model_name)
    tokenized = await asyncio.to_thread(tokenize_texts, [d.text for d in docs], tokenizers.generator)
    results, all_items = [], []
    for doc, tok in zip(docs, tokenized):
        result = DocumentResult(doc.id, n_tokens=tok.n_tokens)
        results.append(result)
        if tok.n_tokens < max(1, config.min_doc_tokens):
            result.skipped = "too_short"
            continue
        items = [item for item in _plan(doc, tok, config, demonstration) if item.id not in skip_ids]
        if not items:
            result.skipped = "done"
        all_items.extend(items)
    by_doc = {doc.id: (doc, tok, result) for doc, tok, result in zip(docs, tokenized, results)}
    target_encodings: dict[str, asyncio.Future] = {}

    async def target_doc(doc_id: str) -> TokenizedText:
        doc, tok, _ = by_doc[doc_id]
        if tokenizers.same:
            return tok
        if doc_id not in target_encodings:  # once per document, whichever slice needs it first
            target_encodings[doc_id] = asyncio.ensure_future(
                asyncio.to_thread(tokenize_texts, [doc.text], tokenizers.target))
        return (await target_encodings[doc_id])[0]

    async def one_slice(items: list[WorkItem]) -> None:
        records = await _generate_records(items, config, engine, demonstration, counter)
        chunks = {item.id: item.chunk for item in items}
        instances = []
        for doc_id in dict.fromkeys(item.doc_id for item in items):
            doc_records = [r for r in records if r["doc_id"] == doc_id]
            target = await target_doc(doc_id) if any(r["accepted"] for r in doc_records) else None
            doc_instances = _instances_for(doc_records, chunks, target, config, tokenizers)
            result = by_doc[doc_id][2]
            result.qa_records.extend(doc_records)
            result.instances.extend(doc_instances)
            result.requests += len(doc_records) + sum(1 for r in doc_records if r["critique"] is not None)
            instances += doc_instances
        if sink is not None:
            sink(records, instances)

    size = counter.slice_size
    await asyncio.gather(*(one_slice(all_items[k:k + size]) for k in range(0, len(all_items), size)))
    return results


async def aprocess_document(doc: Document, config: Any, engine: Engine, tokenizers: Tokenizers,
                            skip_ids: frozenset[str] = frozenset()) -> DocumentResult:
    """One document through the whole recipe on the running event loop (the Celery task's unit of work:
    a worker keeps one loop, so the engine's connections and the tokenizer thread outlive a document)."""
    return (await _process_group([doc], config, engine, tokenizers, frozenset(skip_ids), RequestCounter()))[0]


def process_document(doc: Document, config: Any, engine: Engine, tokenizers: Tokenizers,
                     skip_ids: frozenset[str] = frozenset()) -> DocumentResult:
    """`aprocess_document` on a fresh event loop: simple, but every call pays for a new loop, thread and
    connections (a few ms); callers that process many documents should keep a loop (asyncio.Runner)."""
    return asyncio.run(aprocess_document(doc, config, engine, tokenizers, skip_ids))


# ---- a corpus into an output directory --------------------------------------------------------------------

def _estimated_items(doc: Document, config: Any) -> int:
    """Work items a document will make, before tokenizing it: chunks_per_doc, or (for 'all') its length at
    ~4 characters a token. A book then fills a group alone, so the next group's requests are in flight while
    one group's pairs are extracted and written (a constant guess put a whole corpus of books in one group)."""
    if config.chunks_per_doc != "all":
        return config.chunks_per_doc
    return max(1, len(doc.text) // (4 * config.chunk_tokens))


def _groups(documents: Iterable[Document], min_items: int, config: Any) -> Iterable[list[Document]]:
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


async def _run_groups(documents: Iterable[Document], config: Any, engine: Engine, tokenizers: Tokenizers,
                      writer: OutputWriter, skip_ids: frozenset[str], counter: RequestCounter, on_result) -> None:
    in_flight = asyncio.Semaphore(2)  # two groups overlap: one drains while the next fills the engine
    pending: set[asyncio.Task] = set()

    async def run_one(group: list[Document]) -> None:
        try:
            # one locked, fsynced append per slice of requests: Ctrl-C loses only the slices in flight
            results = await _process_group(group, config, engine, tokenizers, skip_ids, counter, writer.append)
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


def run_generation(documents: Iterable[Document], config: Any, output_dir: str | Path, engine: Engine | None = None,
                   progress: bool = True, tokenizers: Tokenizers | None = None) -> dict[str, Any]:
    """Generate into `output_dir` (resuming what is there) and return the manifest.

    On an interruption or an engine failure, what was produced is kept and the manifest says so
    (status "interrupted" / "failed") before the exception goes on.
    """
    from datafactory.progress import GenerationProgress

    documents = list(documents)
    writer = OutputWriter(output_dir)
    writer.check_compatible(config.public_dict())
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tokenizers = tokenizers or load_tokenizers(config)
    own_engine = engine is None
    if engine is None:
        from datafactory.engines import build_engine

        engine = build_engine(config)
    timings["setup_s"] = round(time.perf_counter() - t0, 3)
    skip_ids = writer.done_ids()
    writer.write_manifest({"status": "running", "config": config.public_dict(), "model": engine.model_name,
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    this_run = {"documents": len(documents), "processed": 0, "too_short": 0, "already_done": 0,
                "qa_new": 0, "accepted_new": 0, "engine_errors": 0, "first_engine_error": None, "requests": 0,
                "resumed_from": len(skip_ids)}
    status = "failed"
    with GenerationProgress(len(documents), enabled=progress) as bar:
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

        t1 = time.perf_counter()
        try:
            asyncio.run(_run_groups(documents, config, engine, tokenizers, writer, skip_ids, counter, on_result))
            status = "complete"
        except (KeyboardInterrupt, asyncio.CancelledError):
            status = "interrupted"
            raise
        finally:
            timings["generation_s"] = round(time.perf_counter() - t1, 3)
            this_run["requests"] = counter.requests
            this_run["requests_per_s"] = round(counter.rate, 3)
            if own_engine:
                engine.close()
            manifest = writer.finalize(config.public_dict(), engine.model_name, timings,
                                       extra={"this_run": this_run}, status=status)
    return manifest
