"""One reader for record files: JSON Lines, JSON (an array or one object), Parquet, a saved `datasets` folder,
or a folder of them, lazily: JSON Lines line by line, Parquet by record batches, saved datasets row by row
from their memory-mapped Arrow files, folders file by file. It yields `(where, record)`; `where` names the record in error messages: `file:LINE` for a
JSON Lines line (1-based, as editors count), `file[i]` for an array element, a Parquet row or a dataset row.

Errors are raised as the caller's own type (`error=`), so each package keeps raising its own errors (finetune's
DataError, evaluation's TaskDataError, ...) with one wording. A `.json` file that is not one JSON value is read
as JSON Lines. Trade-off: a `.json` file is parsed whole (JSON does not stream; use JSON Lines for big inputs).
datafactory's document reader, finetune, evaluation and pretrain all read through this one module.

`count_records` says how many records `iter_records` would yield without holding them (the API's admission
counts uploads and data-root paths with it before anything is read): a Parquet file's footer, JSON Lines'
non-blank lines scanned in 1 MiB blocks, a JSON array's elements parsed one at a time, a saved dataset's
memory-mapped row counts. Its memory is one block and the largest record, never the file. Trade-offs: a JSON
Lines line is counted, not parsed (a bad one raises when it is read); a JSON array is still parsed, one
element at a time (~the time of reading it, not its memory).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longscale.common import fast_json
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
                    record = fast_json.loads(line)
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


# ---- counting -----------------------------------------------------------------------------------------------

COUNT_BLOCK = 1 << 20  # bytes (or characters) read at a time when counting
_LINE_BREAK = re.compile(rb"[\r\n]")  # text mode's universal newlines: what `_jsonl` takes for a line end
# (split by a regex only in a block holding a \r: bytes.split is ~10x faster)
_NOT_JSON_SPACE = re.compile(r"[^ \t\n\r]")
_DECODER = json.JSONDecoder()


def _count_lines(file: Path) -> int:
    """Non-blank lines, as `_jsonl` reads them, in blocks (a line of any length costs one block)."""
    count, open_line = 0, False  # open_line: the line the last block ended in has content
    with file.open("rb") as handle:
        while block := handle.read(COUNT_BLOCK):
            *complete, last = _LINE_BREAK.split(block) if b"\r" in block else block.split(b"\n")
            for part in complete:
                count += open_line or (bool(part) and not part.isspace())
                open_line = False
            open_line = open_line or (bool(last) and not last.isspace())
    return count + open_line


class _JsonText:
    """A JSON text read in blocks, for stepping over one value at a time (memory: a block and a value)."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.text, self.pos, self.eof = handle, "", 0, False

    def _more(self, at_least: int = 0) -> bool:
        chunk = "" if self.eof else self.handle.read(max(COUNT_BLOCK, at_least))
        self.eof = not chunk
        self.text, self.pos = self.text[self.pos:] + chunk, 0
        return bool(chunk)

    def peek(self) -> str:
        """The next character that is not JSON whitespace ('' at the end); the position moves onto it."""
        while not (found := _NOT_JSON_SPACE.search(self.text, self.pos)):
            self.pos = len(self.text)
            if not self._more():
                return ""
        self.pos = found.start()
        return self.text[self.pos]

    def skip_value(self) -> bool:
        """Step over one JSON value; False when it is not valid JSON. A value cut by the block's end is read
        again with twice the text (so a value is parsed a bounded number of times)."""
        if not self.peek():
            return False
        while True:
            try:
                _, end = _DECODER.raw_decode(self.text, self.pos)
                if end < len(self.text) or self.eof:  # a number at the very end may go on in the next block
                    self.pos = end
                    return True
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(self.text) - 6 or exc.msg.startswith("Unterminated")
                if self.eof or not cut:
                    return False
            self._more(2 * (len(self.text) - self.pos))


def _count_json_array(text: _JsonText) -> int | None:
    """Elements of the array the text is (positioned on its '['), or None when it is not one JSON array."""
    text.pos += 1
    count = 0
    if text.peek() == "]":
        text.pos += 1
    else:
        while True:
            if not text.skip_value():
                return None
            count += 1
            step = text.peek()
            text.pos += 1
            if step == "]":
                break
            if step != ",":
                return None
    return count if text.peek() == "" else None


def _count_json(file: Path, error: type[Exception]) -> int:
    """Records `_json` yields: an array's elements, 1 for another single value, else JSON Lines' lines."""
    try:
        with file.open(encoding="utf-8") as handle:
            text = _JsonText(handle)
            first = text.peek()
            if first == "[":
                count = _count_json_array(text)
                if count is not None:
                    return count
            elif first and text.skip_value() and text.peek() == "":
                return 1
    except UnicodeDecodeError:
        raise _not_text(file, error) from None
    return _count_lines(file)  # not one JSON value: read as JSON Lines


def _count_parquet(file: Path, error: type[Exception]) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file).metadata.num_rows
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise error(f"{file}: cannot read as Parquet ({exc})") from None


def _count_saved_dataset(path: Path, split: str | None, error: type[Exception]) -> int:
    import datasets

    try:
        table = datasets.load_from_disk(str(path))  # memory-mapped: the row counts cost no rows
    except Exception as exc:  # datasets raises several types for "not a saved dataset"
        raise error(f"{path}: not a saved datasets directory ({exc})") from None
    if not isinstance(table, datasets.DatasetDict):
        return table.num_rows
    if split is not None and split not in table:
        raise error(f"{path}: DatasetDict without a {split!r} split (has {list(table)})")
    return sum(table[name].num_rows for name in ([split] if split is not None else list(table)))


def count_records(path: str | Path, *, suffixes: tuple[str, ...] = RECORD_SUFFIXES, split: str | None = "train",
                  error: type[Exception] = RecordsError) -> int:
    """How many records `iter_records(path, ...)` (same arguments) yields, without holding them."""
    path = Path(path)
    if is_saved_dataset(path):
        return _count_saved_dataset(path, split, error)
    total = 0
    for file in record_files(path, suffixes, error=error):
        suffix = file.suffix.lower()
        if suffix == ".jsonl":
            total += _count_lines(file)
        elif suffix == ".json":
            total += _count_json(file, error)
        elif suffix == ".parquet":
            total += _count_parquet(file, error)
        else:
            raise error(f"{file}: unsupported file type (use {', '.join(suffixes)} or a saved datasets dir)")
    return total
