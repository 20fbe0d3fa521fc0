"""Readers: FT-Short formats auto-detected, long dirs, pretrain text; bad input named by file and line."""
from __future__ import annotations

import json

import pytest

from finetune.mixing import mix
from finetune.sources import DataError, read_long, read_pretrain, read_short
from finetune.tokenization import Sample
from longscale.common.configcli import ConfigError


def test_three_short_formats_become_the_same_chat(short_file):
    records = read_short([str(short_file)])
    assert len(records) == 12
    assert records[0]["messages"] == [{"role": "user", "content": "What is 0 plus 0?"},
                                      {"role": "assistant", "content": "0 plus 0 is 0."}]
    assert records[1]["messages"][0] == {"role": "user", "content": "What is 1 plus 1?"}  # prompt/completion
    assert records[2]["messages"][0]["content"] == "Answer the sum.\n\nWhat is 2 plus 2?"  # Alpaca with input


def test_parquet_and_saved_dataset(tmp_path, short_file):
    import datasets

    rows = [json.loads(line) for line in short_file.read_text().splitlines()]
    chat = [{"id": r["id"], "messages": r["messages"]} for r in rows if "messages" in r]
    ds = datasets.Dataset.from_list(chat)
    ds.to_parquet(str(tmp_path / "short.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    assert [r["id"] for r in read_short([str(tmp_path / "short.parquet")])] == [r["id"] for r in chat]
    assert [r["messages"] for r in read_short([str(tmp_path / "saved")])] == [r["messages"] for r in chat]


@pytest.mark.parametrize("line,match", [
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
    ('{"question": "q", "answer": "a"}', r"bad\.jsonl:2: unrecognised record.*keys: \['answer', 'question'\]"),
    ('{"messages": [{"role": "user", "content": "q"}]}', r"bad\.jsonl:2: no assistant turn"),
    ('{"messages": [{"role": "user"}]}', r"bad\.jsonl:2: every message needs"),
])
def test_bad_short_record_names_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "completion": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=match):
        read_short([str(path)])


def test_missing_inputs_are_clear(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file or folder"):
        read_short([str(tmp_path / "nope.jsonl")])
    with pytest.raises(DataError, match="instances.jsonl not found"):
        read_long([str(tmp_path)])
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_short([str(tmp_path / "data.csv")])


def test_long_dir_and_pretrain_text(tmp_path, long_dir):
    records = read_long([str(long_dir)])
    assert [r["id"] for r in records] == ["long-0", "long-1", "long-2"]
    assert records[0]["messages"][0]["content"].startswith("You are given a long text")
    (tmp_path / "book.txt").write_text("Chapter 1\nIt was a dark night.")
    (tmp_path / "more.jsonl").write_text('{"text": "Another document."}\n')
    docs = read_pretrain([str(tmp_path)])
    assert [d["text"] for d in docs] == ["Chapter 1\nIt was a dark night.", "Another document."]


def _samples(kind, n, length):
    return [Sample(f"{kind}{i}", kind, [1] * length, [False] * length) for i in range(n)]


def test_mixing_ratios_by_samples_and_tokens():
    data = {"short": _samples("short", 90, 10), "long": _samples("long", 30, 100), "pretrain": []}
    kept, dropped = mix(data, long_ratio=0.1, pretrain_ratio=None, by="samples", seed=1)
    assert len(kept["long"]) == 10 and len(kept["short"]) == 90 and dropped["long"] == 20
    kept, _ = mix(data, long_ratio=0.5, pretrain_ratio=None, by="tokens", seed=1)
    assert sum(map(len, kept["long"])) == sum(map(len, kept["short"])) == 900
    again, _ = mix(data, long_ratio=0.5, pretrain_ratio=None, by="tokens", seed=1)
    assert [s.id for s in again["long"]] == [s.id for s in kept["long"]]  # seeded
    kept, dropped = mix(data, long_ratio=None, pretrain_ratio=None, by="samples", seed=1)
    assert kept is data and not any(dropped.values())
    with pytest.raises(ConfigError, match="pretrain"):
        mix(data, long_ratio=0.2, pretrain_ratio=0.2, by="samples", seed=1)


def test_config_refuses_settings_that_would_silently_break_isolation():
    from pydantic import ValidationError

    from finetune.config import FinetuneConfig

    with pytest.raises(ValidationError, match="flash_attention_2 keeps packed samples apart only"):
        FinetuneConfig(model="m", output="o", short_data=["s"], attn_implementation="flash_attention_2",
                       per_device_rows=2)
    with pytest.raises(ValidationError, match="at least one of"):
        FinetuneConfig(model="m", output="o")
    FinetuneConfig(model="m", output="o", short_data=["s"], attn_implementation="flash_attention_2")
