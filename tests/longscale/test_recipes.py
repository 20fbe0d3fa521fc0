"""The recipe YAMLs under configs/recipes/ (the paper's 7B at 32k, 70B at 16k, and the demo): each validates with
its command's config model in today's spellings, and the demo's equal what `longscale demo` runs."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from datafactory.config import GenerationConfig
from finetune.config import FinetuneConfig
from finetune.run import demo_config
from longscale.commands.demo import DEMO_CONFIG
from longscale.common.configcli import resolve_config
from pretrain.config import PretrainConfig

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"
MODELS = {"pretrain": PretrainConfig, "generate": GenerationConfig, "finetune": FinetuneConfig}


def load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a shipped recipe uses no deprecated spelling
        return resolve_config(MODELS[path.stem.rsplit(".", 1)[1]], None, path)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_validates(path):
    assert load(path) is not None


def test_the_paper_settings_are_what_the_paper_says():
    seven, seventy = load(RECIPES / "llama2-7b-32k.pretrain.yaml"), load(RECIPES / "llama2-70b-16k.pretrain.yaml")
    assert (seven.seq_len, seventy.seq_len) == (32768, 16384)
    assert (seven.optimizer.learning_rate, seventy.optimizer.learning_rate) == (2e-5, 1e-5)
    for cfg in (seven, seventy):
        assert cfg.rope.rope_base == 500_000 and cfg.variant == "abf" and cfg.optimizer.warmup_steps == 2000
        assert cfg.total_tokens // cfg.tokens_per_step == 95367  # 400B tokens at 4M per step (~100k steps)


def test_the_demo_recipes_are_what_longscale_demo_runs():
    assert load(RECIPES / "demo.generate.yaml") == DEMO_CONFIG
    shipped = load(RECIPES / "demo.finetune.yaml")
    code = demo_config(shipped.model, shipped.long_data, shipped.output, steps=shipped.max_steps)
    assert shipped == code
