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
