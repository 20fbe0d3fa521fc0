"""Matplotlib on the Agg backend (no display needed), one look for every figure longscale writes."""
from __future__ import annotations

from pathlib import Path


def new_figure(title: str, xlabel: str, ylabel: str, size=(7, 4)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set_title(title), ax.set_xlabel(xlabel), ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curve(points: list[tuple[float, float]], path: Path, *, title: str, xlabel: str, ylabel: str,
               size: tuple[float, float] = (7, 4), **line) -> Path | None:
    """One line chart (training losses and the like); nothing is written for no points."""
    if not points:
        return None
    fig, ax = new_figure(title, xlabel, ylabel, size=size)
    ax.plot(*zip(*points), **line)
    return save_figure(fig, path)
