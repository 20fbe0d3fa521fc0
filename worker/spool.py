"""The job's document spool: documents normalised to one JSON line each, so a task carries only a reference.

Task payloads stay small (a path, a byte offset, an id) however long the documents are; the spool lives in
a hidden folder of the job's output directory, which every worker must see anyway (shared storage), and is
removed when the job ends. Documents stream into it one at a time, and their references into an index file
(`refs.jsonl`) that the fan-out reads back lazily: neither the spooler nor the fan-out holds the corpus.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from datafactory.documents import Document

SPOOL_DIR = ".longscale-spool"


class DocumentRef(BaseModel):
    """Where one document lies in the spool."""
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    path: str
    offset: int = Field(ge=0)
    length: int = Field(ge=1)


def spool_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / SPOOL_DIR


def spool_documents(documents: Iterable[Document], output_dir: str | Path) -> int:
    """Stream documents into the spool and their references into its index; returns how many."""
    folder = spool_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "documents.jsonl"
    tmp_docs, tmp_refs = folder / "documents.jsonl.tmp", folder / "refs.jsonl.tmp"
    count = 0
    with tmp_docs.open("wb") as fh, tmp_refs.open("w", encoding="utf-8") as index:
        for doc in documents:
            # ASCII-escaped: a text with malformed Unicode (a lone surrogate) still spools and fails alone
            data = (json.dumps({"id": doc.id, "text": doc.text, "meta": doc.meta}) + "\n").encode("utf-8")
            ref = DocumentRef(id=doc.id, path=str(path.resolve()), offset=fh.tell(), length=len(data))
            fh.write(data)
            index.write(ref.model_dump_json() + "\n")
            count += 1
    # atomic: a fan-out run again rewrites the same bytes; readers keep the file they opened
    os.replace(tmp_docs, path)
    os.replace(tmp_refs, folder / "refs.jsonl")
    return count


def spooled_refs(output_dir: str | Path) -> Iterator[DocumentRef]:
    """The references `spool_documents` wrote, read one at a time."""
    with (spool_dir(output_dir) / "refs.jsonl").open(encoding="utf-8") as index:
        for line in index:
            yield DocumentRef.model_validate_json(line)


def spool_refs(output_dir: str | Path) -> list[DocumentRef] | None:
    """Every reference, or None when there is no spool (not prepared yet, or the job ended)."""
    if not (spool_dir(output_dir) / "refs.jsonl").exists():
        return None
    return list(spooled_refs(output_dir))


def write_spool(documents: Iterable[Document], output_dir: str | Path) -> list[DocumentRef]:
    """`spool_documents`, returning the references as a list (a few documents: tests)."""
    spool_documents(documents, output_dir)
    return list(spooled_refs(output_dir))


def read_document(ref: DocumentRef) -> Document:
    with open(ref.path, "rb") as fh:
        fh.seek(ref.offset)
        record = json.loads(fh.read(ref.length))
    if record.get("id") != ref.id:
        raise ValueError(f"spool {ref.path} at byte {ref.offset} holds document {record.get('id')!r}, "
                         f"not {ref.id!r} (the spool was rewritten under a running job)")
    return Document(id=record["id"], text=record["text"], meta=record.get("meta") or {})


def remove_spool(output_dir: str | Path) -> None:
    shutil.rmtree(spool_dir(output_dir), ignore_errors=True)
