"""Parquet copies of the JSONL files: written a batch at a time with a schema that does not depend on which
values a run happened to see (`write_parquet`), or built while the records are appended (`ParquetFollower`),
so that the end of a run only closes the file.

`write_parquet` reads the records (any number, memory at one batch) and needs a second pass only when a
later batch changes the schema. `ParquetFollower` takes the dicts the output writer appends, in the file's
order; it gives up (and finalize reads the file) as soon as it cannot be sure its file is the one
`write_parquet` would write from the JSONL: a line it did not see (another writer, a repaired tail), a
record whose JSON would read back as other values, a batch that changes the schema, an Arrow error. Its
price: the Arrow conversion runs during the run, on the appending thread (the Parquet encoding on the piped
writer's thread), and up to one batch of records (PARQUET_BATCH_CHARS of text) waits in memory.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from datafactory.parquet_pipe import PipedParquetWriter
from longscale.common import fast_json

PARQUET_BATCH = 2000            # records converted to Arrow at a time, at most...
PARQUET_BATCH_CHARS = 8_000_000  # ...and about this much text (an instance holds its document twice)


def text_size(value: Any) -> int:
    """Characters of text in a record (strings in dicts and lists; anything else counts 8)."""
    kind = type(value)
    if kind is str:
        return len(value)
    if kind is dict:
        return sum([len(v) if type(v) is str else text_size(v) for v in value.values()])
    if kind is list:
        return sum([len(v) if type(v) is str else text_size(v) for v in value])
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_size(v) for v in value.values())
    if isinstance(value, list):
        return sum(text_size(v) for v in value)
    return 8


def batches(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    chars = 0
    for record in records:
        batch.append(record)
        chars += text_size(record)
        if len(batch) >= size or chars >= PARQUET_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def arrow_table(batch: list[dict[str, Any]]) -> Any:
    """The batch as an Arrow table with every field any of its records has (`Table.from_pylist` takes the
    first record's fields only and drops the others' silently); a record without a field gets null."""
    import pyarrow as pa

    first = batch[0].keys() if batch else {}
    if any(record.keys() != first for record in batch):
        names = dict.fromkeys(name for record in batch for name in record)
        batch = [{name: record.get(name) for name in names} for record in batch]
    return pa.Table.from_pylist(batch)


def write_parquet(records: Callable[[], Iterable[dict[str, Any]]], path: Path) -> None:
    """Records (`records()` makes a fresh iterator of them) to Parquet a batch at a time, memory at one batch.

    The final schema is every batch's inferred schema unified (a field null in every record so far gets its
    type later), made stable (`stable_schema`). Usually the first batch's stable schema already is it: the
    batches are written straight to Parquet with that schema, and as long as each later batch leaves the stable
    unified schema unchanged the file is the one the general path would write. A batch that changes it (a new
    field, a type that only shows later) stops that attempt, and `write_parquet_spilled` writes the file
    from a second pass over the records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".parquet.tmp")
    schema, stable, writer = None, None, None
    try:
        for batch in batches(records(), PARQUET_BATCH):
            table = arrow_table(batch)
            if schema is None:
                schema, stable = table.schema, stable_schema(table.schema)
                writer = PipedParquetWriter(tmp, stable)  # the next batch is decoded while this one is written
            else:
                schema = pa.unify_schemas([schema, table.schema], promote_options="permissive")
                if not stable_schema(schema).equals(stable):
                    break
            assert writer is not None and stable is not None  # opened with the first batch
            writer.write_table(conform(table, stable))
        else:
            if writer is None:
                pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp)
            else:
                writer.close()
                writer = None
            os.replace(tmp, path)
            return
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    write_parquet_spilled(records(), path)


