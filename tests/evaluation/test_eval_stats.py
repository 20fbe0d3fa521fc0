"""evaluation.stats: closed-form cases, interval coverage on simulated data, pairing, misaligned ids."""
from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.stats import (
    MisalignedScores,
    bootstrap_mean,
    is_binary,
    mcnemar,
    mean_over,
    paired_bootstrap,
    scores_by_id,
    wilson,
    wilson_of,
)


def ids(values) -> dict[str, float]:
    return {f"q{i:04d}": float(v) for i, v in enumerate(values)}


# --- closed forms -------------------------------------------------------------------------------------------

def test_wilson_known_values():
    half = wilson(5, 10)  # textbook: 5/10 -> [0.2366, 0.7634]
    assert (round(half.low, 4), round(half.high, 4)) == (0.2366, 0.7634)
    zero = wilson(0, 20)  # upper bound z^2 / (n + z^2)
    z2 = 1.959963984540054 ** 2
    assert zero.low == 0.0 and math.isclose(zero.high, z2 / (20 + z2), rel_tol=1e-9)
    assert wilson(20, 20).high == 1.0 and math.isclose(wilson(20, 20).low, 1 - zero.high, rel_tol=1e-9)
    assert wilson(5, 10, level=0.99).high > half.high  # a higher level is wider


def test_mcnemar_exact_binomial_values():
    assert mcnemar(0, 6) == pytest.approx(2 * 0.5 ** 6)  # 0.03125
    assert mcnemar(1, 9) == pytest.approx(2 * (1 + 10) / 1024)  # 0.0215
    assert mcnemar(9, 1) == mcnemar(1, 9)  # two-sided, symmetric
    assert mcnemar(5, 5) == 1.0 and mcnemar(0, 0) == 1.0
    assert mcnemar(0, 5) > 0.05  # 5 discordant questions cannot reach 0.05 (2/32 = 0.0625)


def test_bootstrap_constant_and_large_sample_normal_agreement():
    const = bootstrap_mean([0.3] * 25)
    assert (const.mean, const.low, const.high) == (0.3, 0.3, 0.3)
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 0.2, size=2000)
    boot = bootstrap_mean(x, seed=2)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert boot.low == pytest.approx(x.mean() - 1.96 * se, abs=0.15 * se)
    assert boot.high == pytest.approx(x.mean() + 1.96 * se, abs=0.15 * se)


def test_bootstrap_and_wilson_agree_on_binary_scores_away_from_the_edges():
    scores = [1.0] * 100 + [0.0] * 100
    boot, wil = bootstrap_mean(scores, seed=3), wilson_of(scores)
    assert boot.mean == wil.mean == 0.5
    assert abs(boot.low - wil.low) < 0.01 and abs(boot.high - wil.high) < 0.01


def test_seeded_and_input_checks():
    x = np.random.default_rng(0).random(50)
    assert bootstrap_mean(x, seed=7) == bootstrap_mean(x, seed=7)
    assert bootstrap_mean(x, seed=7).low != bootstrap_mean(x, seed=8).low
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean([0.1, float("nan")])
    with pytest.raises(ValueError, match="0/1"):
        wilson_of([0.5, 1.0])
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean([1.0], level=95)
    assert is_binary([0, 1, 1.0]) and not is_binary([0, 0.5])


# --- coverage on simulated data (seeded, so deterministic; the bands are ~2.5 binomial sd of 300 trials) --------

def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(11)
    covered = 0
    for t in range(300):
        sample = rng.gamma(2.0, 0.1, size=60)  # skewed, true mean 0.2 (like F1 scores)
        ci = bootstrap_mean(sample, resamples=2000, seed=t)
        covered += ci.low <= 0.2 <= ci.high
    assert 0.91 <= covered / 300 <= 0.98, covered


def test_wilson_interval_covers_the_true_proportion_about_95_percent():
    rng = np.random.default_rng(12)
    covered = 0
    for _ in range(400):
        k = int(rng.binomial(40, 0.2))
        ci = wilson(k, 40)
        covered += ci.low <= 0.2 <= ci.high
    assert 0.92 <= covered / 400 <= 0.985, covered


