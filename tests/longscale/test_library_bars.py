"""library_bars_off_a_terminal: the libraries' bars are off inside the block and restored after it, whether
the library was imported before the block or first inside it (then the block itself imports nothing)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

STATES = """
def states():
    import datasets
    import huggingface_hub.utils as hub
    import transformers.utils.logging as hf_logging
    return [hf_logging.is_progress_bar_enabled(), not hub.are_progress_bars_disabled(),
            datasets.is_progress_bar_enabled()]
"""


def _run(body: str) -> str:
    code = "import sys\nfrom longscale.common.progress import library_bars_off_a_terminal\n" + STATES + \
        textwrap.dedent(body)
    # stderr is a pipe here, not a terminal: the block switches the bars off
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("first_import", ["before", "inside"])
def test_bars_off_inside_the_block_and_restored_after(first_import):
    body = """
    if FIRST == "before":
        states()
    with library_bars_off_a_terminal():
        imported = [m for m in ("datasets", "transformers", "huggingface_hub") if m in sys.modules]
        inside = states()
    print(imported, inside, states())
    """.replace("FIRST", repr(first_import))
    imported, inside, after = _run(body).split("] [")
    if first_import == "inside":
        assert imported == "[", imported  # the block itself imported none of them
    assert inside == "False, False, False", inside
    assert after == "True, True, True]", after


def test_a_bar_the_user_switched_off_stays_off():
    body = """
    import datasets
    datasets.disable_progress_bars()
    with library_bars_off_a_terminal():
        inside = states()
    print(inside, states())
    """
    assert _run(body) == "[False, False, False] [True, True, False]"
