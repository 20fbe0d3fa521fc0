"""`longscale pretrain ...` and `longscale probe ...` end to end on a tiny random Llama (real tokenizer)."""
from __future__ import annotations

import json

import pytest
import torch

from longscale.commands.main import main
from pretrain.probes.model import HFModel
from tests.pretrain.tiny_llama import save_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, embedded_model_dir):
    out = tmp_path_factory.mktemp("tinycli") / "model"
    return save_tiny_llama(out, embedded_model_dir, max_positions=256, rope_theta=1e4, eos_token_id=2)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_texts")
    sentences = [f"Sentence number {i} tells of Anne and the {i % 7} letters she kept." for i in range(300)]
    (d / "book.txt").write_text(" ".join(sentences))
    return d


def test_apply_rope_cli_writes_the_checkpoint(tiny, tmp_path, capsys):
    assert main(["pretrain", "apply-rope", "--model", str(tiny), "--variant", "abf", "--rope-base", "2e5",
                 "--seq-len", "1024", "--output", str(tmp_path / "abf")]) == 0
    cfg = json.loads((tmp_path / "abf" / "config.json").read_text())
    assert cfg["rope_theta"] == 2e5 and cfg["max_position_embeddings"] == 1024
    assert json.loads(capsys.readouterr().out)["changes"]["rope_parameters"]["rope_theta"] == 2e5
    (tmp_path / "nothing").mkdir()  # a folder, but no model in it
    assert main(["pretrain", "apply-rope", "--model", str(tmp_path / "nothing"), "--variant", "abf",
                 "--output", str(tmp_path / "x")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_pretrain_cli_with_repeated_sources(tiny, texts, tmp_path, capsys):
    argv = ["pretrain", "--model", str(tiny), "--variant", "pi", "--output", str(tmp_path / "run"),
            "--source", f"a={texts}:1", "--source", f"b={texts / 'book.txt'}:0.5", "--seq-len", "256",
            "--tokens-per-step", "512", "--max-micro-batch", "2", "--total-tokens", "1024", "--warmup-steps", "1",
            "--learning-rate", "1e-3", "--device", "cpu"]
    assert main(argv) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and (tmp_path / "run" / "final" / "config.json").exists()
    assert main(argv[:-2] + ["--device", "cpu", "--seq-len", "300"]) == 2  # 512 is not a multiple of 300
    assert "--tokens-per-step" in capsys.readouterr().err


def test_probe_cli_writes_json_and_png(tiny, texts, tmp_path, capsys):
    capsys.readouterr()
    for probe, extra in (("first-sentence", ["--samples", "2"]), ("loss-by-position", ["--bin-size", "64"]),
                         ("context-scaling", ["--windows", "1"]), ("passkey", ["--samples", "1"])):
        lengths = "128,256,512" if probe == "context-scaling" else "256"
        assert main(["probe", probe, "--model", str(tiny), "--texts", str(texts), "--lengths", lengths,
                     "--device", "cpu", "--output", str(tmp_path / probe)] + extra) == 0
        name = probe.replace("-", "_")
        assert json.loads((tmp_path / probe / f"{name}.json").read_text())["probe"] == probe
        assert (tmp_path / probe / f"{name}.png").stat().st_size > 1000
    err = capsys.readouterr().err  # captured stderr is not a terminal: whole progress lines, no redraws
    assert "\r" not in err and "\x1b" not in err
    assert {"first-sentence 256: 1/1 it", "passkey 256: 5/5 it"} <= set(err.splitlines())
    assert main(["probe", "rope-decay", "--model", str(tiny), "--lengths", "4k", "--output", str(tmp_path / "rd")]) == 0
    assert main(["probe", "first-sentence", "--model", str(tiny), "--lengths", "256", "--output",
                 str(tmp_path / "no-texts")]) == 2


def test_hf_model_adapter_batches_and_scores(tiny):
    model = HFModel(tiny, device="cpu")
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12], [1, 2, 3]]
    answers = model.answer(prompts, 3)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert answers[0] == model.answer([prompts[0]], 3)[0]  # batching does not change greedy output
    losses = model.token_losses(torch.tensor([[5, 6, 7, 8, 9]]))
    assert losses.shape == (4,) and torch.isfinite(losses).all()