def test_paired_p_value_is_calibrated_under_no_difference():
    rng = np.random.default_rng(13)
    rejected = 0
    for t in range(300):
        base = rng.random(50)
        a, b = ids(base + rng.normal(0, 0.1, 50)), ids(base + rng.normal(0, 0.1, 50))  # same true mean
        rejected += paired_bootstrap(a, b, resamples=2000, seed=t).p_value < 0.05
    assert 0.02 <= rejected / 300 <= 0.09, rejected


# --- pairing matters ------------------------------------------------------------------------------------------

def test_pairing_detects_a_difference_the_unpaired_comparison_misses():
    rng = np.random.default_rng(5)
    difficulty = rng.random(80)  # questions differ a lot; b is a little better on each
    a = difficulty + rng.normal(0, 0.02, 80)
    b = difficulty + 0.03 + rng.normal(0, 0.02, 80)
    paired = paired_bootstrap(ids(a), ids(b), seed=1)
    assert paired.diff == pytest.approx(float(np.mean(b - a)))
    assert paired.low > 0 and paired.p_value < 0.001 and paired.excludes_zero()
    # the p-value and the interval agree: p < 0.05 exactly when the 95% interval excludes 0
    rng2 = np.random.default_rng(9)
    for t in range(40):
        x, y = rng2.random(25), rng2.random(25) + rng2.uniform(-0.2, 0.3)
        res = paired_bootstrap(ids(x), ids(y), resamples=4000, seed=t)
        assert (res.p_value < 0.05) == res.excludes_zero(), res
    # unpaired: the two means' own intervals overlap and a Welch interval of the difference spans 0
    unpaired_se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert paired.diff - 1.96 * unpaired_se < 0
    ci_a, ci_b = bootstrap_mean(a), bootstrap_mean(b)
    assert ci_b.low < ci_a.high


def test_paired_binary_scores_get_mcnemar_and_shuffled_pairs_lose_it():
    # b right on 12 questions a missed, a right on 1 b missed, 40 both right, 47 both wrong
    a = [1] * 1 + [0] * 12 + [1] * 40 + [0] * 47
    b = [0] * 1 + [1] * 12 + [1] * 40 + [0] * 47
    res = paired_bootstrap(ids(a), ids(b), seed=2)
    assert (res.b_only, res.a_only) == (12, 1)
    assert res.mcnemar_p == pytest.approx(mcnemar(1, 12)) and res.mcnemar_p < 0.01
    assert res.diff == pytest.approx(0.11) and res.p_value < 0.01
    continuous = paired_bootstrap(ids([0.5] * 10), ids([0.7] * 10))
    assert continuous.mcnemar_p is None and continuous.b_only is None


def test_identical_models_give_zero_difference_and_p_one():
    x = ids(np.random.default_rng(3).random(30))
    res = paired_bootstrap(x, x)
    assert res.diff == 0 and res.low == 0 and res.high == 0 and res.p_value == 1.0


# --- alignment ------------------------------------------------------------------------------------------------

def test_misaligned_question_ids_raise_a_clear_error():
    a = {"q1": 1.0, "q2": 0.0, "q3": 1.0}
    b = {"q1": 1.0, "q2": 1.0, "q9": 0.0}
    with pytest.raises(MisalignedScores, match=r"1 only in a \(q3\), 1 only in b \(q9\)"):
        paired_bootstrap(a, b)
    with pytest.raises(MisalignedScores, match="scored twice"):
        scores_by_id([("q1", 1.0), ("q1", 0.0)])
    with pytest.raises(MisalignedScores):
        mean_over([a, b])


def test_pairing_follows_ids_not_order():
    a = {"x": 0.0, "y": 1.0, "z": 0.5}
    b = {"z": 0.5, "y": 1.0, "x": 0.0}  # same scores, other order
    assert paired_bootstrap(a, b).diff == 0
    assert mean_over([{"x": 0.0, "y": 1.0}, {"y": 0.0, "x": 1.0}]) == {"x": 0.5, "y": 0.5}