def write_parquet_spilled(records: Iterable[dict[str, Any]], path: Path) -> None:
    """Records to Parquet a batch at a time, whatever their schemas. Each batch's inferred schema is unified
    with the ones before; batches are spilled to an Arrow IPC file and cast to the final schema when the
    Parquet file is written, so memory stays at one batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp, spill = path.with_suffix(".parquet.tmp"), path.with_suffix(".arrows.tmp")
    schema, spill_writer = None, None
    try:
        for batch in batches(records, PARQUET_BATCH):
            table = arrow_table(batch)
            schema = table.schema if schema is None else pa.unify_schemas([schema, table.schema],
                                                                          promote_options="permissive")
            if spill_writer is None:
                spill_writer = _SpillWriter(spill)
            spill_writer.write(table)
        if spill_writer is None:
            pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp)
        else:
            schema = stable_schema(schema)
            spill_writer.close()
            with pq.ParquetWriter(tmp, schema) as writer:
                for table in spill_writer.tables():
                    writer.write_table(conform(table, schema))
        os.replace(tmp, path)
    finally:
        if spill_writer is not None:
            spill_writer.close()
        spill.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _stable_type(name: str, type_: Any) -> Any:
    """A type that does not depend on which values a run happened to see: a field that was null in every
    record (engine_error in a run without failures, critique with critique off) gets its real type, so the
    Parquet files of two runs concatenate (nested nulls become strings too)."""
    import pyarrow as pa

    if pa.types.is_null(type_):
        if name == "critique":
            return pa.struct([("verdict", pa.string()), ("reason", pa.string()), ("raw", pa.string())])
        if name == "extraction_notes":
            return pa.list_(pa.string())
        return pa.string()
    if pa.types.is_struct(type_):
        return pa.struct([(f.name, _stable_type(f.name, f.type)) for f in type_])
    if pa.types.is_list(type_):
        return pa.list_(_stable_type("", type_.value_type))
    return type_


def stable_schema(schema: Any) -> Any:
    import pyarrow as pa

    return pa.schema([pa.field(f.name, _stable_type(f.name, f.type)) for f in schema])


class _SpillWriter:
    """Arrow tables of varying schemas in one file (each as its own IPC stream, length-prefixed)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fh = path, path.open("wb")

    def write(self, table: Any) -> None:
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as stream:
            stream.write_table(table)
        data = sink.getvalue()
        self.fh.write(len(data).to_bytes(8, "little"))
        self.fh.write(data)

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()

    def tables(self) -> Iterator[Any]:
        import pyarrow as pa

        with self.path.open("rb") as fh:
            while header := fh.read(8):
                data = fh.read(int.from_bytes(header, "little"))
                yield pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def conform(table: Any, schema: Any) -> Any:
    """`table` with `schema`'s columns in order (missing ones null) and types (nulls and structs cast)."""
    import pyarrow as pa

    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            columns.append(column if column.type == field.type else _cast(column, field.type))
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _cast(column: Any, target: Any) -> Any:
    import pyarrow as pa

    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. a struct missing a field: rebuild from Python
        return pa.array(column.to_pylist(), type=target)


FOLLOW_SUFFIX = ".following.tmp"


class ParquetFollower:
    """`path` built from the records appended to its JSONL file, as they are appended (see the module's
    docstring for when it gives up). `add` takes each append's records with the file's byte offset before
    and after it; `finish` puts the file in place and says whether it could."""

    def __init__(self, path: Path, observe: Callable[[dict[str, Any]], None]) -> None:
        self.path, self.observe = path, observe
        self.tmp = path.with_name(f"{path.name}.{os.getpid()}-{id(self):x}{FOLLOW_SUFFIX}")
        self.offset = 0  # bytes of the JSONL file this follower has seen
        self.alive = True
        self._batch: list[dict[str, Any]] = []
        self._chars = 0
        self._schema: Any = None
        self._stable: Any = None
        self._writer: PipedParquetWriter | None = None

    def add(self, records: list[dict[str, Any]], offset_before: int, offset_after: int) -> None:
        """Records appended at `offset_before` (the file's size before the append) up to `offset_after`."""
        if not self.alive:
            return
        if offset_before != self.offset or not all(map(fast_json.orjson_exact, records)):
            self.abandon()  # a line it did not see, or one that would read back as other values
            return
        self.offset = offset_after
        for record in records:
            self.observe(record)
            self._batch.append(record)
            self._chars += text_size(record)
            if len(self._batch) >= PARQUET_BATCH or self._chars >= PARQUET_BATCH_CHARS:  # batches()' rule
                self._flush()
                if not self.alive:
                    return

    def _flush(self) -> None:
        import pyarrow as pa

        batch, self._batch, self._chars = self._batch, [], 0
        try:
            table = arrow_table(batch)
            if self._schema is None:
                self._schema, self._stable = table.schema, stable_schema(table.schema)
                self._writer = PipedParquetWriter(self.tmp, self._stable)
            else:
                self._schema = pa.unify_schemas([self._schema, table.schema], promote_options="permissive")
                if not stable_schema(self._schema).equals(self._stable):
                    self.abandon()  # write_parquet would take its second pass: let finalize do that
                    return
            assert self._writer is not None
            self._writer.write_table(conform(table, self._stable))
        except (pa.ArrowException, OSError):
            self.abandon()

    def finish(self, offset: int) -> bool:
        """Put the file in place if the follower saw the whole JSONL file (`offset` bytes); else give up."""
        if self.alive and offset == self.offset and self.offset > 0:
            if self._batch:
                self._flush()
            if self.alive and self._writer is not None:
                writer, self._writer = self._writer, None
                try:
                    writer.close()
                    os.replace(self.tmp, self.path)
                    self.alive = False
                    return True
                except OSError:
                    pass
        self.abandon()
        return False

    def abandon(self) -> None:
        self.alive = False
        self._batch = []
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the file is dropped either way
                pass
        self.tmp.unlink(missing_ok=True)


def remove_stale_followers(folder: Path, keep: Iterable[Path] = ()) -> None:
    """Delete follower files a crashed run left behind (not the ones in `keep`)."""
    kept = set(keep)
    for stale in folder.glob(f"*{FOLLOW_SUFFIX}"):
        if stale not in kept:
            stale.unlink(missing_ok=True)
