"""longscale.common.fast_json: orjson where it gives json's values, json where it would not."""
from __future__ import annotations

import json
import math
import random

import pytest

from longscale.common import fast_json


class Text(str):
    pass


def _value(rng: random.Random, depth: int = 0):
    strings = ["plain", "", "quote \" and \\ back", "tab\tnew\nline\x00\x1f", "caf\u00e9", "\u4e2d\u6587",
               "\U0001F600", "\u2028", "\x7f", "\\u00e9 literal", "x" * 300]
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice(strings)
    if kind == 1:
        return rng.choice([0, -3, 2**63, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 2**70, 1.5, -0.0, 1e-7,
                           float("1e300"), float("nan"), float("inf"), True, False, None])
    if kind == 2:
        return Text(rng.choice(strings))
    if kind in (3, 4):
        return rng.choice(strings) + rng.choice(strings)
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6:
        return tuple(_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    return {rng.choice(strings + ["k\u00e9y", "\u4e2d"]): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _same(a, b) -> bool:
    """Equal values of the same types (NaN equal to NaN, -0.0 apart from 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_a_written_line_reads_back_as_json_reads_json_dumps():
    rng = random.Random(0)
    records = [{"id": f"r{i}", "v": _value(rng)} for i in range(3000)]
    records += [{1: "x", 2.5: "y"}, {"a": Text("\u00e9")}, {"n": float("nan")}, {"big": 2**80}]
    for record in records:
        line = fast_json.dumps_line(record)
        assert "\n" not in line
        expected = json.loads(json.dumps(record, ensure_ascii=False))
        assert _same(json.loads(line), expected), record
        assert _same(fast_json.loads(line), expected), record
        assert _same(fast_json.loads(line.encode("utf-8")), expected), record


def test_orjson_writes_compact_exact_values_and_json_the_rest():
    assert fast_json.dumps_line({"id": "a", "n": [1, 2.5, None, True]}) == '{"id":"a","n":[1,2.5,null,true]}'
    assert fast_json.dumps_line({"t": "caf\u00e9"}) == '{"t":"caf\u00e9"}'  # not escaped, as ensure_ascii=False
    assert fast_json.dumps_line({"n": float("nan")}) == '{"n": NaN}'  # orjson would write null
    assert fast_json.dumps_line({"n": 2**64}) == '{"n": 18446744073709551616}'
    assert fast_json.dumps_line({1: "x"}) == '{"1": "x"}'
    assert fast_json.dumps_line({"s": "\ud800"}) == '{"s": "\ud800"}'  # a lone surrogate: json's text
    assert fast_json.dumps_bytes({"s": "\ud800"}) == b'{"s": "\\ud800"}'
    assert fast_json.dumps_bytes({"t": "\u00e9"}) == '{"t":"\u00e9"}'.encode()


@pytest.mark.parametrize("text", ["18446744073709551616", "[-9223372036854775809]", '{"a": [100000000000000000000000]}',
                                  "NaN", "[Infinity]", "1e400", '"\\ud800"', '{"a": 1e20}', "-0.0"])
def test_what_orjson_refuses_or_rounds_is_read_by_json(text):
    assert _same(fast_json.loads(text), json.loads(text))


@pytest.mark.parametrize("text", ["{bad", "[1,]", "", "\ufeff[1]", '"a\tb"'])
def test_what_json_refuses_still_raises_a_json_error(text):
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        fast_json.loads(text)
