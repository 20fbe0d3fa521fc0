"""Readers: FT-Short, the data factory's long instances, raw pretraining text -> plain records.

Each record is a dict with `id`, `kind` ("short" | "long" | "pretrain") and either `messages` (chat turns) or
`text`. Formats are auto-detected per record; anything unrecognised is a `DataError` naming the file and line,
so a bad line never passes silently and nothing read so far is thrown away by the caller's choice.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longscale.common.errors import ConfigError
from longscale.common.instances import parse_instance
from longscale.common.records import iter_records


class DataError(ConfigError):
    """Input data could not be read or understood; the message names the file and line/record."""


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    return iter_records(path, suffixes=(".jsonl", ".parquet"), error=DataError)


def _check_messages(where: str, messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for turn in messages:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            raise DataError(f"{where}: every message needs string 'role' and 'content' (got {turn!r:.80})")
    if not any(turn["role"] == "assistant" for turn in messages):
        raise DataError(f"{where}: no assistant turn, so there is nothing to learn")
    return [{"role": t["role"], "content": t["content"]} for t in messages]


def short_messages(where: str, row: Any) -> list[dict[str, str]]:
    """One FT-Short record as chat messages: `messages`, prompt/completion or Alpaca instruction/input/output."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        return _check_messages(where, row["messages"])
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt/completion
            return _check_messages(where, prompt + completion)
        if isinstance(prompt, str) and isinstance(completion, str):
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if "instruction" in row and "output" in row:
        user = row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"
        if isinstance(user, str) and isinstance(row["output"], str):
            return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    raise DataError(f"{where}: unrecognised record (need 'messages', 'prompt'+'completion', or Alpaca "
                    f"'instruction'+'output'); keys: {sorted(row)}")


def read_short(paths: list[str]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        for where, row in _records(Path(path)):
            rid = str(row.get("id")) if isinstance(row, dict) and row.get("id") is not None else where
            out.append({"id": rid, "kind": "short", "messages": short_messages(where, row)})
    return out


def read_long(paths: list[str]) -> list[dict[str, Any]]:
    """Long QA instances written by the data factory (`instances.jsonl`, or a file such as instances.parquet),
    by directory or file; every record is validated against the shared contract (docs/instances.md)."""
    out = []
    for path in map(Path, paths):
        file = path / "instances.jsonl" if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"long data: {file} not found (give a generation output dir holding instances.jsonl)")
        for where, row in iter_records(file, error=DataError):
            instance = parse_instance(where, row, error=DataError)
            out.append({"id": instance.id, "kind": "long", "messages": instance.chat()})
    return out


def read_pretrain(paths: list[str]) -> list[dict[str, Any]]:
    """Raw text: .txt files (one document each) or JSONL with a 'text' field."""
    out = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.txt")) + sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        if not files:
            raise DataError(f"pretrain data: {path} holds no .txt/.jsonl files")
        for file in files:
            if not file.is_file():
                raise DataError(f"pretrain data: {file} not found")
            if file.suffix == ".txt":
                out.append({"id": str(file), "kind": "pretrain", "text": file.read_text(encoding="utf-8")})
                continue
            for where, row in iter_records(file, error=DataError):
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise DataError(f"{where}: pretrain record needs a string 'text'")
                out.append({"id": str(row.get("id", where)), "kind": "pretrain", "text": row["text"]})
    return out
