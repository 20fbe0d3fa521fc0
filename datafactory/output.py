"""The output directory: qa.jsonl, instances.jsonl, their Parquet copies, manifest.json.

`OutputWriter` is safe across processes (several Celery workers, a re-delivered task, a re-run): every
append takes an exclusive `fcntl.flock` on `.lock`, reads the ids other writers appended since it last
looked (it remembers its read offset, so this costs only the new bytes), and appends only unseen ids.
A line cut off by a crash is dropped on the next append (and reported); whole lines are never lost.
Records that failed on the engine (`engine_error`) are kept, and generated again by a later run; readers
(`latest_records`, `iter_qa_pairs`, `finalize`) keep the last record per id. Every qa record is written
through the QA pair contract (longscale.common.instances.QAPair, docs/instances.md): a record that does not
fit it is refused before anything is appended; `iter_qa_pairs` reads them back validated.
JSONL is the source of truth; `finalize` rebuilds the Parquet copies and the manifest from it, streaming
(two passes over the files, a few thousand records in memory at a time), so its memory does not grow
with the corpus.

`documents.jsonl` lists the documents whose every record is written and needs no new attempt (appended in
the same locked step, after their records): a resume skips them by id before reading or tokenizing them.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datafactory.gc_pause import freeze_now
from datafactory.parquet_out import ParquetFollower, remove_stale_followers, write_parquet
from longscale.common import fast_json
from longscale.common.errors import LongscaleError
from longscale.common.instances import QAPair, parse_qa_pair, qa_pair_record
from longscale.common.records import iter_records

log = logging.getLogger(__name__)

QA_FILE, INSTANCES_FILE, MANIFEST_FILE, LOCK_FILE = "qa.jsonl", "instances.jsonl", "manifest.json", ".lock"
DOCUMENTS_FILE = "documents.jsonl"
READ_BLOCK = 8 << 20  # bytes of JSONL parsed at a time when indexing a file
# Settings that change which records exist or what they hold: resuming with other values would mix runs.
RECORD_SHAPING_FIELDS = ("model", "tokenizer", "target_tokenizer", "chunk_tokens", "chunks_per_doc", "short_ratio",
                         "prompt_mode", "critique", "max_context", "seed", "min_doc_tokens")


class OutputDirError(LongscaleError, ValueError):
    """The output directory holds a run with different record-shaping settings."""


class QARecordError(LongscaleError, ValueError):
    """A QA pair record does not fit the contract (longscale.common.instances.QAPair); the message names the
    record (file:line, file[row] or its id) and the field."""


RETRYABLE_REASONS = frozenset({"engine_error"})


def is_retryable(record: dict[str, Any]) -> bool:
    """A record that failed for a transient reason (the engine), to be generated again on resume."""
    return record.get("reject_reason") in RETRYABLE_REASONS


class _JsonlIndex:
    """Ids in one JSONL file, read incrementally from a remembered byte offset.

    `ids` are done for good; `retry` are ids whose latest record is an engine error: a later run may append
    a new record for them (readers keep the last record per id).
    """

    def __init__(self, path: Path, id_key: str = "id"):
        self.path, self.offset = path, 0
        self.ids: set[str] = set()
        self.retry: set[str] = set()
        self.id_key = id_key
        self._prefixes = id_prefixes(id_key)
        self.distinct = True  # no id indexed twice and no line skipped (see every_line_latest)

    def every_line_latest(self) -> bool:
        """Whether every line of the file is its id's latest: the whole file indexed (no partial tail), no
        line unreadable, no id twice. A reader may then take the lines as they are, in one pass."""
        return self.distinct and self.path.exists() and self.path.stat().st_size == self.offset

    def add(self, record: dict[str, Any]) -> None:
        key = record[self.id_key]
        if key in self.ids or key in self.retry:
            self.distinct = False
        if is_retryable(record):
            self.retry.add(key)
        else:
            self.ids.add(key)
            self.retry.discard(key)

    def is_new(self, record: dict[str, Any]) -> bool:
        if record[self.id_key] in self.ids:
            return False
        return not (record[self.id_key] in self.retry and is_retryable(record))  # the same error again: nothing new

    def _add_line(self, line: bytes) -> None:
        # an instance line is the whole document twice: take its id from the line's start (written with the
        # id first) instead of parsing it, unless the line holds a retryable record
        if self.path.name == INSTANCES_FILE:
            key = leading_id(line, self._prefixes)
            if key is not None:
                self.distinct = self.distinct and key not in self.ids and key not in self.retry
                self.ids.add(key)
                return
        self.add(fast_json.loads(line))

    def refresh(self) -> None:
        """Index the lines appended since the last look, a block at a time (bounded memory)."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            tail = b""
            while True:
                block = fh.read(READ_BLOCK)
                if not block:
                    break
                data = tail + block
                complete = data.rfind(b"\n") + 1  # only whole lines; a partial tail is looked at again later
                for line in data[:complete].splitlines():
                    try:
                        self._add_line(line)
                    except (ValueError, KeyError, TypeError):
                        self.distinct = False  # a reader's view of this line is not known here
                        log.warning("%s: skipping an unreadable line", self.path)
                self.offset += complete
                tail = data[complete:]

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
        latest[str(record.get("id"))] = record
    return list(latest.values())


