"""The output directory: qa.jsonl, instances.jsonl, their Parquet copies, manifest.json.

`OutputWriter` is safe across processes (several Celery workers, a re-delivered task, a re-run): every
append takes an exclusive `fcntl.flock` on `.lock`, reads the ids other writers appended since it last
looked (it remembers its read offset, so this costs only the new bytes), and appends only unseen ids.
A line cut off by a crash is dropped on the next append (and reported); whole lines are never lost.
Records that failed on the engine (`engine_error`) are kept, and generated again by a later run; readers
(`latest_records`, `finalize`) keep the last record per id.
JSONL is the source of truth; `finalize` rebuilds the Parquet copies and the manifest from it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator
from longscale.common.errors import LongscaleError

log = logging.getLogger(__name__)

QA_FILE, INSTANCES_FILE, MANIFEST_FILE, LOCK_FILE = "qa.jsonl", "instances.jsonl", "manifest.json", ".lock"
# Settings that change which records exist or what they hold: resuming with other values would mix runs.
RECORD_SHAPING_FIELDS = ("model", "tokenizer", "target_tokenizer", "chunk_tokens", "chunks_per_doc", "short_ratio",
                         "prompt_mode", "critique", "max_context", "seed", "min_doc_tokens")


class OutputDirError(LongscaleError, ValueError):
    """The output directory holds a run with different record-shaping settings."""


RETRYABLE_REASONS = frozenset({"engine_error"})


def is_retryable(record: dict[str, Any]) -> bool:
    """A record that failed for a transient reason (the engine), to be generated again on resume."""
    return record.get("reject_reason") in RETRYABLE_REASONS


class _JsonlIndex:
    """Ids in one JSONL file, read incrementally from a remembered byte offset.

    `ids` are done for good; `retry` are ids whose latest record is an engine error: a later run may append
    a new record for them (readers keep the last record per id).
    """

    def __init__(self, path: Path):
        self.path, self.offset, self.ids, self.retry = path, 0, set(), set()

    def add(self, record: dict[str, Any]) -> None:
        if is_retryable(record):
            self.retry.add(record["id"])
        else:
            self.ids.add(record["id"])
            self.retry.discard(record["id"])

    def is_new(self, record: dict[str, Any]) -> bool:
        if record["id"] in self.ids:
            return False
        return not (record["id"] in self.retry and is_retryable(record))  # the same error again: nothing new

    def refresh(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        complete = data.rfind(b"\n") + 1  # only whole lines; a partial tail is looked at again later
        for line in data[:complete].splitlines():
            try:
                self.add(json.loads(line))
            except (ValueError, KeyError, TypeError):
                log.warning("%s: skipping an unreadable line", self.path)
        self.offset += complete

    def repair_tail(self) -> None:
        """Drop a partial last line (a writer killed mid-line) so that the next append starts clean."""
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if size > self.offset:
            log.warning("%s: dropping %d bytes of a line cut off by an interrupted writer", self.path, size - self.offset)
            os.truncate(self.path, self.offset)


def latest_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file, one per id (the last one written), in first-seen order."""
    latest: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(path):
        latest[record.get("id")] = record
    return list(latest.values())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Whole, readable lines of a JSONL file (a cut-off tail is ignored)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


