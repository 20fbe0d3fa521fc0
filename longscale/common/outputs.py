"""Output folders that never lose a run by accident: one check used by every command that writes a folder.

A folder that already holds files is refused unless the caller resumes it (`--resume`) or replaces it
(`--overwrite`); a path that is a file is refused with the flag's name. `--overwrite` deletes only a folder
that looks like a run of the same kind (one of `markers` is there), so a mistyped `--output ~` never empties
a home directory. `--resume` refuses a run whose recipe settings differ (`recipe_differences`).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from longscale.common.errors import ConfigError


class OutputFolderError(ConfigError):
    """The output folder is a file, holds another run, or cannot be resumed with these settings."""


def check_output_folder(path: str | Path, *, resume: bool = False, overwrite: bool = False,
                        markers: Iterable[str] = (), flag: str = "--output", what: str = "run") -> Path:
    """Make `path` ready to write a run into; return it. Raises OutputFolderError naming `flag`.

    resume: an existing folder is kept as it is (the caller resumes what is there);
    overwrite: a folder holding one of `markers` is emptied first (only on the main process under torchrun).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{flag} {path} is a file, not a folder: choose a folder path")
    if resume and overwrite:
        raise OutputFolderError("--resume and --overwrite exclude each other: continue the run, or replace it")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if entries and not resume:
        if not overwrite:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise OutputFolderError(f"{flag} {path} already holds files ({shown}): pass --resume to continue that "
                                    f"{what}, --overwrite to replace it, or choose another {flag}")
        if not any((path / m).exists() for m in markers):
            raise OutputFolderError(f"--overwrite: {path} does not look like a {what} folder (none of "
                                    f"{', '.join(markers)}); remove it yourself or choose another {flag}")
        if int(os.environ.get("RANK", "0")) == 0:
            for entry in path.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def recipe_differences(saved: dict[str, Any], current: dict[str, Any], ignore: Iterable[str]) -> dict[str, tuple]:
    """{setting: (saved, current)} for every setting of `current` that `saved` holds with another value."""
    skip = set(ignore)
    saved, current = _leaves(saved), _leaves(current)
    return {k: (saved[k], v) for k, v in current.items() if k not in skip and k in saved and saved[k] != v}


def _leaves(config: dict[str, Any]) -> dict[str, Any]:
    """A config dump with its sub-models' knobs lifted to the top (knob names are unique within a command), so
    a run saved before the config tree nested them compares knob by knob with one saved after."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key in _SECTIONS:
            flat.update(value)
        else:
            flat[key] = value
    return flat


_SECTIONS = {"optimizer", "checkpointing", "compiler", "attention", "rope"}


def refuse_changed_recipe(differences: dict[str, tuple], where: str | Path) -> None:
    """Raise OutputFolderError naming each changed setting as a flag (`--seq-len: 2048 -> 4096`)."""
    if differences:
        diff = ", ".join(f"--{k.replace('_', '-')}: {old!r} -> {new!r}" for k, (old, new) in differences.items())
        raise OutputFolderError(f"--resume: {where} was made with other settings ({diff}); resume with the same "
                                "settings, or start a new run with --overwrite or another --output")
