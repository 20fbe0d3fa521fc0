"""parquet_pipe.PipedParquetWriter: the same bytes as pyarrow's own writer, errors of the background writes
reach the caller."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datafactory.parquet_pipe import PipedParquetWriter


def _tables() -> list[pa.Table]:
    return [pa.table({"id": [f"r{k}-{i}" for i in range(50)], "n": list(range(k, k + 50))}) for k in range(6)]


def test_piped_file_equals_the_synchronous_one(tmp_path):
    tables = _tables()
    with pq.ParquetWriter(tmp_path / "sync.parquet", tables[0].schema) as writer:
        for table in tables:
            writer.write_table(table)
    piped = PipedParquetWriter(tmp_path / "piped.parquet", tables[0].schema, depth=2)
    for table in tables:
        piped.write_table(table)
    piped.close()
    piped.close()  # a second close does nothing
    assert (tmp_path / "piped.parquet").read_bytes() == (tmp_path / "sync.parquet").read_bytes()
    assert pq.read_table(tmp_path / "piped.parquet").to_pylist() == pa.concat_tables(tables).to_pylist()


def test_a_failed_background_write_is_raised(tmp_path):
    tables = _tables()
    piped = PipedParquetWriter(tmp_path / "bad.parquet", tables[0].schema)
    piped.write_table(tables[0])
    piped.write_table(pa.table({"other": [1, 2]}))  # not the file's schema: fails on the writer thread
    with pytest.raises(ValueError, match="schema"):  # at a later write or at close, whichever comes first
        try:
            for table in tables[1:]:
                piped.write_table(table)
        finally:
            piped.close()
    piped.close()  # closed already: nothing more to say
