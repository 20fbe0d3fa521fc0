"""Uncertainty of evaluation scores: intervals of a mean over per-question scores, and paired model comparisons.

- `bootstrap_mean`: percentile bootstrap of the mean (resampling questions). Works for any score (F1, 0/1 match,
  ROUGE); the trade-off: it collapses to a point when every question scored the same (0/20 gives [0, 0]) and runs
  slightly narrow for small n, so for 0/1 scores `wilson` (closed form, honest at 0 and 1) is the cross-check.
- `paired_bootstrap`: two models on the SAME questions, resampling questions and keeping each question's pair
  together, so the between-question spread (most of the variance) cancels. Two-sided p-value from the same
  resamples (twice the smaller share on either side of 0: the inverted percentile interval, so p < 0.05 exactly when
  the 95% interval excludes 0; the trade-off: it inherits the percentile interval's slight narrowness at small n). `mcnemar` is the exact test on 0/1 scores: a two-sided binomial (sign) test on the
  questions where exactly one model was right.
- Scores are paired by question id (`Mapping[id, score]`); differing id sets raise `MisalignedScores` naming the
  ids, never a silent intersection.
Everything is seeded (numpy's default_rng) and vectorised: 10k resamples of 200 questions take milliseconds.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
_CHUNK = 2_000_000  # resample indices drawn per block, to bound memory (16 MB of int64)


class MisalignedScores(ValueError):
    """Two models' scores are not on the same questions (or a question appears twice)."""


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval over `n` questions."""

    mean: float
    low: float
    high: float
    n: int
    level: float
    method: str  # "bootstrap" or "wilson"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """Model b minus model a on the same `n` questions: mean difference, its interval and a two-sided p-value.

    For 0/1 scores `b_only` / `a_only` count the questions only b / only a got right and `mcnemar_p` is the exact
    McNemar (sign) test on them; None for other scores.
    """

    n: int
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    p_value: float
    level: float
    resamples: int
    b_only: int | None = None
    a_only: int | None = None
    mcnemar_p: float | None = None

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _array(scores: Iterable[float]) -> np.ndarray:
    x = np.asarray(list(scores), dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("need at least one score (a flat list of numbers)")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores must be finite numbers (a NaN or inf score is a scoring bug upstream)")
    return x


def is_binary(scores: Iterable[float]) -> bool:
    """True when every score is 0 or 1 (substring match, exact match, FSR)."""
    x = np.asarray(list(scores), dtype=float)
    return bool(x.size) and bool(np.all((x == 0) | (x == 1)))


def _bootstrap_means(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `resamples` resamples (with replacement) of x, drawn in blocks to bound memory."""
    n = x.size
    per_block = max(1, _CHUNK // n)
    out = np.empty(resamples)
    for start in range(0, resamples, per_block):
        stop = min(resamples, start + per_block)
        out[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def bootstrap_mean(scores: Iterable[float], *, level: float = LEVEL, resamples: int = RESAMPLES,
                   seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of per-question scores."""
    _check_level(level)
    x = _array(scores)
    means = _bootstrap_means(x, resamples, np.random.default_rng(seed))
    low, high = _percentiles(means, level)
    return Interval(float(x.mean()), low, high, int(x.size), level, "bootstrap")


def wilson(successes: int, n: int, *, level: float = LEVEL) -> Interval:
    """Wilson score interval of a proportion (closed form; sensible at 0/n and n/n, unlike the bootstrap)."""
    _check_level(level)
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes}/{n}")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # clamped so that low <= p <= high also under rounding (at 0/n the lower bound is 0 up to 1e-17)
    return Interval(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)), n, level, "wilson")


def wilson_of(scores: Iterable[float], *, level: float = LEVEL) -> Interval:
    """Wilson interval of 0/1 scores; raises ValueError for other scores."""
    x = _array(scores)
    if not is_binary(x):
        raise ValueError("the Wilson interval is for 0/1 scores only")
    return wilson(int(x.sum()), int(x.size), level=level)


def align(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, scores of a, scores of b) on the shared question ids, in a fixed order; raises MisalignedScores
    when the id sets differ (a paired test on different questions would compare nothing)."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        def show(ids: list[str]) -> str:
            return ", ".join(ids[:5]) + (f" (+{len(ids) - 5} more)" if len(ids) > 5 else "")

        raise MisalignedScores(f"the two models were not scored on the same questions: {len(only_a)} only in a"
                               f"{' (' + show(only_a) + ')' if only_a else ''}, {len(only_b)} only in b"
                               f"{' (' + show(only_b) + ')' if only_b else ''}")
    if not a:
        raise MisalignedScores("no questions to compare")
    ids = sorted(a)
    return ids, _array(a[i] for i in ids), _array(b[i] for i in ids)


def scores_by_id(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """{id: score} from (id, score) pairs; a repeated id raises MisalignedScores (two answers to one question)."""
    out: dict[str, float] = {}
    for qid, value in pairs:
        if qid in out:
            raise MisalignedScores(f"question {qid!r} is scored twice")
        out[qid] = float(value)
    return out


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: a binomial(a_only + b_only, 1/2) test on the discordant questions."""
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be >= 0")
    m = a_only + b_only
    if m == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], *, level: float = LEVEL,
                     resamples: int = RESAMPLES, seed: int = 0) -> PairedComparison:
    """b - a on the same questions: the mean difference, its percentile-bootstrap interval (questions resampled
    with their pairs), the matching two-sided bootstrap p-value and, for 0/1 scores, the exact McNemar test."""
    _check_level(level)
    _, xa, xb = align(a, b)
    d = xb - xa
    observed = float(d.mean())
    boot = _bootstrap_means(d, resamples, np.random.default_rng(seed))
    low, high = _percentiles(boot, level)
    # two-sided p by inverting the percentile interval: twice the smaller share of resampled differences on
    # either side of 0, so p < 1 - level exactly when the interval excludes 0 (a skewed difference keeps them in step)
    below, above = int(np.sum(boot <= 0)), int(np.sum(boot >= 0))
    p = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    a_only = b_only = None
    p_exact = None
    if is_binary(xa) and is_binary(xb):
        a_only, b_only = int(np.sum((xa == 1) & (xb == 0))), int(np.sum((xa == 0) & (xb == 1)))
        p_exact = mcnemar(a_only, b_only)
    return PairedComparison(int(d.size), float(xa.mean()), float(xb.mean()), observed, low, high, p, level, resamples,
                            b_only, a_only, p_exact)


def mean_over(groups: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per question, the mean of its scores over several groups (e.g. the lengths a question was asked at), for a
    comparison that resamples questions, not (question, length) cells that share a question; the groups must
    hold the same ids."""
    if not groups:
        raise MisalignedScores("no groups to average")
    first = groups[0]
    for g in groups[1:]:
        align(first, g)
    return {qid: float(np.mean([g[qid] for g in groups])) for qid in first}
