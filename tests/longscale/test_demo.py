"""`longscale demo`, the README's first command, as a tiny real run: the embedded model on the sample corpus."""
from __future__ import annotations

import json

import pytest

from datafactory.output import read_jsonl
from longscale.commands.main import main


@pytest.mark.slow
def test_demo_tiny_run(tmp_path, embedded_model_dir, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--chunks-per-doc", "1", "--finetune-steps", "0", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    records = list(read_jsonl(out / "qa.jsonl"))
    assert manifest["counts"]["qa"] == len(records) == 3  # three books, one chunk each
    assert {r["doc_id"] for r in records} == {"northangerabbey", "persuasion", "prideprejudice"}
    assert manifest["counts"]["instances"] == sum(r["accepted"] for r in records)
    assert "What went where" in capsys.readouterr().out
