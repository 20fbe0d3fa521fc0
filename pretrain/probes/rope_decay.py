"""Attention-score decay of each RoPE variant from the formulas (Figure 4): all-ones q and k.

score(Δ) = Σ_j 2 · s_j(Δ) · cos(θ_j Δ) over the d/2 pairs, with θ_j the variant's angles (appendix B)
and s_j = 1 except xPos: s_j = zeta_j^(Δ/scale_base). Model-free: needs only head_dim and bases.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from longscale.common.plotting import new_figure, save_figure
from pretrain.probes.results import write_result
from pretrain.rope import variant_angles
from pretrain.xpos_modeling import xpos_zeta


def decay_curve(variant: str, head_dim: int, base: float, distances: np.ndarray, *, abf_base: float,
                pi_factor: float, xpos_gamma: float = 0.4, xpos_scale_base: float = 512.0) -> np.ndarray:
    theta = variant_angles(variant, head_dim, base, base=abf_base, factor=pi_factor).numpy()
    dist = np.asarray(distances, dtype=np.float64)[:, None]
    weight = np.ones_like(dist * theta)
    if variant == "xpos-abf":
        weight = xpos_zeta(head_dim, xpos_gamma).numpy()[None, :] ** (dist / xpos_scale_base)
    return (2 * weight * np.cos(dist * theta)).sum(axis=1)


def rope_decay(*, head_dim: int = 128, base: float = 10_000.0, abf_base: float = 500_000.0, pi_factor: float = 4.0,
               max_distance: int = 32768, points: int = 2048, variants=("none", "pi", "abf", "xpos-abf"),
               output: Path | None = None) -> dict:
    distances = np.unique(np.linspace(0, max_distance, points).round().astype(int))
    curves = {v: decay_curve(v, head_dim, base, distances, abf_base=abf_base, pi_factor=pi_factor) for v in variants}
    result = {"probe": "rope-decay", "head_dim": head_dim, "base": base, "abf_base": abf_base, "pi_factor": pi_factor,
              "distances": distances.tolist(), "scores": {v: c.round(6).tolist() for v, c in curves.items()},
              "mean_abs_score_last_quarter": {v: float(np.abs(c[len(c) * 3 // 4:]).mean()) for v, c in curves.items()}}
    if output:
        write_result(output, "rope_decay", result)
        fig, ax = new_figure(f"attention-score decay (all-ones q, k; d={head_dim})", "relative distance",
                             "raw attention score", size=(8, 4.5))
        names = {"none": f"RoPE (b={base:g})", "pi": f"PI (x{pi_factor:g})", "abf": f"RoPE ABF (b={abf_base:g})",
                 "xpos-abf": f"xPos ABF (b={abf_base:g})"}
        for v, c in curves.items():
            ax.plot(distances, c, lw=0.8, label=names.get(v, v))
        ax.legend()
        save_figure(fig, output / "rope_decay.png")
    return result


def rope_decay_for_model(model_dir: str | Path, **kwargs) -> dict:
    """Read head_dim and the trained base from a model's config.json."""
    import json

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = float(cfg.get("original_rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
                 or cfg.get("rope_theta", 10_000.0))
    return rope_decay(head_dim=head_dim, base=base, **kwargs)

