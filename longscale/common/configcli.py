"""One pydantic model, three spellings: CLI flags, a YAML file, and a JSON body.

`add_model_flags` turns each field of a pydantic model into an argparse flag (`chunk_tokens` ->
`--chunk-tokens`, bool -> `--x/--no-x`, list -> comma-separated or repeated), all defaulting to
"not given" so that `resolve_config` can layer: model defaults < YAML file < flags given. Validation is
pydantic's, so a bad value gets the same message whatever spelling it came in.
"""
from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

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


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], *, skip: set[str] = frozenset(),
                    group_title: str | None = None) -> None:
    """Add one flag per field of `model` (help from the field's description, default shown)."""
    target = parser.add_argument_group(group_title) if group_title else parser
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        annotation = _unwrap_optional(field.annotation)
        if field.is_required():
            suffix = " (required)"
        elif field.default_factory is not None or field.default is None:
            suffix = ""
        else:
            suffix = f" (default: {field.default!r})"
        helptext = (field.description or "") + suffix
        helptext = helptext.replace("%", "%%")
        if annotation is bool:
            target.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=helptext)
        elif typing.get_origin(annotation) in (list, tuple):
            target.add_argument(_flag(name), dest=name, action="extend", nargs="+", default=None, metavar="V",
                                help=helptext + " (space- or comma-separated, or repeated)")
        else:
            target.add_argument(_flag(name), dest=name, default=None, metavar=name.upper(), help=helptext)


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
    return {k.replace("-", "_"): v for k, v in data.items()}


def flags_given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The model's fields that were given on the command line (lists split on commas)."""
    given: dict[str, Any] = {}
    for name in model.model_fields:
        value = getattr(args, name, None)
        if value is None:
            continue
        if isinstance(value, list):
            value = [part.strip() for item in value for part in str(item).split(",") if part.strip()]
        given[name] = value
    return given


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = err["loc"]
        if not loc:  # a model-level check: its message names the settings involved
            lines.append(f"  {err['msg']}")
            continue
        where = _flag(str(loc[0])) + "".join(f"[{p}]" for p in loc[1:])
        lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    if len(lines) == 2:  # one problem: one line, the flag first
        return f"{lines[1].strip()} ({source})"
    return "\n".join(lines)


def resolve_config(model: type[M], args: argparse.Namespace | None = None, yaml_path: str | Path | None = None,
                   *, command_keys: tuple[str, ...] = (), **overrides: Any) -> M:
    """Build `model` from defaults < YAML file < given flags < explicit overrides; errors name the field.
    `command_keys` are YAML keys the command reads itself (generate's input/output), not settings."""
    data: dict[str, Any] = {}
    if yaml_path:
        data.update({k: v for k, v in read_yaml(yaml_path).items() if k not in command_keys})
        unknown = set(data) - set(model.model_fields)
        if unknown:
            raise ConfigError(f"config file {yaml_path} has unknown settings: {', '.join(sorted(unknown))}")
    if args is not None:
        data.update(flags_given(args, model))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(yaml_path or "command line"))) from exc
