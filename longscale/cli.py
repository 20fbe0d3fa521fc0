"""Compatibility shim: console scripts installed before the commands moved, and `python -m longscale.cli`, land here.

The entry point lives in `longscale.commands.main`; this module only re-exports it (kept for one release).
"""
from __future__ import annotations

import sys

from longscale.commands.main import main

if __name__ == "__main__":
    sys.exit(main())