def iter_latest_records(path: Path, every_line_latest: bool = False) -> Iterator[dict[str, Any]]:
    """`latest_records` streamed: a first pass finds each id's last line, a second yields those lines (in
    last-written order); memory holds the ids, not the records. `every_line_latest` (the writer's index
    saw no id twice: _JsonlIndex.every_line_latest) skips the first pass, whose answer is then every line."""
    if every_line_latest:
        yield from read_jsonl(path)
        return
    for _line, record in _iter_latest(path):
        yield record


def _iter_latest(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of `iter_latest_records`."""
    last_line: dict[Any, int] = {}
    for number, record_id in enumerate(_line_ids(path)):
        last_line[record_id] = number
    keep = set(last_line.values())
    del last_line
    for number, (line, record) in enumerate(_numbered_jsonl(path)):
        if number in keep:
            yield line, record


def iter_qa_pairs(path: str | Path) -> Iterator[QAPair]:
    """The QA pairs of an output folder, its qa.jsonl (the last record per id, streamed) or a qa.parquet, each
    validated against the contract; one that does not fit raises QARecordError naming file:line (or
    file[row]) and the field."""
    path = Path(path)
    if path.is_dir():
        path = path / QA_FILE
    if path.suffix.lower() == ".parquet":
        for where, record in iter_records(path, error=QARecordError):
            yield parse_qa_pair(where, record, QARecordError)
        return
    if not path.is_file():
        raise QARecordError(f"{path}: no such file")
    for line, record in _iter_latest(path):
        yield parse_qa_pair(f"{path}:{line}", record, QARecordError)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Whole, readable lines of a JSONL file that hold a JSON object (a cut-off tail, a line that is not
    JSON or not an object are ignored)."""
    for _line, record in _numbered_jsonl(path):
        yield record


def _numbered_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each whole, readable line of a JSONL file."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            record = _json_object(line) if line.endswith("\n") else None
            if record is not None:
                yield number, record


def _json_object(line: str | bytes) -> dict[str, Any] | None:
    """The JSON object on a line, or None where the line is not JSON or not an object (`[1, 2]`, `5`):
    such a line is unreadable as a record and skipped by every reader alike."""
    try:
        record = fast_json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def id_prefixes(id_key: str) -> tuple[bytes, bytes]:
    """How a line written with `id_key` first begins, by either writer (fast_json: orjson's compact text or
    json's spaced one)."""
    return b'{"' + id_key.encode() + b'":"', b'{"' + id_key.encode() + b'": "'


def leading_id(line: bytes, prefixes: tuple[bytes, ...]) -> str | None:
    """The string id at the start of a line that begins with one of `prefixes`, read without parsing the
    line; None where it does not (or the id holds an escape: parse the line)."""
    for prefix in prefixes:
        if line.startswith(prefix):
            end = line.find(b'"', len(prefix))
            if end > 0 and b"\\" not in line[len(prefix):end]:
                return line[len(prefix):end].decode()
            return None
    return None


def _line_ids(path: Path) -> Iterator[Any]:
    """The id of each whole, readable line (as `read_jsonl` yields them), read from the line's start when
    it was written first (an instance line is the whole document twice), else parsed."""
    if not path.exists():
        return
    prefixes = id_prefixes("id")
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                continue
            key = leading_id(line, prefixes)
            if key is not None:
                yield key
                continue
            record = _json_object(line)
            if record is not None:
                yield record.get("id")


class OutputWriter:
    """`follow_parquet`: build instances.parquet while the instances are appended (parquet_out.ParquetFollower)
    when this writer starts the file, so that `finalize` only closes it; for a writer that is sure to be
    finalized (a `longscale generate` run), not for the Celery workers' long-lived ones."""

    def __init__(self, output_dir: str | Path, follow_parquet: bool = False):
        self.dir = Path(output_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise OutputDirError(f"--output {self.dir} is a file, not a folder: choose a folder path")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.qa_path, self.instances_path = self.dir / QA_FILE, self.dir / INSTANCES_FILE
        self.manifest_path = self.dir / MANIFEST_FILE
        self._qa, self._instances = _JsonlIndex(self.qa_path), _JsonlIndex(self.instances_path)
        self._documents = _JsonlIndex(self.dir / DOCUMENTS_FILE, id_key="doc_id")
        self._manifest_at_open = self._read_manifest()  # a "running" manifest will replace it
        self.written: Counter[str] = Counter()  # what this writer appended: qa, instances, skipped_duplicates
        # instances.parquet built while the instances are appended (a run into an empty file), so that
        # finalize only closes it; None until the first append decides, False when not following
        self._follower: ParquetFollower | None | bool = None if follow_parquet else False
        self._followed_stats = _RecordStats()

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

    def done_documents(self) -> frozenset[str]:
        """Ids of the documents finished for good (every record written, none to retry), any process."""
        with self._locked():
            self._documents.refresh()
            return frozenset(self._documents.ids)

    def append(self, qa_records: Iterable[dict[str, Any]], instances: Iterable[dict[str, Any]] = (),
               finished_documents: Iterable[dict[str, Any]] = ()) -> int:
        """Append records whose ids are not there yet; returns how many qa records were new.

        Instances go first: a crash between the two files leaves an instance without its qa record, so the
        pair is regenerated and the instance (same id) is skipped, never duplicated. `finished_documents`
        ({"doc_id", "status", "records"} for documents none of whose records is retryable) go last.
        Every qa record goes through the QA pair contract first: one that does not fit raises QARecordError
        and nothing is appended.
        """
        qa_records = [qa_pair_record(record, error=QARecordError) for record in qa_records]
        instances = list(instances)
        with self._locked():
            new_qa = self._append_new(self._qa, qa_records, dry_run=True)
            self._append_new(self._instances, [i for i in instances if i["id"] in {r["id"] for r in new_qa}])
            self._append_new(self._qa, new_qa)
            self._append_new(self._documents, list(finished_documents))
        self.written["qa"] += len(new_qa)
        self.written["skipped_duplicates"] += len(qa_records) - len(new_qa)
        return len(new_qa)

    def _append_new(self, index: _JsonlIndex, records: list[dict[str, Any]], dry_run: bool = False) -> list[dict]:
        index.refresh()
        index.repair_tail()
        fresh, seen = [], set()
        for record in records:
            if index.is_new(record) and record[index.id_key] not in seen:
                fresh.append(record)
                seen.add(record[index.id_key])
        if dry_run or not fresh:
            return fresh
        payload = b"".join(fast_json.dumps_line_bytes(r) + b"\n" for r in fresh)
        with index.path.open("ab") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        for record in fresh:
            index.add(record)
        index.offset += len(payload)
        if index is self._instances:
            self.written["instances"] += len(fresh)
            self._follow(fresh, index.offset - len(payload), index.offset)
        return fresh

    def _follow(self, instances: list[dict[str, Any]], offset_before: int, offset_after: int) -> None:
        if self._follower is None:  # follow a file this writer starts; a resumed one is read by finalize
            self._follower = offset_before == 0 and ParquetFollower(self.dir / "instances.parquet",
                                                                    self._followed_stats.count_instance)
        if isinstance(self._follower, ParquetFollower):
            self._follower.add(instances, offset_before, offset_after)

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

    def _previous_counts(self) -> dict[str, Any] | None:
        """The last complete manifest, when nothing was written since its Parquet files were made."""
        previous = self._manifest_at_open
        if self.written["qa"] or not previous or "counts" not in previous:
            return None
        if not (_newer(self.dir / "qa.parquet", self.qa_path)
                and _newer(self.dir / "instances.parquet", self.instances_path)):
            return None
        return previous

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
        os.replace(tmp, self.manifest_path)

    def finalize(self, config: dict[str, Any], model: str | None, timings: dict[str, float] | None = None,
                 extra: dict[str, Any] | None = None, status: str = "complete") -> dict[str, Any]:
        """Write qa.parquet, instances.parquet and manifest.json from the JSONL files; return the manifest.

        A run that ended normally is `complete` only when no record's latest attempt failed on the engine:
        `failed` when every record did, `partial` when some did (counts.engine_errors says how many).
        When the Parquet files are newer than the JSONL files (a resume that wrote nothing), they and the
        previous counts are kept: rebuilding them would cost time in proportion to the corpus."""
        with self._locked():
            for path in (self.qa_path, self.instances_path):  # a run that accepted nothing still has both files
                if not path.exists():
                    path.touch()
            previous = self._previous_counts()
            if previous is not None:
                errors, total = previous["counts"].get("engine_errors", 0), previous["counts"]["qa"]
                if status == "complete" and errors:
                    status = "failed" if errors == total else "partial"
                manifest = {**previous, "status": status, "config": config, "model": model or previous.get("model"),
                            "timings": timings or {}, "versions": versions(),
                            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
                self.write_manifest(manifest)
                return manifest
            _write_dataset_card(self.dir)
            qa_stats, instance_stats = _RecordStats(), _RecordStats()
            for index in (self._qa, self._instances):
                index.refresh()  # lines other writers appended (nothing new after this writer's own appends)
            qa_single, instances_single = self._qa.every_line_latest(), self._instances.every_line_latest()
            follower, self._follower, followed = self._follower, False, False
            if isinstance(follower, ParquetFollower):
                if not instances_single:  # an id twice or a line skipped: finalize's latest-per-id reading
                    follower.abandon()
                followed = follower.finish(self._instances.offset)
            remove_stale_followers(self.dir)

            def qa_records() -> Iterator[dict[str, Any]]:
                qa_stats.reset()  # a second pass (write_parquet's fallback) counts again
                return qa_stats.observe_qa(iter_latest_records(self.qa_path, qa_single))

            def instance_records() -> Iterator[dict[str, Any]]:
                instance_stats.reset()
                return instance_stats.observe_instances(iter_latest_records(self.instances_path, instances_single))

            write_parquet(qa_records, self.dir / "qa.parquet")
            if followed:
                instance_stats = self._followed_stats
            else:
                write_parquet(instance_records, self.dir / "instances.parquet")
            accepted, total = qa_stats.accepted, qa_stats.records
            engine_errors = qa_stats.engine_errors
            if status == "complete" and engine_errors:
                status = "failed" if engine_errors == total else "partial"
            manifest = {
                "status": status,
                "config": config,
                "model": model,
                "counts": {
                    "documents": len(qa_stats.doc_ids),
                    "qa": total,
                    "accepted": accepted,
                    "rejected": total - accepted,
                    "engine_errors": engine_errors,
                    "instances": instance_stats.records,
                    "acceptance_rate": round(accepted / total, 4) if total else None,
                    "answer_types": dict(qa_stats.answer_types),
                    "truncated_instances": instance_stats.truncated,
                },
                "rejection_reasons": dict(qa_stats.reasons.most_common()),
                "timings": timings or {},
                "files": {"qa": QA_FILE, "instances": INSTANCES_FILE, "qa_parquet": "qa.parquet",
                          "instances_parquet": "instances.parquet"},
                "versions": versions(),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra or {}),
            }
            self.write_manifest(manifest)
        return manifest


def preload_parquet_writer() -> threading.Thread:
    """Import what `finalize` needs to write Parquet (pyarrow, and the pandas that its conversion of Python
    lists imports: ~1 CPU-s) on a background thread, so that it overlaps a run's generation instead of
    lengthening its end."""
    def load() -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet  # noqa: F401

            pa.Table.from_pylist([{"id": "x"}])
        except Exception as exc:  # finalize imports it again and reports what is wrong
            log.debug("preloading pyarrow: %s", exc)
        freeze_now()  # the modules just imported join the frozen ones (gc_pause.py), if a run froze any

    thread = threading.Thread(target=load, name="preload-pyarrow", daemon=True)
    thread.start()
    return thread


def _newer(path: Path, than: Path) -> bool:
    return path.exists() and (not than.exists() or path.stat().st_mtime_ns >= than.stat().st_mtime_ns)


class _RecordStats:
    """Manifest counts gathered while the records stream past on their way to Parquet."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.records = self.accepted = self.truncated = self.engine_errors = 0
        self.doc_ids: set[Any] = set()
        self.reasons: Counter = Counter()
        self.answer_types: Counter = Counter()

    def observe_qa(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            self.records += 1
            self.doc_ids.add(record.get("doc_id"))
            self.answer_types[record.get("answer_type")] += 1
            self.engine_errors += is_retryable(record)
            if record.get("accepted"):
                self.accepted += 1
            else:
                self.reasons[record.get("reject_reason")] += 1
            yield record

    def observe_instances(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            self.count_instance(record)
            yield record

    def count_instance(self, record: dict[str, Any]) -> None:
        self.records += 1
        self.truncated += bool(record.get("truncated"))


DATASET_CARD = """---
# read by datasets.load_dataset(THIS_FOLDER): the long instances by default, the QA pairs as config "qa"
configs:
- config_name: instances
  data_files: instances.parquet
  default: true
- config_name: qa
  data_files: qa.parquet
---
Written by `longscale generate`: instances.parquet (long training instances) and qa.parquet (every generated
pair with its reject_reason); the .jsonl files are the source of truth, manifest.json has settings and counts.
"""


def _write_dataset_card(folder: Path) -> None:
    """README.md naming the data files, so `load_dataset(folder)` never mixes the two schemas (or reads the
    manifest). An existing README.md is the user's and is left alone."""
    card = folder / "README.md"
    if not card.exists():
        card.write_text(DATASET_CARD)


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in ("longscale", "transformers", "tokenizers", "torch", "lxml", "pyarrow"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found
