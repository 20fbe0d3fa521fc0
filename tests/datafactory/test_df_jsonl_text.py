"""jsonl_text.json_line is json.dumps(record, ensure_ascii=False), character for character."""
from __future__ import annotations

import json
import random

from datafactory.jsonl_text import ascii_only, json_line


class Text(str):
    pass


def _value(rng: random.Random, depth: int = 0):
    strings = ["plain", "", "quote \" and \\ back", "tab\tnew\nline\x00\x1f", "caf\u00e9", "\u4e2d\u6587",
               "\U0001F600", "\u2028", "\x7f", "\\u00e9 literal", "x" * 300]
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice(strings)
    if kind == 1:
        return rng.choice([0, -3, 2**70, 1.5, float("1e300"), True, False, None])
    if kind == 2:
        return Text(rng.choice(strings))
    if kind in (3, 4):
        return rng.choice(strings) + rng.choice(strings)
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6:
        return tuple(_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    return {rng.choice(strings + ["k\u00e9y", "\u4e2d"]): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_json_line_equals_dumps_without_ascii_escapes():
    rng = random.Random(0)
    records = [{"id": f"r{i}", "v": _value(rng)} for i in range(3000)]
    records += [{"k\u00e9y": "ascii value"}, {"a": ["ok", ("tuple", "\u00e9")]}, {"a": Text("\u00e9")}, {1: "x", 2.5: "y"}]
    for record in records:
        assert json_line(record) == json.dumps(record, ensure_ascii=False), record


def test_ascii_only():
    assert ascii_only({"a": ["b", ("c", 1, None, 2.0)]})
    assert not ascii_only({"a": ["b", ("c\u00e9",)]}) and not ascii_only({"\u00e9": 1})
    assert not ascii_only(Text("plain"))  # a subclass is not looked into: the safe path
