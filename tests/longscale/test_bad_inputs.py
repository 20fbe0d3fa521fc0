"""Every bad input a user met (issue 14) gets one line naming the flag and exit code 2, never a traceback.

The commands run in-process through the CLI's `main` (an unexpected exception would fail the test with its
traceback); each case states the flag its message must name. The tiny random Llama and the embedded
model's tokenizer are real; every case fails before any training or generation starts.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from longscale.commands.main import main
from tests.pretrain.tiny_llama import save_tiny_llama

SENTENCES = " ".join(f"The {i}th reader of this book walked slowly to the old library every morning." for i in range(80))


@pytest.fixture(scope="module")
def files(tmp_path_factory, embedded_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-inputs")
    model = save_tiny_llama(root / "model", embedded_model_dir, max_positions=256, rope_theta=10_000.0)
    shutil.copy(embedded_model_dir / "chat_template.jinja", model / "chat_template.jinja")
    (root / "a-file").write_text("not a folder")
    (root / "binary.json").write_bytes(bytes(range(256)) * 64)
    (root / "binary.txt").write_bytes(b"\x7fELF\x00\x01" + bytes(range(256)) * 64)
    (root / "words.txt").write_text(SENTENCES)
    (root / "no-sentences.txt").write_text("yes no " * 400)
    (root / "empty.txt").write_text("")
    (root / "docs.jsonl").write_text(json.dumps({"id": "d", "text": SENTENCES}) + "\n")
    return {"model": model, "root": root}


def _cases(f: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    root, model = f["root"], str(f["model"])
    file_out, texts = str(root / "a-file"), str(root / "words.txt")
    return [
        # an output path that is a file: every command that writes a folder
        ("generate --output FILE", ["generate", "--input", str(root / "docs.jsonl"), "--output", file_out,
                                    "--model", model, "--min-doc-tokens", "10"], r"--output \S+a-file is a file"),
        ("pretrain --output FILE", ["pretrain", "--model", model, "--source", texts, "--output", file_out,
                                    "--seq-len", "64", "--tokens-per-step", "128", "--total-tokens", "256"],
         r"--output \S+a-file is a file"),
        ("finetune --output FILE", ["finetune", "--model", model, "--pretrain-data", texts, "--output", file_out],
         r"--output \S+a-file is a file"),
        ("eval --output FILE", ["eval", "--model", model, "--task", "ruler-squad", "--data", str(root / "x.json"),
                                "--output", file_out, "--lengths", "1k"], r"--output \S+a-file is a file"),
        ("probe --output FILE", ["probe", "passkey", "--model", model, "--output", file_out],
         r"--output \S+a-file is a file"),
        ("apply-rope --output FILE", ["pretrain", "apply-rope", "--model", model, "--variant", "abf",
                                      "--output", file_out], r"--output \S+a-file is a file"),
        ("generate without --input", ["generate", "--output", str(root / "g0")], r"generate needs --input"),
        # a mistyped local --model: refused at once (it went to the hub for 51 s, then a traceback)
        ("finetune --model typo", ["finetune", "--model", "runs/abf/finall", "--pretrain-data", texts,
                                   "--output", str(root / "ft")], r"--model runs/abf/finall: no such folder"),
        ("generate --model typo", ["generate", "--input", str(root / "docs.jsonl"), "--output", str(root / "g"),
                                   "--model", "./modles/smol"], r"--model ./modles/smol: no such folder"),
        ("eval --model typo", ["eval", "--model", "~/runs/ft/final", "--task", "ruler-squad", "--data", texts,
                               "--output", str(root / "e")], r"--model ~/runs/ft/final: no such folder"),
        ("pretrain --model typo", ["pretrain", "--model", "../ckpt/llama", "--source", texts, "--output",
                                   str(root / "p0"), "--total-tokens", "100000000"], r"--model ../ckpt/llama: no such"),
        # a bad value names the flag the user typed
        ("pretrain --rope-base -3", ["pretrain", "--model", model, "--source", texts, "--output", str(root / "p1"),
                                     "--rope-base", "-3", "--total-tokens", "100000000"], r"--rope-base: .*greater than 1"),
        ("apply-rope --rope-base -3", ["pretrain", "apply-rope", "--model", model, "--variant", "abf", "--rope-base",
                                       "-3", "--output", str(root / "r")], r"--rope-base: .*greater than 1"),
        # data that is not what it should be
        ("eval --data binary", ["eval", "--model", model, "--task", "ruler-squad", "--data", str(root / "binary.json"),
                                "--output", str(root / "e2"), "--lengths", "1k"], r"--data \S+binary.json: not UTF-8"),
        ("pretrain --source binary", ["pretrain", "--model", model, "--source", str(root / "binary.txt"),
                                      "--output", str(root / "p2"), "--seq-len", "64", "--tokens-per-step", "128",
                                      "--total-tokens", "256"], r"binary.txt: a binary file, not UTF-8 text"),
        # probe text problems
        ("probe --texts binary", ["probe", "first-sentence", "--model", model, "--texts", str(root / "binary.txt"),
                                  "--output", str(root / "pr1"), "--lengths", "200"], r"binary.txt: a binary file"),
        ("probe --texts empty", ["probe", "first-sentence", "--model", model, "--texts", str(root / "empty.txt"),
                                 "--output", str(root / "pr2"), "--lengths", "200"], r"--texts \S+empty.txt: no text"),
        ("probe --texts too short", ["probe", "loss-by-position", "--model", model, "--texts", texts,
                                     "--output", str(root / "pr3"), "--lengths", "100000"],
         r"--texts: no evaluation text has 100000 tokens"),
        ("probe --texts no sentences", ["probe", "first-sentence", "--model", model, "--texts",
                                        str(root / "no-sentences.txt"), "--output", str(root / "pr4"),
                                        "--lengths", "200"], r"--texts: the evaluation texts have no sentences"),
        ("probe --lengths too short", ["probe", "passkey", "--model", model, "--output", str(root / "pr5"),
                                       "--lengths", "8"], r"--lengths 8 is too short for the passkey prompt"),
    ]


CASE_NAMES = [name for name, _, _ in _cases({"root": Path("r"), "model": Path("m")})]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gets_one_line_naming_the_flag_and_exit_2(name, files, capsys):
    import re

    _, argv, expected = next(c for c in _cases(files) if c[0] == name)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = [line for line in err if line.startswith("longscale: ")]
    assert len(message) == 1 and re.search(expected, message[0]), err
    assert not any("Traceback" in line for line in err)


def test_eval_past_the_window_says_every_request_failed_and_exits_1(files, tmp_path, capsys):
    """The tiny model has 256 positions; asked for 512-token prompts, every request fails in the real
    transformers engine. It used to exit 0 printing 0.000; now the exit code and the message say so."""
    from tests.evaluation.test_eval_ruler import squad_file

    data = squad_file(tmp_path)
    argv = ["eval", "--model", str(files["model"]), "--task", "ruler-squad", "--data", str(data), "--lengths", "512",
            "--num-samples", "2", "--max-new-tokens", "8", "--output", str(tmp_path / "eval"), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "the engine failed on every request (scored 0; first: prompt_too_long" in err, err
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["by_length"]["512"]["engine_errors"] == result["by_length"]["512"]["n"] == 2
    assert "(2 err)" in (tmp_path / "eval" / "results.md").read_text()
