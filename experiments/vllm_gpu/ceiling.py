"""The factory's ceiling from one run of run.py's `ceiling` step: `longscale generate` vs `vllm bench serve` on the
same server and prompts, alternated (factory i, bench i). Writes a markdown table and a PNG.

Per pair: ratio = factory requests/s / bench requests/s. Summary: the geometric mean of the ratios with a bootstrap
95% interval over pairs (the unit that repeats), the pooled ratio (all requests / all time), and the sign test on
"vLLM had more requests running under the factory than under its own benchmark" (exact binomial). Trade-off: the
server's own speed moves between runs (its inter-token latency is shown per run), which widens the ratio's
interval; the running-requests comparison is within each pair and does not depend on that speed.

    python3 experiments/vllm_gpu/ceiling.py --results benchmarks/results/vllm_gpu_run2.json --png out.png
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from evaluation.stats import bootstrap_mean, mcnemar  # noqa: E402


def pair_rows(ceiling: dict[str, Any]) -> list[dict[str, float]]:
    """One row per alternated pair from the step's `factory` and `bench` lists (run.py's JSON)."""
    rows = []
    for f, b in zip(ceiling["factory"], ceiling["bench"], strict=True):
        rows.append({
            "factory_rps": float(f["requests_per_s"]), "bench_rps": float(b["request_throughput"]),
            "factory_running": float(f["vllm_gauges"]["num_requests_running"]["mean_while_busy"]),
            "bench_running": float(b["vllm_gauges"]["num_requests_running"]["mean_while_busy"]),
            "factory_itl_ms": 1000 * float(f["vllm_metrics"]["mean_inter_token_latency_seconds"]),
            "bench_itl_ms": 1000 * float(b["vllm_metrics"]["mean_inter_token_latency_seconds"]),
            "factory_requests": float(f["requests"]), "bench_requests": float(b["completed"]),
            "bench_s": float(b["duration"]),
        })
    return rows


def summary(rows: list[dict[str, float]], *, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    if len(rows) < 2:
        raise ValueError(f"{len(rows)} pair(s): the ceiling needs at least 2 alternated pairs for an interval")
    logs = [math.log(r["factory_rps"] / r["bench_rps"]) for r in rows]
    boot = bootstrap_mean(logs, resamples=resamples, seed=seed)
    factory_s = sum(r["factory_requests"] / r["factory_rps"] for r in rows)
    pooled = (sum(r["factory_requests"] for r in rows) / factory_s) / (
        sum(r["bench_requests"] for r in rows) / sum(r["bench_s"] for r in rows))
    fuller = sum(r["factory_running"] > r["bench_running"] for r in rows)
    emptier = sum(r["factory_running"] < r["bench_running"] for r in rows)
    return {"pairs": len(rows), "ratios": [round(math.exp(x), 3) for x in logs],
            "geometric_mean": math.exp(boot.mean), "interval": [math.exp(boot.low), math.exp(boot.high)],
            "pooled": pooled, "factory_fuller_pairs": fuller, "bench_fuller_pairs": emptier,
            "sign_test_p": mcnemar(emptier, fuller)}


def markdown(rows: list[dict[str, float]], s: dict[str, Any]) -> str:
    out = ["| pair | factory req/s | bench req/s | ratio | running, factory / bench (mean) | "
           "inter-token latency, factory / bench |", "|---|---|---|---|---|---|"]
    for i, (r, ratio) in enumerate(zip(rows, s["ratios"])):
        out.append(f"| {i + 1} | {r['factory_rps']:.1f} | {r['bench_rps']:.1f} | {ratio:.2f} | "
                   f"{r['factory_running']:.0f} / {r['bench_running']:.0f} | "
                   f"{r['factory_itl_ms']:.1f} / {r['bench_itl_ms']:.1f} ms |")
    lo, hi = s["interval"]
    out += ["", f"Factory / bench over {s['pairs']} pairs: geometric mean **{s['geometric_mean']:.2f} [{lo:.2f}, "
            f"{hi:.2f}]** (bootstrap over pairs, 95%), pooled {s['pooled']:.2f}. vLLM had more requests running under "
            f"the factory in {s['factory_fuller_pairs']} of {s['pairs']} pairs (sign test p {s['sign_test_p']:.3f})."]
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, float]], s: dict[str, Any], path: Path) -> Path:
    from longscale.common.plotting import new_figure, save_figure

    fig, ax = new_figure(f"factory vs vllm bench serve, same server ({s['pairs']} alternated pairs)",
                         "pair", "requests/s")
    xs = list(range(1, len(rows) + 1))
    ax.bar([x - 0.2 for x in xs], [r["factory_rps"] for r in rows], 0.4, label="longscale generate")
    ax.bar([x + 0.2 for x in xs], [r["bench_rps"] for r in rows], 0.4, label="vllm bench serve")
    lo, hi = s["interval"]
    ax.set_xticks(xs)
    ax.legend(title=f"ratio {s['geometric_mean']:.2f} [{lo:.2f}, {hi:.2f}]")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True, help="run.py's vllm_gpu.json")
    ap.add_argument("--png", type=Path)
    args = ap.parse_args(argv)
    ceiling = json.loads(args.results.read_text())["steps"]["ceiling"]
    rows = pair_rows(ceiling)
    s = summary(rows)
    print(markdown(rows, s), end="")
    if args.png:
        print(f"wrote {plot(rows, s, args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
