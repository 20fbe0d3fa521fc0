"""experiments/vllm_gpu/ceiling.py on a synthetic `ceiling` step: the ratio summary is the numbers' own (geometric
mean, pooled, sign test), and fewer than two pairs is refused."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.experiments.conftest import load_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ceiling():
    return load_script("experiments/vllm_gpu/ceiling.py", "vllm_ceiling")


def step(factory_rps, bench_rps, factory_running, bench_running, n=100):
    gauges = lambda running: {"num_requests_running": {"mean_while_busy": running}}  # noqa: E731
    metrics = {"mean_inter_token_latency_seconds": 0.02}
    return {"factory": [{"requests_per_s": r, "requests": n, "vllm_gauges": gauges(u), "vllm_metrics": metrics}
                        for r, u in zip(factory_rps, factory_running)],
            "bench": [{"request_throughput": r, "completed": n, "duration": n / r, "vllm_gauges": gauges(u),
                       "vllm_metrics": metrics} for r, u in zip(bench_rps, bench_running)]}


def test_summary_is_the_pairs_own_numbers(ceiling, tmp_path):
    s = step([100, 50, 90], [50, 100, 90], [200, 190, 150], [150, 150, 160])
    rows = ceiling.pair_rows(s)
    out = ceiling.summary(rows, resamples=2000)
    assert out["ratios"] == [2.0, 0.5, 1.0]
    assert out["geometric_mean"] == pytest.approx(1.0)  # exp(mean(log 2, log 0.5, log 1))
    low, high = out["interval"]
    assert low < 1.0 < high
    pooled = (300 / (1 + 2 + 100 / 90)) / (300 / (2 + 1 + 100 / 90))
    assert out["pooled"] == pytest.approx(pooled)
    assert (out["factory_fuller_pairs"], out["bench_fuller_pairs"]) == (2, 1)
    assert out["sign_test_p"] == pytest.approx(1.0)
    md = ceiling.markdown(rows, out)
    assert "| 2 | 50.0 | 100.0 | 0.50 | 190 / 150 | 20.0 / 20.0 ms |" in md
    assert "more requests running under the factory in 2 of 3 pairs" in md
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"steps": {"ceiling": s}}))
    assert ceiling.main(["--results", str(path), "--png", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0


def test_all_pairs_fuller_under_the_factory_is_significant_at_six(ceiling):
    out = ceiling.summary(ceiling.pair_rows(step([1] * 6, [1] * 6, [2] * 6, [1] * 6)), resamples=200)
    assert out["sign_test_p"] == pytest.approx(2 / 2 ** 6)
    assert math.isclose(out["geometric_mean"], 1.0)


def test_one_pair_gives_no_interval(ceiling):
    with pytest.raises(ValueError, match="at least 2 alternated pairs"):
        ceiling.summary(ceiling.pair_rows(step([1], [1], [1], [1])))
