"""Where a probe's inputs come from and its JSON result goes."""
from __future__ import annotations

import json
from pathlib import Path

from longscale.common.errors import LongscaleError


class ProbeInputError(LongscaleError, ValueError):
    """The probe's texts or lengths cannot make its examples; the message names the flag."""


def write_result(output: Path, name: str, result: dict) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def read_texts(path: str | Path) -> list[str]:
    """Evaluation texts: a .txt file, a JSONL/Parquet file, or a folder of them (pretrain.data's reader)."""
    from pretrain.data import read_documents

    texts = read_documents(Path(path))
    if not texts:
        raise ProbeInputError(f"--texts {path}: no text in it (empty files only)")
    return texts
