"""The pydantic -> flags/YAML layering that every subcommand uses."""
from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import BaseModel, Field, model_validator

from longscale.common.configcli import ConfigError, add_model_flags, resolve_config


class Demo(BaseModel):
    size: int = Field(3, ge=1)
    mode: Literal["a", "b"] = "a"
    tags: list[str] = []
    flag: bool = False

    @model_validator(mode="after")
    def _check(self) -> "Demo":
        if self.mode == "b" and self.size > 10:
            raise ValueError("mode b needs size <= 10")
        return self


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_flags(parser, Demo)
    return parser.parse_args(argv)


def test_defaults_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("size: 5\nmode: b\ntags: [x]\n")
    assert resolve_config(Demo, parse([])) == Demo()
    from_yaml = resolve_config(Demo, parse([]), cfg_file)
    assert (from_yaml.size, from_yaml.mode, from_yaml.tags) == (5, "b", ["x"])
    both = resolve_config(Demo, parse(["--size", "7", "--tags", "p,q", "--tags", "r", "--flag"]), cfg_file)
    assert (both.size, both.mode, both.tags, both.flag) == (7, "b", ["p", "q", "r"], True)
    assert resolve_config(Demo, parse(["--no-flag"]), cfg_file).flag is False


def test_errors_name_the_field_or_file(tmp_path):
    with pytest.raises(ConfigError, match="--size"):
        resolve_config(Demo, parse(["--size", "0"]))
    with pytest.raises(ConfigError, match="mode b needs size"):
        resolve_config(Demo, parse(["--mode", "b", "--size", "11"]))
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(Demo, parse([]), tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sise: 3\n")
    with pytest.raises(ConfigError, match="unknown settings: sise"):
        resolve_config(Demo, parse([]), bad)


def test_list_flags_take_several_values_and_yaml_takes_one_string(tmp_path):
    """docs/finetune.md writes `--long-data runs/gen1 runs/gen2`; a YAML file may give one path as a string;
    YAML reads an unquoted `critique: off` as false."""
    import argparse

    from datafactory.config import GenerationConfig
    from finetune.config import FinetuneConfig
    from longscale.common.configcli import add_model_flags, resolve_config

    parser = argparse.ArgumentParser()
    add_model_flags(parser, FinetuneConfig)
    args = parser.parse_args(["--model", "m", "--output", "o", "--long-data", "runs/gen1", "runs/gen2",
                              "--short-data", "a.jsonl,b.jsonl"])
    config = resolve_config(FinetuneConfig, args)
    assert config.long_data == ["runs/gen1", "runs/gen2"] and config.short_data == ["a.jsonl", "b.jsonl"]
    yaml_file = tmp_path / "ft.yaml"
    yaml_file.write_text("model: m\noutput: o\nlong_data: gen/\n")
    assert resolve_config(FinetuneConfig, None, yaml_file).long_data == ["gen/"]
    yaml_file.write_text("critique: off\n")
    assert resolve_config(GenerationConfig, None, yaml_file).critique == "off"


# ---- the nested tree: sub-models flattened to flags, deprecated spellings, Literal choices -------------------

from longscale.common.config import ConfigModel, Deprecated, OptimizerConfig  # noqa: E402


class Trainer(ConfigModel):
    DEPRECATED = {"lr": Deprecated("learning_rate"),
                  "compile": Deprecated("mode", lambda v: "fast" if str(v).lower() == "true" else "slow", bool)}

    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    mode: Literal["fast", "slow"] = "slow"


def parse_trainer(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_flags(parser, Trainer)
    return parser.parse_args(argv)


def test_nested_knobs_have_a_flat_and_a_dotted_flag():
    flat = resolve_config(Trainer, parse_trainer(["--learning-rate", "0.5"]))
    dotted = resolve_config(Trainer, parse_trainer(["--optimizer.learning-rate", "0.5", "--weight-decay", "0.1"]))
    assert flat.optimizer.learning_rate == 0.5 and flat.optimizer.weight_decay == 0.0
    assert (dotted.optimizer.learning_rate, dotted.optimizer.weight_decay) == (0.5, 0.1)


def test_yaml_nested_or_flat_and_flags_win_per_knob(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("optimizer:\n  learning_rate: 0.25\n  weight_decay: 0.5\n")
    flat = tmp_path / "flat.yaml"
    flat.write_text("learning_rate: 0.25\nweight_decay: 0.5\n")
    for path in (nested, flat):
        cfg = resolve_config(Trainer, parse_trainer(["--learning-rate", "0.75"]), path)
        assert (cfg.optimizer.learning_rate, cfg.optimizer.weight_decay) == (0.75, 0.5)
    typo = tmp_path / "typo.yaml"
    typo.write_text("optimizer:\n  learning_rat: 1\n")
    with pytest.raises(ConfigError, match="unknown settings: optimizer.learning_rat"):
        resolve_config(Trainer, parse_trainer([]), typo)


def test_deprecated_spellings_still_work_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match="'lr' is deprecated.*use 'learning_rate'"):
        cfg = resolve_config(Trainer, parse_trainer(["--lr", "0.5"]))
    assert cfg.optimizer.learning_rate == 0.5
    with pytest.warns(FutureWarning, match="'compile' is deprecated"):
        assert resolve_config(Trainer, parse_trainer(["--compile"])).mode == "fast"
    old = tmp_path / "old.yaml"
    old.write_text("lr: 0.125\n")
    with pytest.warns(FutureWarning):
        assert resolve_config(Trainer, parse_trainer([]), old).optimizer.learning_rate == 0.125
    with pytest.warns(FutureWarning):
        assert Trainer(lr=0.5).optimizer.learning_rate == 0.5  # Python callers too


def test_errors_name_the_flat_flag_and_help_shows_literal_choices(capsys):
    with pytest.raises(ConfigError, match="--learning-rate: Input should be greater than 0"):
        resolve_config(Trainer, parse_trainer(["--learning-rate", "-1"]))
    with pytest.raises(SystemExit):
        parse_trainer(["--help"])
    helptext = capsys.readouterr().out
    assert "--mode {fast,slow}" in helptext
    assert "--lr" not in helptext  # deprecated spellings are hidden


def test_model_copy_nests_flat_knobs_and_refuses_unknown_ones():
    """pydantic's own model_copy would set a stray `learning_rate` attribute and leave the optimizer unchanged."""
    base = Trainer(optimizer=OptimizerConfig(learning_rate=0.5, weight_decay=0.1))
    flat = base.model_copy(update={"learning_rate": 0.25, "mode": "fast"})
    assert flat.optimizer.learning_rate == 0.25 and flat.optimizer.weight_decay == 0.1 and flat.mode == "fast"
    assert base.optimizer.learning_rate == 0.5  # the original is untouched
    nested = base.model_copy(update={"optimizer": {"weight_decay": 0.0}})
    assert nested.optimizer.learning_rate == 0.5 and nested.optimizer.weight_decay == 0.0
    with pytest.warns(FutureWarning):
        assert base.model_copy(update={"lr": 0.125}).optimizer.learning_rate == 0.125
    with pytest.raises(ValueError, match="no such setting"):
        base.model_copy(update={"learning_rat": 1.0})
