"""Model arguments that name a local folder: caught here, before a hub lookup retries for a minute.

`--model runs/abf/final` (a typo of a local path) used to go to the Hugging Face Hub, retry for ~51 s and end
in a traceback. A name that can only be a path (absolute, `./`, `../`, `~`, or more than one `/`: hub ids
are `name` or `org/name`) and does not exist is refused at once with the flag's name.
"""
from __future__ import annotations

from pathlib import Path

from longscale.common.errors import LongscaleError


class ModelPathError(LongscaleError):
    """A model or tokenizer argument names a local folder that is missing or is not a model folder."""


def looks_local(name: str) -> bool:
    """True when `name` can only be a filesystem path, never a Hugging Face Hub id."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..") or name.count("/") >= 2 \
        or "\\" in name or name.endswith("/")


def check_model_path(name: str | None, flag: str = "--model", *, need_config: bool = True) -> None:
    """Refuse a local-looking `name` that does not exist (or, with `need_config`, has no config.json)."""
    if not name:
        return
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file():
            raise ModelPathError(f"{flag} {name}: a file, not a model folder")
        if need_config and path.is_dir() and not (path / "config.json").is_file():
            raise ModelPathError(f"{flag} {name}: no config.json in it, so it is not a Hugging Face model folder")
        return
    if looks_local(name):
        raise ModelPathError(f"{flag} {name}: no such folder (a local path; check the spelling)")


RUN_PARTS = ("final", "adapter", "merged")


def model_label(name: str) -> str:
    """A short label for tables and plots: the folder name, with its run's name when the folder is a run's
    `final`/`adapter`/`checkpoint-N`/`step-N` (runs/abf/final -> abf/final, not a column of "final")."""
    path = Path(name)
    if path.name in RUN_PARTS or path.name.startswith(("checkpoint-", "step-")):
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return path.name or name
