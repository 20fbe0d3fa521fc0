"""Long documents in: directories of .txt/.md, JSONL, Parquet, or a `datasets` dataset saved on disk.

Reading is lazy (`iter_documents`): JSONL line by line, Parquet by record batches of its row groups, saved
datasets row by row from their memory-mapped Arrow files, folders file by file, so a corpus of any size
costs the memory of the documents in flight. The price: the duplicate-id check keeps an 8-byte digest per
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
    """Documents from dict records (inline JSON from the API, JSONL/Parquet rows).

    `config` needs `text_field` and `id_field`; the other fields of a record become its `meta`.
    """
    return list(iter_records(records, config, source))


def iter_records(records: Iterable[dict[str, Any]], config: GenerationConfig, source: str = "records",
                 first_number: int = 1) -> Iterator[Document]:
    """`documents_from_records`, lazily: one record read per document yielded."""
    for number, record in enumerate(records, first_number):
        if not isinstance(record, dict):
            raise DocumentError(f"{source}: record {number} is a {type(record).__name__}, not an object")
        if config.text_field not in record:
            raise DocumentError(f"{source}: record {number} has no '{config.text_field}' field "
                                f"(fields: {', '.join(sorted(map(str, record))) or 'none'}); set --text-field")
        text = record[config.text_field]
        if not isinstance(text, str):
            raise DocumentError(f"{source}: record {number} field '{config.text_field}' is "
                                f"{type(text).__name__}, not text")
        raw_id = record.get(config.id_field)
        doc_id = str(raw_id) if raw_id not in (None, "") else text_id(text)
        meta = {k: v for k, v in record.items() if k not in (config.text_field, config.id_field)}
        meta.setdefault("source", source)
        yield Document(id=doc_id, text=text, meta=_jsonable(meta))


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


def _read_jsonl(path: Path, config: GenerationConfig) -> Iterator[Document]:
    """JSON Lines (one object per line, read one line at a time), or for a .json file a JSON array of objects."""
    if path.suffix.lower() == ".json":
        with path.open(encoding="utf-8") as fh:
            head = fh.read(64).lstrip()[:1]
        if head == "[":
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DocumentError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
            yield from iter_records(records, config, source=str(path))
            return
    yield from iter_records(_jsonl_records(path), config, source=str(path))


def _jsonl_records(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise DocumentError(f"{path}:{line_no}: not valid JSON ({exc.msg}, column {exc.colno})") from exc


PARQUET_BATCH_ROWS = 64  # rows decoded at a time: a few MB of long documents, whatever the row-group size


def _read_parquet(path: Path, config: GenerationConfig) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DocumentError(f"{path}: cannot read as Parquet ({exc})") from exc
    columns = parquet.schema_arrow.names
    if config.text_field not in columns:
        raise DocumentError(f"{path}: no column '{config.text_field}' (columns: {', '.join(columns)}); "
                            "set --text-field")
    number = 1
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        rows = batch.to_pylist()
        yield from iter_records(rows, config, source=str(path), first_number=number)
        number += len(rows)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                              or (path / "state.json").exists())


def _read_saved_dataset(path: Path, config: GenerationConfig) -> Iterator[Document]:
    """Rows of a save_to_disk dataset (every split), read from its memory-mapped Arrow files."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except Exception as exc:
        raise DocumentError(f"{path}: cannot load the saved dataset ({exc})") from exc
    splits = list(data.values()) if isinstance(data, DatasetDict) else [data]
    for split in splits:
        assert isinstance(split, Dataset)
        if config.text_field not in split.column_names:
            raise DocumentError(f"{path}: no column '{config.text_field}' (columns: {', '.join(split.column_names)}); "
                                "set --text-field")
    for split in splits:
        yield from iter_records(iter(split), config, source=str(path))


def _iter_path(path: Path, config: GenerationConfig) -> Iterator[Document]:
    if not path.exists():
        raise DocumentError(f"input not found: {path}")
    if _is_saved_dataset(path):
        yield from _read_saved_dataset(path, config)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + (".jsonl", ".json", ".parquet"))
        if not files:
            raise DocumentError(f"{path}: no .txt, .md, .jsonl, .json or .parquet files in this directory")
        for file in files:
            if file.suffix.lower() in TEXT_SUFFIXES:
                yield _read_text_file(file, path)
            else:
                yield from _iter_path(file, config)
    elif path.suffix.lower() in TEXT_SUFFIXES:
        yield _read_text_file(path, path)
    elif path.suffix.lower() in (".jsonl", ".json"):
        yield from _read_jsonl(path, config)
    elif path.suffix.lower() == ".parquet":
        yield from _read_parquet(path, config)
    else:
        raise DocumentError(f"{path}: unsupported input (use .txt/.md files, a directory of them, .jsonl, "
                            ".parquet, or a directory written by datasets' save_to_disk)")


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
