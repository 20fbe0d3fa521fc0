"""The shared progress: a tqdm bar only on a terminal, whole throttled lines anywhere else."""
import io

from longscale.common.progress import PlainProgress, progress


class FakeTerminal(io.StringIO):
    """Test double: a stream that says it is a terminal (none exists under pytest)."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_throttled_with_the_last_one_always_printed():
    stream = io.StringIO()
    with progress(total=5, desc="work", unit="item", stream=stream, interval=3600) as bar:
        assert isinstance(bar, PlainProgress)
        for _ in range(5):
            bar.set_postfix(loss="0.5")
            bar.update(1)
    # the first line is due at once, the next ones wait the interval; the end is always printed
    assert stream.getvalue().splitlines() == ["work: 1/5 item, loss=0.5", "work: 5/5 item, loss=0.5"]
    quiet = io.StringIO()
    assert list(progress(range(3), desc="q", stream=quiet, disable=True)) == [0, 1, 2] and quiet.getvalue() == ""


def test_a_terminal_gets_the_redrawing_bar():
    from tqdm import tqdm

    stream = FakeTerminal()
    bar = progress(total=2, desc="work", stream=stream)
    assert isinstance(bar, tqdm)
    bar.update(2)
    bar.close()
    assert "\r" in stream.getvalue()
