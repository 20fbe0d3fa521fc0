"""Ctrl-C during `longscale generate` with the in-process transformers engine (the real embedded model):
records are on disk as slices finish, SIGINT stops the batch on the model at its next token, the exit code
is 130, what was written is kept, and running the same command again finishes the job without duplicates.

The test waits for events (records on disk, the process's exit), never for a fixed time; the generous
timeouts only turn a hang into a failure.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datafactory.documents import sample_corpus_dir
from datafactory.output import read_jsonl

DOCS = 4


def _corpus(tmp_path: Path) -> Path:
    text = (sample_corpus_dir() / "prideprejudice.txt").read_text()
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"pp{i}", "text": text[i * 3000:(i + 1) * 3000]}) + "\n"
                            for i in range(DOCS)))
    return path


def _command(corpus: Path, out: Path) -> list[str]:
    # a batch (and slice) of 1: every request is appended as it completes and the next one is on the model at
    # once, so the interrupt lands mid-batch; critique off and zero-shot prompts keep the job short
    return [sys.executable, "-m", "longscale.commands.main", "generate", "--input", str(corpus), "--output", str(out),
            "--min-doc-tokens", "100", "--chunk-tokens", "200", "--max-context", "1024", "--max-new-tokens", "32",
            "--batch-size", "1", "--critique", "off", "--prompt-mode", "zero-shot", "--no-progress"]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the event"
        assert time.monotonic() < deadline, "the event never came"
        time.sleep(0.2)


def _ids(out: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(out / "qa.jsonl")]


@pytest.mark.slow
def test_sigint_keeps_finished_slices_and_resume_completes_without_duplicates(tmp_path, embedded_model_dir):
    corpus, out = _corpus(tmp_path), tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_command(corpus, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_ids(out)) >= 1, proc)  # the first slice is on disk while the run goes on
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted; what was already written is kept" in stderr
    # the batch on the model was stopped at a token, not run to its end (which took minutes per worker thread)
    assert "generation stopped: the request was cancelled mid-batch" in stderr, stderr
    kept = _ids(out)
    assert 1 <= len(kept) < DOCS and len(kept) == len(set(kept))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["counts"]["qa"] == len(kept)
    assert all(r["engine_error"] is None for r in read_jsonl(out / "qa.jsonl"))  # no "cancelled" record kept

    done = subprocess.run(_command(corpus, out), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == DOCS and ids[:len(kept)] == kept  # appended, nothing redone or lost
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["this_run"]["resumed_from"] == len(kept)
    assert manifest["this_run"]["qa_new"] == DOCS - len(kept)