class OutputWriter:
    def __init__(self, output_dir: str | Path):
        self.dir = Path(output_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise OutputDirError(f"--output {self.dir} is a file, not a folder: choose a folder path")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.qa_path, self.instances_path = self.dir / QA_FILE, self.dir / INSTANCES_FILE
        self.manifest_path = self.dir / MANIFEST_FILE
        self._qa, self._instances = _JsonlIndex(self.qa_path), _JsonlIndex(self.instances_path)
        self.written = Counter()  # what this writer appended: qa, instances, skipped_duplicates

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.dir / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def done_ids(self) -> frozenset[str]:
        """Ids of the qa records in the directory (any process) that need no new attempt."""
        with self._locked():
            self._qa.refresh()
            return frozenset(self._qa.ids)

    def append(self, qa_records: Iterable[dict[str, Any]], instances: Iterable[dict[str, Any]] = ()) -> int:
        """Append records whose ids are not there yet; returns how many qa records were new.

        Instances go first: a crash between the two files leaves an instance without its qa record, so the
        pair is regenerated and the instance (same id) is skipped, never duplicated.
        """
        qa_records, instances = list(qa_records), list(instances)
        with self._locked():
            new_qa = self._append_new(self._qa, qa_records, dry_run=True)
            self._append_new(self._instances, [i for i in instances if i["id"] in {r["id"] for r in new_qa}])
            self._append_new(self._qa, new_qa)
        self.written["qa"] += len(new_qa)
        self.written["skipped_duplicates"] += len(qa_records) - len(new_qa)
        return len(new_qa)

    def _append_new(self, index: _JsonlIndex, records: list[dict[str, Any]], dry_run: bool = False) -> list[dict]:
        index.refresh()
        index.repair_tail()
        fresh, seen = [], set()
        for record in records:
            if index.is_new(record) and record["id"] not in seen:
                fresh.append(record)
                seen.add(record["id"])
        if dry_run or not fresh:
            return fresh
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh).encode("utf-8")
        with index.path.open("ab") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        for record in fresh:
            index.add(record)
        index.offset += len(payload)
        if index is self._instances:
            self.written["instances"] += len(fresh)
        return fresh

    # ---- manifest and Parquet -------------------------------------------------------------------------

    def check_compatible(self, config: dict[str, Any]) -> None:
        """Refuse to resume into a directory generated with other record-shaping settings."""
        if not self.manifest_path.exists():
            return
        try:
            previous = json.loads(self.manifest_path.read_text()).get("config", {})
        except ValueError:
            return
        changed = {k: (previous.get(k), config.get(k)) for k in RECORD_SHAPING_FIELDS
                   if k in previous and previous.get(k) != config.get(k)}
        if changed:
            diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise OutputDirError(f"{self.dir} holds a run with other settings ({diff}); resume with the same "
                                 "settings or choose a new --output")

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
        os.replace(tmp, self.manifest_path)

    def finalize(self, config: dict[str, Any], model: str | None, timings: dict[str, float] | None = None,
                 extra: dict[str, Any] | None = None, status: str = "complete") -> dict[str, Any]:
        """Write qa.parquet, instances.parquet and manifest.json from the JSONL files; return the manifest.

        A run that ended normally is `complete` only when no record's latest attempt failed on the engine:
        `failed` when every record did, `partial` when some did (counts.engine_errors says how many)."""
        with self._locked():
            qa = latest_records(self.qa_path)
            instances = latest_records(self.instances_path)
            _write_parquet(qa, self.dir / "qa.parquet")
            _write_parquet(instances, self.dir / "instances.parquet")
            reasons = Counter(r.get("reject_reason") for r in qa if not r.get("accepted"))
            accepted = sum(1 for r in qa if r.get("accepted"))
            engine_errors = sum(1 for r in qa if is_retryable(r))
            if status == "complete" and engine_errors:
                status = "failed" if engine_errors == len(qa) else "partial"
            manifest = {
                "status": status,
                "config": config,
                "model": model,
                "counts": {
                    "documents": len({r["doc_id"] for r in qa}),
                    "qa": len(qa),
                    "accepted": accepted,
                    "rejected": len(qa) - accepted,
                    "engine_errors": engine_errors,
                    "instances": len(instances),
                    "acceptance_rate": round(accepted / len(qa), 4) if qa else None,
                    "answer_types": dict(Counter(r.get("answer_type") for r in qa)),
                    "truncated_instances": sum(1 for i in instances if i.get("truncated")),
                },
                "rejection_reasons": dict(reasons.most_common()),
                "timings": timings or {},
                "files": {"qa": QA_FILE, "instances": INSTANCES_FILE, "qa_parquet": "qa.parquet",
                          "instances_parquet": "instances.parquet"},
                "versions": versions(),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra or {}),
            }
            self.write_manifest(manifest)
        return manifest


def _write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".parquet.tmp")
    table = pa.Table.from_pylist(records) if records else pa.table({"id": pa.array([], pa.string())})
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in ("longscale", "transformers", "tokenizers", "torch", "lxml", "pyarrow"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found
