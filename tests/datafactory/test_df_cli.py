"""`longscale generate` from the command line: flags, YAML layering, clear errors, a dead engine."""
from __future__ import annotations

import json
import socket

from longscale.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corpus(tmp_path):
    from datafactory.documents import sample_corpus_dir

    text = (sample_corpus_dir() / "northangerabbey.txt").read_text()
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": text[i * 5000:(i + 1) * 5000], "id": f"na{i}"}) for i in range(2)))
    return path


def test_bad_settings_and_inputs_are_clear(tmp_path, capsys):
    assert main(["generate", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert "input not found" in capsys.readouterr().err
    assert main(["generate", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--chunk-tokens", "10"]) == 2
    assert "--chunk-tokens" in capsys.readouterr().err
    yaml_file = tmp_path / "gen.yaml"
    yaml_file.write_text("chunk_tokens: 500\nbogus_setting: 1\n")
    assert main(["generate", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--config", str(yaml_file)]) == 2
    assert "unknown settings: bogus_setting" in capsys.readouterr().err
    assert main(["generate", "--input", str(_corpus(tmp_path)), "--output", str(tmp_path / "o"),
                 "--engine", "openai", "--base-url", "http://127.0.0.1:1/v1", "--model", "served-name"]) == 2
    assert "pass --tokenizer DIR" in capsys.readouterr().err


def test_dead_engine_keeps_records_and_says_so(tmp_path, capsys, embedded_model_dir):
    """A real socket with nothing listening: every request fails, each failure is recorded, exit code 1."""
    yaml_file = tmp_path / "gen.yaml"
    yaml_file.write_text("chunk_tokens: 300\nseed: 1\nmin_doc_tokens: 100\n")
    out = tmp_path / "out"
    argv = ["generate", "--input", str(_corpus(tmp_path)), "--output", str(out), "--config", str(yaml_file),
            "--engine", "openai", "--base-url", f"http://127.0.0.1:{_free_port()}/v1", "--model", "smol",
            "--tokenizer", str(embedded_model_dir), "--max-retries", "0", "--request-timeout", "5",
            "--seed", "4", "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "the engine failed on every request" in captured.err and "engine_error" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["chunk_tokens"] == 300 and manifest["config"]["seed"] == 4  # YAML < flags
    assert manifest["rejection_reasons"] == {"engine_error": 2} and manifest["status"] == "complete"
    records = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert {r["doc_id"] for r in records} == {"na0", "na1"} and all(r["engine_error"] for r in records)
