"""Find the newest checkpoint folder of a run (both trainers number theirs: `checkpoint-N`, `step-N`)."""
from __future__ import annotations

import re
from pathlib import Path


def latest_checkpoint(root: Path, prefix: str, *, marker: str | None = None) -> Path | None:
    """The `root/<prefix>N` folder with the largest N (holding `marker`, when given), or None."""
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)$")
    found = [(int(m.group(1)), p) for p in Path(root).glob(f"{prefix}*")
             if (m := pattern.match(p.name)) and p.is_dir() and (marker is None or (p / marker).is_file())]
    return max(found)[1] if found else None
