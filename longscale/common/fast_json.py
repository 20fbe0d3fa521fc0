"""JSON through orjson (Rust, ~2-5x faster than the standard library on long strings) wherever it gives the
same values as `json`, and through `json` wherever it would not.

Reading: `loads` tries orjson and asks `json` for a text orjson refuses (NaN, Infinity, 1e400, lone
surrogate escapes) and for a value where orjson may have rounded: orjson reads an integer past 64 bits as
a float, so a value holding a float of magnitude >= 2**63 is read again by `json` (a look over the parsed
value, not the text: microseconds for a record). A line `json` reads is thus read to the same values, and a
line neither reads raises `json.JSONDecodeError` (a ValueError) as before.
Writing: `dumps_line` writes compact JSON (`{"id":"x","n":1}`, non-ASCII characters as they are) for
values orjson writes exactly -- dicts with str keys, lists, tuples, str, finite floats, ints within 64
bits, bools, None, exact types only -- and `json.dumps(value, ensure_ascii=False)` for anything else (a
NaN, which orjson would write as null; a big int; a non-str key; a subclass; a lone surrogate). The
trade-off: the two writers' spacing differs (`", "` against `","`), so a reader must parse lines, not
match their bytes; the id fast paths in datafactory/output.py accept both.
"""
from __future__ import annotations

import json
import math
from typing import Any

import orjson

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


_HUGE = float(2**63)  # orjson's floats from out-of-range integers are at least this large


def loads(data: str | bytes | bytearray) -> Any:
    """`json.loads(data)`'s value, by orjson when it reads the text to the same value."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
    return json.loads(data) if _holds_huge_float(value) else value


def _holds_huge_float(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return abs(value) >= _HUGE
    if kind is dict:
        return any(map(_holds_huge_float, value.values()))
    if kind is list:
        return any(map(_holds_huge_float, value))
    return False


def orjson_exact(value: Any) -> bool:
    """Whether orjson writes the value exactly as json would read it back (types listed in the docstring)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is dict:
        return all(type(k) is str and orjson_exact(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(map(orjson_exact, value))
    if kind is int:
        return _INT_MIN <= value <= _INT_MAX
    if kind is float:
        return math.isfinite(value)
    return False


def _orjson_text(value: Any) -> bytes | None:
    """orjson's text of the value where it is exact, else None (the caller asks json)."""
    if orjson_exact(value):
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:  # a lone surrogate in a string
            pass
    return None


def dumps_line(value: Any) -> str:
    """One JSON line (no newline): compact orjson text where exact, else `json.dumps(ensure_ascii=False)`."""
    text = _orjson_text(value)
    return text.decode("utf-8") if text is not None else json.dumps(value, ensure_ascii=False)


def dumps_line_bytes(value: Any) -> bytes:
    """`dumps_line` as UTF-8 bytes, without decoding orjson's bytes to encode them again (a file's line)."""
    text = _orjson_text(value)
    return text if text is not None else json.dumps(value, ensure_ascii=False).encode("utf-8")


def dumps_bytes(value: Any) -> bytes:
    """`dumps_line` as UTF-8 bytes (a request body); `json` escapes to ASCII where orjson cannot write."""
    text = _orjson_text(value)
    return text if text is not None else json.dumps(value).encode("ascii")
