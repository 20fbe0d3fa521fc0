"""Validation loss by token position (Figure 8a) and by context length with the power-law fit (Figure 1).

`loss_by_position`: mean next-token loss over `windows` windows of `length` tokens, averaged in bins.
`context_scaling`: mean loss of windows of each context length c, fitted with L(c) = (alpha/c)^beta + gamma.
The fit is a grid over beta with linear least squares for A = alpha^beta and gamma at each beta (no scipy):
the trade-off is a fixed beta resolution (refined around the best grid point), which is ample for a curve.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from longscale.common.plotting import new_figure, save_figure
from pretrain.probes.model import TokenLosses
from pretrain.probes.results import ProbeInputError, write_result


def token_windows(texts: list[str], tokenizer, length: int, count: int, seed: int) -> list[torch.Tensor]:
    """`count` windows of `length` tokens at seeded offsets of the (tokenized) texts."""
    rng = random.Random(f"{seed}:{length}")
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    docs = [d for d in docs if len(d) >= length]
    if not docs:
        raise ProbeInputError(f"--texts: no evaluation text has {length} tokens (one of --lengths); give longer texts or shorter lengths")
    out = []
    for n in range(count):
        d = docs[n % len(docs)]
        start = rng.randrange(0, len(d) - length + 1)
        out.append(torch.tensor([d[start:start + length]]))
    return out


def loss_by_position(token_losses: TokenLosses, windows: list[torch.Tensor], *, bin_size: int = 500,
                     output: Path | None = None, label: str = "model", trained_length: int | None = None) -> dict:
    losses = torch.stack([token_losses(w) for w in windows]).double()  # (N, T-1)
    mean = torch.nanmean(losses, dim=0)
    bins = []
    for start in range(0, mean.shape[0], bin_size):
        chunk = mean[start:start + bin_size]
        bins.append({"start": start + 1, "end": start + len(chunk), "loss": float(torch.nanmean(chunk))})
    result = {"probe": "loss-by-position", "model": label, "windows": len(windows), "bin_size": bin_size,
              "length": int(windows[0].shape[1]), "mean_loss": float(torch.nanmean(mean)), "bins": bins}
    if output:
        write_result(output, "loss_by_position", result)
        plot_loss_by_position({label: result}, output / "loss_by_position.png", trained_length)
    return result


def plot_loss_by_position(results: dict[str, dict], path: Path, trained_length: int | None = None) -> Path:
    fig, ax = new_figure("validation loss by position", "token position", "loss (bin mean)")
    for label, res in results.items():
        ax.plot([b["end"] for b in res["bins"]], [b["loss"] for b in res["bins"]], label=label)
    if trained_length:
        ax.axvline(trained_length, color="grey", ls="--", lw=1, label="trained length")
    ax.legend()
    return save_figure(fig, path)


def fit_power_law(contexts, losses) -> dict:
    """Least-squares L(c) = (alpha/c)^beta + gamma; returns alpha, beta, gamma and the RMS residual."""
    c = np.asarray(contexts, dtype=float)
    y = np.asarray(losses, dtype=float)
    if len(c) < 3:
        raise ProbeInputError("--lengths: the power-law fit needs at least 3 context lengths")

    def solve(beta):
        x = c ** -beta
        design = np.stack([x, np.ones_like(x)], axis=1)
        (a, gamma), *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(np.sqrt(np.mean((design @ [a, gamma] - y) ** 2))), a, gamma

    grid = np.linspace(0.01, 3.0, 300)
    best = min(grid, key=lambda b: solve(b)[0])
    fine = np.linspace(max(1e-3, best - 0.02), best + 0.02, 401)
    beta = float(min(fine, key=lambda b: solve(b)[0]))
    rms, a, gamma = solve(beta)
    alpha = float(a ** (1 / beta)) if a > 0 else float("nan")
    return {"alpha": alpha, "beta": beta, "gamma": float(gamma), "rms": rms}


def context_scaling(token_losses: TokenLosses, texts: list[str], tokenizer, lengths: list[int], *,
                    windows: int = 4, seed: int = 0, output: Path | None = None, label: str = "model") -> dict:
    points, per_window = {}, {}
    for length in lengths:
        vals = [float(torch.nanmean(token_losses(w).double())) for w in
                token_windows(texts, tokenizer, length, windows, seed)]
        points[str(length)] = sum(vals) / len(vals)
        per_window[str(length)] = vals  # for an interval on the fit (resampling windows)
    xs = sorted(int(k) for k in points)
    fit = fit_power_law(xs, [points[str(x)] for x in xs]) if len(xs) >= 3 else None
    result = {"probe": "context-scaling", "model": label, "windows": windows, "loss": points, "fit": fit,
              "window_losses": per_window}
    if output:
        write_result(output, "context_scaling", result)
        fig, ax = new_figure("validation loss vs context length", "context length (tokens)", "loss")
        ax.plot(xs, [points[str(x)] for x in xs], "o", label=label)
        if fit and math.isfinite(fit["alpha"]):
            grid = np.geomspace(xs[0], xs[-1], 100)
            ax.plot(grid, (fit["alpha"] / grid) ** fit["beta"] + fit["gamma"], "-",
                    label=f"({fit['alpha']:.3g}/c)^{fit['beta']:.3g} + {fit['gamma']:.3g}")
        ax.set_xscale("log", base=2), ax.legend()
        save_figure(fig, output / "context_scaling.png")
    return result
