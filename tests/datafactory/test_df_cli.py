"""`longscale generate` from the command line: flags, YAML layering, clear errors, a dead engine."""
from __future__ import annotations

import json
import socket

import pytest

from longscale.commands.main import main


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
    out = tmp_path / "out"  # input and output from the YAML file too
    yaml_file.write_text(f"chunk_tokens: 300\nseed: 1\nmin_doc_tokens: 100\ninput: {_corpus(tmp_path)}\noutput: {out}\n")
    argv = ["generate", "--config", str(yaml_file),
            "--engine", "openai", "--base-url", f"http://127.0.0.1:{_free_port()}/v1", "--model", "smol",
            "--tokenizer", str(embedded_model_dir), "--max-retries", "0", "--request-timeout", "5",
            "--seed", "4", "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "the engine failed on every request" in captured.err and "engine_error" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["chunk_tokens"] == 300 and manifest["config"]["seed"] == 4  # YAML < flags
    assert manifest["rejection_reasons"] == {"engine_error": 2} and manifest["status"] == "failed"
    records = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert {r["doc_id"] for r in records} == {"na0", "na1"} and all(r["engine_error"] for r in records)


@pytest.mark.slow
def test_generate_over_a_real_transformers_serve(tmp_path, capsys, embedded_model_dir):
    """`longscale generate --engine openai` against a real `transformers serve` of the embedded model: the
    production path (vllm serve speaks the same protocol), over a real socket on 127.0.0.1."""
    from datafactory.testing import TransformersServe

    out = tmp_path / "out"
    with TransformersServe(embedded_model_dir, env={"OMP_NUM_THREADS": "1"}) as served:
        argv = ["generate", "--input", str(_corpus(tmp_path)), "--output", str(out), "--engine", "openai",
                "--base-url", served.base_url, "--min-doc-tokens", "100", "--chunk-tokens", "160",
                "--chunks-per-doc", "1", "--max-new-tokens", "48", "--concurrency", "2", "--no-progress"]
        assert main(argv) == 0
    assert "generation complete" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {r["doc_id"] for r in records} == {"na0", "na1"}
    for record in records:
        assert record["engine_error"] is None and record["raw"], record
        assert record["model"] == str(embedded_model_dir) and record["prompt_mode"] == "demonstration"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["qa"] == 2 and manifest["this_run"]["requests"] >= 2
