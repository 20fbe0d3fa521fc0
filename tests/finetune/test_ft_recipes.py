"""The small shipped recipe (configs/recipes/demo.finetune.yaml) really trains: two tiny steps on CPU."""
from __future__ import annotations

from pathlib import Path

from finetune.config import FinetuneConfig
from finetune.run import run_finetune
from longscale.common.configcli import resolve_config
from longscale.common.progress import library_bars_off_a_terminal

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "demo.finetune.yaml"


def test_demo_finetune_recipe_runs_two_steps(tmp_path, tiny_llama_dir, long_dir, capsys):
    config = resolve_config(FinetuneConfig, None, RECIPE, model=str(tiny_llama_dir), long_data=[str(long_dir)],
                            output=str(tmp_path / "out"))
    assert config.max_steps == 2 and config.lora_r == 8  # the recipe's own settings, not the overrides
    capsys.readouterr()
    with library_bars_off_a_terminal():  # as `longscale finetune` runs it
        result = run_finetune(config)
    assert result["training"]["global_step"] == 2
    # captured stderr is not a terminal: no redrawing bar (the Trainer's is off), one log line per step instead
    out, err = capsys.readouterr()
    assert "\r" not in err and "\x1b" not in err, err
    assert sum(line.startswith("{'loss'") for line in out.splitlines()) == 2, out
    assert (tmp_path / "out" / "final" / "config.json").is_file()
