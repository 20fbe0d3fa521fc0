"""Long documents in: directories of .txt/.md, JSONL, Parquet, or a `datasets` dataset saved on disk.

Reading is lazy (`iter_documents`): record files go through the one records reader
(longscale/common/records.py: JSONL line by line, Parquet by record batches, saved datasets row by row from their
memory-mapped Arrow files), folders file by file, so a corpus of any size costs the memory of the documents in
flight; this module keeps what is document-specific (.txt/.md files, text/id fields, the duplicate-id check). The price: the duplicate-id check keeps an 8-byte digest per
id seen (~100 bytes a document in Python), and a `.json` array file is still parsed whole (JSON arrays do
not stream; use JSONL for big corpora).

Every document gets a deterministic id (the record's id field, else a hash of its text), so that record ids
derived from it are stable across runs and machines. User mistakes (a missing path, a field that is not
there) raise `DocumentError` with a message that names the file and what to do; the CLI prints it.
The min-doc-tokens filter lives in the pipeline, which tokenizes each document once and reuses it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datafactory.config import GenerationConfig
from longscale.common.errors import LongscaleError
from longscale.common.records import RECORD_SUFFIXES, count_records, is_saved_dataset, iter_records

TEXT_SUFFIXES = (".txt", ".md")


class DocumentError(LongscaleError, ValueError):
    """Documents could not be read; the message names the file or field at fault."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def text_id(text: str) -> str:
    """Deterministic id of a text: the first 16 hex digits of its SHA-256."""
    return "doc-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def sample_corpus_dir() -> Path:
    """The public-domain books shipped with the package (the demo's corpus)."""
    return Path(__file__).resolve().parent / "sample_corpus"


def documents_from_records(records: Iterable[dict[str, Any]], config: GenerationConfig, source: str = "records") -> list[Document]:
    """Documents from dict records (inline JSON from the API).

    `config` needs `text_field` and `id_field`; the other fields of a record become its `meta`.
    """
    return [to_document(f"{source}: record {number}", record, config, source)
            for number, record in enumerate(records, 1)]


def to_document(where: str, record: Any, config: GenerationConfig, source: str) -> Document:
    """One record as a Document; `where` names it in errors (`file:LINE`, `file[ROW]`)."""
    if not isinstance(record, dict):
        raise DocumentError(f"{where}: a {type(record).__name__}, not an object")
    if config.text_field not in record:
        raise DocumentError(f"{where}: no '{config.text_field}' field "
                            f"(fields: {', '.join(sorted(map(str, record))) or 'none'}); set --text-field")
    text = record[config.text_field]
    if not isinstance(text, str):
        raise DocumentError(f"{where}: field '{config.text_field}' is {type(text).__name__}, not text")
    raw_id = record.get(config.id_field)
    doc_id = str(raw_id) if raw_id not in (None, "") else text_id(text)
    meta = {k: v for k, v in record.items() if k not in (config.text_field, config.id_field)}
    meta.setdefault("source", source)
    return Document(id=doc_id, text=text, meta=_jsonable(meta))


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    """Keep metadata that JSON can carry (Parquet rows may hold numpy or datetime values)."""
    try:
        json.dumps(meta)
        return meta
    except TypeError:
        return json.loads(json.dumps(meta, default=str))


def _read_text_file(path: Path, root: Path) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    rel = path.relative_to(root).as_posix() if path != root else path.name
    return Document(id=Path(rel).with_suffix("").as_posix(), text=text, meta={"source": str(path)})


def _read_records(path: Path, config: GenerationConfig) -> Iterator[Document]:
    """A JSONL/JSON/Parquet file or a saved dataset (every split), lazily, through the one records reader."""
    for where, record in iter_records(path, split=None, error=DocumentError):
        yield to_document(where, record, config, source=str(path))


def _kind(path: Path) -> str:
    """How an input path is read: "records" (a record file, a saved dataset), "text" (one .txt/.md file) or
    "folder"; a missing or unsupported path raises."""
    if not path.exists():
        raise DocumentError(f"input not found: {path}")
    if is_saved_dataset(path):
        return "records"
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    if path.suffix.lower() in RECORD_SUFFIXES:
        return "records"
    raise DocumentError(f"{path}: unsupported input (use .txt/.md files, a directory of them, .jsonl, "
                        ".parquet, or a directory written by datasets' save_to_disk)")


def _folder_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + RECORD_SUFFIXES)
    if not files:
        raise DocumentError(f"{path}: no .txt, .md, .jsonl, .json or .parquet files in this directory")
    return files


def _iter_path(path: Path, config: GenerationConfig) -> Iterator[Document]:
    kind = _kind(path)
    if kind == "records":
        yield from _read_records(path, config)
    elif kind == "text":
        yield _read_text_file(path, path)
    else:
        for file in _folder_files(path):
            if file.suffix.lower() in TEXT_SUFFIXES:
                yield _read_text_file(file, path)
            else:
                yield from _iter_path(file, config)


def _count_path(path: Path) -> int:
    kind = _kind(path)
    if kind == "records":
        return count_records(path, split=None, error=DocumentError)
    if kind == "text":
        return 1
    return sum(1 if file.suffix.lower() in TEXT_SUFFIXES else _count_path(file) for file in _folder_files(path))


def count_documents(paths: Iterable[str | Path]) -> int:
    """The documents `iter_documents(paths, ...)` reads (before duplicates are dropped), counted without
    reading them: one per .txt/.md file, the records of each record file or saved dataset counted by the
    records reader (`count_records`: Parquet footers, JSON Lines lines, JSON arrays element by element), so
    an input that expands into millions of documents is refused before it is read. Same errors as reading."""
    return sum(_count_path(Path(raw).expanduser()) for raw in paths)


def iter_documents(paths: Iterable[str | Path], config: GenerationConfig) -> Iterator[Document]:
    """Every input path's documents, lazily. A document seen twice (same id, same text) is yielded once; the
    same id with a different text is an error, since record ids derive from document ids."""
    seen: dict[str, bytes] = {}
    for raw in paths:
        for doc in _iter_path(Path(raw).expanduser(), config):
            digest = hashlib.blake2b(doc.text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            if doc.id in seen:
                if seen[doc.id] != digest:
                    raise DocumentError(f"two different documents share the id '{doc.id}' "
                                        f"(second from {doc.meta.get('source', 'input')}); ids must be unique")
                continue
            seen[doc.id] = digest
            yield doc


def load_documents(paths: Iterable[str | Path], config: GenerationConfig) -> list[Document]:
    """`iter_documents` as a list (small inputs, counting an upload); a corpus should be streamed."""
    return list(iter_documents(paths, config))
