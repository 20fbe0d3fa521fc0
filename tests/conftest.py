"""Shared fixtures: the real embedded model (fetched and converted once per machine) and the sample corpus."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from datafactory.embedded import ensure_embedded_model

    return ensure_embedded_model()
