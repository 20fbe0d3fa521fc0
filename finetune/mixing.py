"""Mixing by ratio: downsample (seeded, never repeat) so that long / pretrain data make up the asked share.

Ratios are shares of the final mix counted in samples or tokens. With no ratio given everything is used.
Only downsampling: the kind in excess is cut, never upsampled, so no sample is seen twice per epoch.
"""
from __future__ import annotations

import random

from finetune.tokenization import Sample
from longscale.common.errors import ConfigError


def _amount(samples: list[Sample], by: str) -> int:
    return len(samples) if by == "samples" else sum(len(s) for s in samples)


def mix(by_kind: dict[str, list[Sample]], *, long_ratio: float | None, pretrain_ratio: float | None,
        by: str, seed: int) -> tuple[dict[str, list[Sample]], dict[str, int]]:
    """Return the kept samples per kind and how many of each were left out."""
    if long_ratio is None and pretrain_ratio is None:
        return by_kind, {k: 0 for k in by_kind}
    ratios = {"long": long_ratio, "pretrain": pretrain_ratio}
    for kind, ratio in ratios.items():
        if ratio is None and by_kind.get(kind):
            other = "long" if kind == "pretrain" else "pretrain"
            raise ConfigError(f"--{other}-ratio is given but {kind} data has no --{kind}-ratio; give both")
    shares = {"long": long_ratio or 0.0, "pretrain": pretrain_ratio or 0.0}
    shares["short"] = 1.0 - shares["long"] - shares["pretrain"]
    for kind, share in shares.items():
        if share > 0 and not by_kind.get(kind):
            raise ConfigError(f"the mix asks for a {share:.0%} share of {kind} data, but none was given")
    available = {k: _amount(by_kind.get(k, []), by) for k in shares}
    total = min(available[k] / s for k, s in shares.items() if s > 0)
    rng = random.Random(seed)
    kept, dropped = {}, {}
    for kind, samples in by_kind.items():
        budget = shares[kind] * total
        order = samples[:]
        rng.shuffle(order)
        chosen, used = [], 0
        for sample in order:
            size = 1 if by == "samples" else len(sample)
            if used + size > budget + 1e-9:
                continue  # by tokens: a smaller sample may still fit
            chosen.append(sample)
            used += size
        kept[kind], dropped[kind] = chosen, len(samples) - len(chosen)
    return kept, dropped
