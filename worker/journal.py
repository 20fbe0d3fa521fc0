"""The job's record on disk, beside its output: `job.json` (who, what, which config) and `settled.jsonl`, one
line per settled document (its outcome and counts), written before Redis hears of it.

Redis is then only a fast index: a settlement it missed (a restart, a stall, a lost reply) is replayed
from the journal, and a job Redis forgot entirely is rebuilt from `job.json` + the journal + the spool.
The first line for a document wins: `settle_once` appends under an exclusive lock only when none exists,
so a redelivered task, the hard-limit handler and a reconciler can race and still agree. Secrets are not
written (the config is the public one: a client's own engine key is not kept, so a rebuilt job that used
one runs without it).
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

JOB_DIR = ".longscale-job"
JOB_FILE = "job.json"
SETTLED_FILE = "settled.jsonl"
MAX_OPEN = 64


def job_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / JOB_DIR


def write_job_record(output_dir: str | Path, record: dict) -> None:
    folder = job_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (JOB_FILE + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / JOB_FILE)


def read_job_record(output_dir: str | Path) -> dict | None:
    try:
        return json.loads((job_dir(output_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None


class Journal:
    """One job's settlement journal, read incrementally (only bytes appended since the last look)."""

    def __init__(self, output_dir: str | Path):
        self.path = job_dir(output_dir) / SETTLED_FILE
        self._entries: dict[str, dict] = {}
        self._offset = 0

    def _refresh(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        cut = data.rfind(b"\n") + 1  # a line being written is read next time
        for line in data[:cut].splitlines():
            entry = json.loads(line)
            self._entries.setdefault(entry["document"], entry)
        self._offset += cut

    def entries(self) -> dict[str, dict]:
        self._refresh()
        return dict(self._entries)

    def settle_once(self, document_id: str, counts: dict[str, float], error: str | None = None) -> dict:
        """The document's settlement: this one if it is the first, else the one already written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self._refresh()
                if document_id in self._entries:
                    return self._entries[document_id]
                entry = {"document": document_id, "counts": counts, "error": error}
                fh.write((json.dumps(entry) + "\n").encode())
                fh.flush()
                os.fsync(fh.fileno())
                return entry
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


_journals: OrderedDict[str, Journal] = OrderedDict()
_lock = threading.Lock()


def journal_for(output_dir: str | Path) -> Journal:
    """This process's journal reader for an output dir (the least recently used past MAX_OPEN is dropped)."""
    key = str(Path(output_dir).resolve())
    with _lock:
        journal = _journals.get(key) or Journal(key)
        _journals[key] = journal
        _journals.move_to_end(key)
        while len(_journals) > MAX_OPEN:
            _journals.popitem(last=False)
        return journal
