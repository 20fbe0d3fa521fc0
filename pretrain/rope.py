"""RoPE variants of appendix B as rotary angles and as config.json changes.

The formulas (per dimension pair j of a head of size d, position t):
  RoPE        theta_j = b^(-2j/d)
  RoPE + PI   theta_j = alpha * b^(-2j/d)          alpha = trained length / new length
  RoPE + ABF  theta_j = (beta * b)^(-2j/d)         the new base is beta * b
xPos ABF uses the ABF angles plus a per-pair scale (see `xpos_modeling`).

A converted checkpoint carries the change in config.json in both spellings: transformers 5 reads
`rope_parameters`, vLLM (and older transformers) read `rope_theta` / `rope_scaling`; both say the same.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch

Variant = Literal["none", "abf", "pi", "xpos-abf"]
VARIANTS: tuple[str, ...] = ("none", "abf", "pi", "xpos-abf")
DEFAULT_ABF_BASE = 500_000.0  # the paper's choice for Llama 2 (10k -> 500k)


def rope_angles(head_dim: int, base: float, *, pi_factor: float = 1.0) -> torch.Tensor:
    """theta_j for j = 0..d/2-1 in float64: base^(-2j/d) / pi_factor (pi_factor = 1/alpha)."""
    j = torch.arange(head_dim // 2, dtype=torch.float64)
    return base ** (-2.0 * j / head_dim) / pi_factor


def variant_angles(variant: str, head_dim: int, original_base: float, *, base: float | None = None,
                   factor: float = 1.0) -> torch.Tensor:
    """The angles a variant uses: ABF/xPos-ABF change the base, PI divides by `factor`, none keeps both."""
    if variant == "none":
        return rope_angles(head_dim, original_base)
    if variant == "pi":
        return rope_angles(head_dim, original_base, pi_factor=factor)
    if variant in ("abf", "xpos-abf"):
        return rope_angles(head_dim, base if base is not None else DEFAULT_ABF_BASE)
    raise ValueError(f"unknown RoPE variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def read_rope(config: dict) -> tuple[float, dict]:
    """(rope_theta, rope_parameters) from a config dict, whichever spelling it uses."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = params.get("rope_theta", config.get("rope_theta", 10_000.0))
    params.setdefault("rope_type", params.pop("type", "default"))
    params["rope_theta"] = float(theta)
    return float(theta), params


def rope_config_changes(config: dict, variant: str, *, base: float | None = None,
                        seq_len: int | None = None) -> dict:
    """The config.json keys to set for `variant` (both transformers 5 and vLLM spellings).

    `seq_len` is the new context (default: the trained one); PI's factor is seq_len / trained length.
    A config already converted (it has `original_max_position_embeddings`) is converted from its origin.
    The window (`max_position_embeddings`) never shrinks: training at a shorter `seq_len` than the model
    already handles keeps the model's window (vLLM and the evaluations read it as what the model can do).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown RoPE variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    original_theta, params = read_rope(config)
    if params.get("rope_type") not in ("default", "linear"):
        raise ValueError(f"the model already uses rope_type {params.get('rope_type')!r}; "
                         "only default or linear RoPE can be converted")
    trained_len = int(config.get("original_max_position_embeddings") or config["max_position_embeddings"])
    original_theta = float(config.get("original_rope_theta") or original_theta)
    new_len = int(seq_len or trained_len)
    if new_len <= 0:
        raise ValueError(f"--seq-len must be positive, got {new_len}")
    window = max(new_len, int(config["max_position_embeddings"]))
    changes: dict = {"max_position_embeddings": window, "original_max_position_embeddings": trained_len,
                     "original_rope_theta": original_theta}
    if variant == "none":
        theta, rope = original_theta, {"rope_type": "default", "rope_theta": original_theta}
        scaling = None
    elif variant == "pi":
        factor = new_len / trained_len
        if factor < 1:
            raise ValueError(f"PI needs --seq-len >= the trained length {trained_len}, got {new_len}")
        theta = original_theta
        rope = {"rope_type": "linear", "rope_theta": theta, "factor": factor}
        scaling = {"rope_type": "linear", "type": "linear", "factor": factor}
    else:
        theta = float(base if base is not None else DEFAULT_ABF_BASE)
        if theta <= 1:
            raise ValueError(f"the RoPE base must be > 1, got {theta}")
        rope = {"rope_type": "default", "rope_theta": theta}
        scaling = None
    changes.update(rope_parameters=rope, rope_theta=theta, rope_scaling=scaling)
    return changes


def granularity(variant: str, base: float, *, factor: float = 1.0) -> float:
    """Appendix B's limit of C_d: (log b + log beta)^-1 for ABF, alpha (log b)^-1 for PI (RoPE: alpha=1)."""
    if variant == "pi":
        return (1.0 / factor) / math.log(base)
    return 1.0 / math.log(base)


def patch_config_file(model_dir: str | Path, changes: dict) -> dict:
    """Write `changes` into model_dir/config.json (None removes a key) and return the new dict."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config
