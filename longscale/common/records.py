"""One reader for record files: JSON Lines, JSON (an array or one object), Parquet, a saved `datasets` folder,
or a folder of them, lazily: JSON Lines line by line, Parquet by record batches, saved datasets row by row
from their memory-mapped Arrow files, folders file by file. It yields `(where, record)`; `where` names the record in error messages: `file:LINE` for a
JSON Lines line (1-based, as editors count), `file[i]` for an array element, a Parquet row or a dataset row.

Errors are raised as the caller's own type (`error=`), so each package keeps raising its own errors (finetune's
DataError, evaluation's TaskDataError, ...) with one wording. A `.json` file that is not one JSON value is read
as JSON Lines. Trade-off: a `.json` file is parsed whole (JSON does not stream; use JSON Lines for big inputs).
datafactory's document reader, finetune, evaluation and pretrain all read through this one module.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longscale.common.errors import LongscaleError

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")


class RecordsError(LongscaleError, ValueError):
    """A record file could not be found or parsed; the message names the file and line or row."""


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json",
                                                                     "state.json"))


def record_files(path: Path, suffixes: tuple[str, ...] = RECORD_SUFFIXES, *,
                 error: type[Exception] = RecordsError) -> list[Path]:
    """`path` itself, or the files under it (recursively, sorted) with one of `suffixes`."""
    if not path.exists():
        raise error(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        names = ", ".join(suffixes[:-1]) + " or " + suffixes[-1] if len(suffixes) > 1 else suffixes[0]
        raise error(f"{path}: no {names} files in it")
    return files


def _not_text(file: Path, error: type[Exception]) -> Exception:
    return error(f"{file}: not UTF-8 text (a binary file?)")


def _jsonl(file: Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    with file.open(encoding="utf-8") as handle:
        number = 0
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise error(f"{file}:{number}: not valid JSON ({exc.msg})") from None
                yield f"{file}:{number}", record
        except UnicodeDecodeError:
            raise _not_text(file, error) from None


def _json(file: Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _not_text(file, error) from None
    except json.JSONDecodeError:
        yield from _jsonl(file, error)  # JSON Lines under a .json name
        return
    if isinstance(data, list):
        for i, record in enumerate(data):
            yield f"{file}[{i}]", record
    else:
        yield str(file), data


PARQUET_BATCH_ROWS = 64  # rows decoded at a time: a few MB of long documents, whatever the row-group size


def _parquet(file: Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise error(f"{file}: cannot read as Parquet ({exc})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            yield f"{file}[{row}]", record
            row += 1


def _saved_dataset(path: Path, split: str | None, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        table = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for "not a saved dataset"
        raise error(f"{path}: not a saved datasets directory ({exc})") from None
    if isinstance(table, datasets.DatasetDict):
        if split is not None and split not in table:
            raise error(f"{path}: DatasetDict without a {split!r} split (has {list(table)})")
        splits = [(name, table[name]) for name in ([split] if split is not None else list(table))]
    else:
        splits = [("", table)]
    for name, rows in splits:  # rows come one at a time from the memory-mapped Arrow files
        where = f"{path}/{name}" if name and split is None else str(path)
        for i, row in enumerate(rows):
            yield f"{where}[{i}]", row


def iter_records(path: str | Path, *, suffixes: tuple[str, ...] = RECORD_SUFFIXES, split: str | None = "train",
                 error: type[Exception] = RecordsError) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record under `path`, lazily; a saved DatasetDict gives its `split` (None:
    every split in order)."""
    path = Path(path)
    if is_saved_dataset(path):
        yield from _saved_dataset(path, split, error)
        return
    for file in record_files(path, suffixes, error=error):
        suffix = file.suffix.lower()
        if suffix == ".jsonl":
            yield from _jsonl(file, error)
        elif suffix == ".json":
            yield from _json(file, error)
        elif suffix == ".parquet":
            yield from _parquet(file, error)
        else:
            raise error(f"{file}: unsupported file type (use {', '.join(suffixes)} or a saved datasets dir)")
