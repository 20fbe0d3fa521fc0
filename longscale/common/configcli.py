"""One pydantic model, three spellings: CLI flags, a YAML file, and a JSON body.

`add_model_flags` turns each knob of a (nested) pydantic model into an argparse flag (`chunk_tokens` ->
`--chunk-tokens`, bool -> `--x/--no-x`, list -> comma-separated or repeated, Literal -> its choices in --help).
A sub-model's knob is flattened to its own name (`optimizer.learning_rate` -> `--learning-rate`, also
`--optimizer.learning-rate`): names are unique within a command, so the short flag is unambiguous. All flags
default to "not given" so that `resolve_config` can layer: model defaults < YAML file < flags given. Validation
is pydantic's, so a bad value gets the same message whatever spelling it came in.
"""
from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from longscale.common.config import literal_choices, nest_keys, sub_models
from longscale.common.errors import ConfigError

__all__ = ["ConfigError", "add_model_flags", "read_yaml", "resolve_config"]

M = TypeVar("M", bound=BaseModel)
# argparse never produces None for a flag that was given, so None means "not given" for every flag.


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _field_flag(target, dest: str, option_strings: list[str], field: Any) -> None:
    annotation = _unwrap_optional(field.annotation)
    if field.is_required():
        suffix = " (required)"
    elif field.default_factory is not None or field.default is None:
        suffix = ""
    else:
        suffix = f" (default: {field.default!r})"
    helptext = ((field.description or "") + suffix).replace("%", "%%")
    choices = literal_choices(annotation)
    if annotation is bool:
        target.add_argument(*option_strings, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                            help=helptext)
    elif typing.get_origin(annotation) in (list, tuple):
        target.add_argument(*option_strings, dest=dest, action="extend", nargs="+", default=None, metavar="V",
                            help=helptext + " (space- or comma-separated, or repeated)")
    else:
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else dest.rpartition(".")[2].upper()
        target.add_argument(*option_strings, dest=dest, default=None, metavar=metavar, help=helptext)


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], *, skip: AbstractSet[str] = frozenset(),
                    group_title: str | None = None) -> None:
    """Add one flag per knob of `model` (help from the field's description, default and Literal choices shown).

    A sub-model's knob gets its flat flag (`--learning-rate`) and its dotted one (`--optimizer.learning-rate`);
    a deprecated spelling (`--lr`) still works, hidden from --help, with a FutureWarning.
    """
    target = parser.add_argument_group(group_title) if group_title else parser
    sections = sub_models(model)
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        if name in sections:
            for leaf, sub_field in sections[name].model_fields.items():
                _field_flag(target, f"{name}.{leaf}", [_flag(leaf), f"--{name}.{leaf.replace('_', '-')}"], sub_field)
            continue
        _field_flag(target, name, [_flag(name)], field)
    for old, spec in getattr(model, "DEPRECATED", {}).items():
        if spec.flag_type is bool:
            target.add_argument(_flag(old), dest=f"deprecated.{old}", action=argparse.BooleanOptionalAction,
                                default=None, help=argparse.SUPPRESS)
        else:
            target.add_argument(_flag(old), dest=f"deprecated.{old}", default=None, help=argparse.SUPPRESS)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or non-mapping content is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return _underscored(data)


def _underscored(data: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("-", "_"): (_underscored(v) if isinstance(v, dict) else v) for k, v in data.items()}


def _split_list(value: Any) -> Any:
    if isinstance(value, list):
        return [part.strip() for item in value for part in str(item).split(",") if part.strip()]
    return value


def flags_given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The knobs of `model` given on the command line, nested as the model is (lists split on commas)."""
    given: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None:
            continue
        section, _, leaf = dest.rpartition(".")
        if section == "deprecated":
            given[leaf] = _split_list(value)
        elif section in sub_models(model) and leaf in sub_models(model)[section].model_fields:
            given.setdefault(section, {})[leaf] = _split_list(value)
        elif not section and dest in model.model_fields:
            given[dest] = _split_list(value)
    return nest_keys(model, given)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = [p for p in err["loc"] if p != "_nest"]
        if not loc:  # a model-level check: its message names the settings involved
            lines.append(f"  {err['msg']}")
            continue
        # a sub-model's knob is named by its flat flag: ("optimizer", "learning_rate") -> --learning-rate
        head = 1 if len(loc) > 1 and isinstance(loc[1], str) else 0
        where = _flag(str(loc[head])) + "".join(f"[{p}]" for p in loc[head + 1:])
        lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    if len(lines) == 2:  # one problem: one line, the flag first
        return f"{lines[1].strip()} ({source})"
    return "\n".join(lines)


def resolve_config(model_cls: type[M], args: argparse.Namespace | None = None, yaml_path: str | Path | None = None,
                   *, command_keys: tuple[str, ...] = (), **overrides: Any) -> M:
    """Build `model` from defaults < YAML file < given flags < explicit overrides; errors name the field.
    `command_keys` are YAML keys the command reads itself (generate's input/output), not settings."""
    data: dict[str, Any] = {}
    if yaml_path:
        data = nest_keys(model_cls, {k: v for k, v in read_yaml(yaml_path).items() if k not in command_keys})
        known = set(model_cls.model_fields)
        unknown = set(data) - known
        for section, sub in sub_models(model_cls).items():
            if isinstance(data.get(section), dict):
                unknown |= {f"{section}.{k}" for k in set(data[section]) - set(sub.model_fields)}
        if unknown:
            raise ConfigError(f"config file {yaml_path} has unknown settings: {', '.join(sorted(unknown))}")
    if args is not None:
        data = _deep_merge(data, flags_given(args, model_cls))
    data = _deep_merge(data, nest_keys(model_cls, {k: v for k, v in overrides.items() if v is not None}))
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(yaml_path or "command line"))) from exc
