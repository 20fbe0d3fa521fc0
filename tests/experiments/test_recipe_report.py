"""experiments/recipe_e2e/report.py on small synthetic results/records pairs: the numbers in its tables are the
intervals, paired tests, verdict and power-law fit of those records (not just that it ran); partial results render
as "not run" / "skipped (time)"; bad input is a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.stats import bootstrap_mean, mcnemar, wilson
from tests.experiments.conftest import load_script

REPO = Path(__file__).resolve().parents[2]
A, B, C = "abf+ft-short", "abf+ft(no input loss)", "abf+ft(input loss)"


@pytest.fixture(scope="module")
def report():
    return load_script("experiments/recipe_e2e/report.py", "recipe_report")


def qa(model, task, length, right, n=10, f1=None, ids=None):
    """n records; question k is right (substring 1, F1 given or 1) when k is in `right`."""
    out = []
    for k in range(n):
        hit = k in right
        out.append({"model": model, "task": task, "length": length, "id": (ids or [f"q{i}" for i in range(n)])[k],
                    "scores": {"substring_match": float(hit), "f1": (f1[k] if f1 else float(hit)), "exact_match": 0.0},
                    "error": None, "run": "T"})
    return out


def write(tmp_path: Path, results: dict, records: list[dict]) -> Path:
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def law(c, alpha=200.0, beta=0.7, gamma=2.1):
    return (alpha / c) ** beta + gamma


def partial_run(tmp_path: Path) -> Path:
    """(a), (b), base, ABF; (c) never ran; base's FSR was skipped for time; old-style FSR records (no id)."""
    f1_a = [0.5, 0.2, 0.9, 0, 0, 0, 0, 0, 0, 0]
    records = (qa(A, "ruler-squad", 1024, {0, 1, 2}, f1=f1_a) + qa(A, "ruler-squad", 2048, set())
               + qa(B, "ruler-squad", 1024, set(range(8))) + qa(B, "ruler-squad", 2048, {0})
               + qa("base", "ruler-squad", 1024, {0}) + qa("abf", "ruler-squad", 1024, {0, 1})
               + qa(A, "ruler-squad-gold", 4096, set(range(6))) + qa(B, "ruler-squad-gold", 4096, set(range(5)))
               # (b)'s hotpot asked other questions than (a)'s: that comparison must not be paired
               + qa(A, "ruler-hotpot", 1024, {1}, n=4) + qa(B, "ruler-hotpot", 1024, {1}, n=4, ids=["x", "y", "z", "w"]))
    for model, right in (("abf", {0, 1, 2, 3}), ("base", set())):
        records += [{"model": model, "task": "first-sentence", "length": 1024, "gold": f"s{k}", "answer": "...",
                     "correct": k in right, "run": "B"} for k in range(8)]
    windows = {str(c): [law(c) - 0.01, law(c) + 0.01] for c in (512, 1024, 2048, 4096, 8192)}
    results = {"settings": {"samples": 10, "fsr_samples": 8}, "ended": "complete",
               "models": {"base": {}, "abf": {}, A: {}, B: {}},
               "skipped": [{"model": "base", "task": "ruler-hotpot", "left_s": 5, "estimate_s": 60}],
               "probes": {"base": {"loss": {k: sum(v) / 2 for k, v in windows.items()}, "window_losses": windows},
                          "abf": {"loss": {"1024": 3.0, "2048": 2.9}}}}
    return write(tmp_path, results, records)


def row(md: str, start: str, after: str = "") -> str:
    """The first table line starting with `start` after the heading line containing `after`."""
    text = md[md.index(after):] if after else md
    return next(line for line in text.splitlines() if line.startswith(start))


def test_tables_hold_the_intervals_of_the_records(tmp_path, report):
    out = tmp_path / "out"
    report.write(partial_run(tmp_path), out, resamples=2000, seed=0, fit_resamples=30)
    md = (out / "results.md").read_text()

    # a cell is the mean with its percentile-bootstrap interval (same seed and resamples as stats)
    ci = bootstrap_mean([1.0] * 3 + [0.0] * 7, resamples=2000, seed=0)
    line = row(md, "| (a) ABF + FT-Short only |", "## RULER-style SQuAD, substring match")
    assert f"| 10 | 0.30 [{ci.low:.2f}, {ci.high:.2f}] |" in line
    assert f"0.00 [0.00, {wilson(0, 10).high:.2f}] W |" in line  # 0/10: Wilson, marked
    f1 = bootstrap_mean([0.5, 0.2, 0.9] + [0.0] * 7, resamples=2000, seed=0)
    assert f"0.160 [{f1.low:.3f}, {f1.high:.3f}]" in row(md, "| (a) ABF + FT-Short only |", "## RULER-style SQuAD, F1")
    # partial results: (c) never ran, base's hotpot was skipped for time, ABF has no 2k SQuAD
    assert row(md, "| (c) + long, input loss |", "## RULER-style SQuAD, substring").endswith("| not run | not run |")
    assert "skipped (time)" in row(md, "| base |", "## RULER-style HotpotQA, substring")
    assert row(md, "| ABF |", "## RULER-style SQuAD, substring").endswith("| not run |")
    # run.py's job-level records: a skipped eval job, a cut one
    results = json.loads((tmp_path / "results.json").read_text())
    results["skipped"] = [{"job": "eval-ft-input", "left_s": 20}]
    results["jobs"] = {"eval-abf": {"status": "failed: ValidationError: 1 validation error\n  Value | error"}}
    results["probes"]["probe-ft-short"] = {"loss": None, "fit": None, "status": "failed: TypeError: x"}
    md2 = report.markdown(report.build(results, [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()],
                                       resamples=200), {})
    assert row(md2, "| (c) + long, input loss |", "## RULER-style SQuAD, substring").endswith("| skipped (time) | skipped (time) |")
    # a multi-line status stays on its table row
    assert row(md2, "| ABF |", "## RULER-style SQuAD, substring").endswith(
        "| not run (failed: ValidationError: 1 validation error Value / error) |")
    assert "| (a) ABF + FT-Short only | not run (failed: TypeError: x) | | | | |" in md2
    assert "_held-out factory QA: not run for any model._" in md
    # FSR from old records (`correct`, no id): 4/8 for ABF
    assert row(md, "| ABF |", "## FIRST-SENTENCE").startswith("| ABF | 8 | 0.50 [")
    # short-context check
    assert row(md, "| (b) + long, no input loss |", "## Short-context check").startswith("| (b) + long, no input loss | 10 | 0.50 [")

    # paired: (b) - (a) on SQuAD 1k substring: (b) right on 5 questions (a) missed, never the reverse
    pair = row(md, "| SQuAD 1k substring match |", "**(b) + long, no input loss minus (a)")
    assert "| 10 | 0.300 -> 0.800 | +0.500 [" in pair
    assert f"| {mcnemar(0, 5):.2g} (5 vs 0) |" in pair
    assert "not paired: question sets differ" in row(md, "| HotpotQA 1k substring match |", "**(b) + long, no input loss minus (a)")
    assert "ABF minus base" in md and "| 8 | 0.000 -> 0.500 | +0.500 [" in row(md, "| FIRST-SENTENCE-RETRIEVAL 1k", "**ABF minus base")
    assert "**(c) + long, input loss minus (b) + long, no input loss**: not run ((c) + long, input loss has no records)." in md
    # verdict: (c) is missing and (b)'s Hotpot questions are not (a)'s, so the pooled test refuses to pair
    verdict = row(md, "- **RULER QA, substring match")
    assert "CANNOT BE JUDGED" in verdict and "(a) ABF + FT-Short only: not paired: question sets differ" in verdict
    assert "(c) + long, input loss - (b) + long, no input loss: not run" in verdict

    # Figure 1 fit recovers the law of the probe's losses; ABF has 2 lengths only
    data = json.loads((out / "report.json").read_text())
    fit = data["fits"]["base"]
    assert fit["alpha"] == pytest.approx(200, rel=0.03) and fit["beta"] == pytest.approx(0.7, rel=0.02)
    assert fit["gamma"] == pytest.approx(2.1, abs=0.01) and fit["rms"] < 0.01
    assert fit["alpha_ci"][0] <= fit["alpha"] <= fit["alpha_ci"][1]
    assert f"| base | 512, 1k, 2k, 4k, 8k | {fit['alpha']:.4g} [" in md
    assert "| ABF | 1k, 2k | fewer than 3 lengths |" in md
    cell = next(c for c in data["cells"] if (c["model"], c["task"], c["length"], c["metric"]) == (A, "ruler-squad", 1024, "substring_match"))
    assert (cell["mean"], cell["n"], cell["method"]) == (0.3, 10, "bootstrap")
    for png in ("ruler_qa.png", "first_sentence.png", "short_context.png", "context_scaling.png"):
        assert (out / png).stat().st_size > 5000
    assert not (out / "factory_qa.png").exists()  # nothing to draw


def test_verdict_holds_when_c_beats_b_beats_a_everywhere(tmp_path, report):
    records = []
    for task in ("ruler-squad", "ruler-hotpot"):
        for length in (1024, 2048):
            records += qa(A, task, length, set(), n=30) + qa(B, task, length, set(range(15)), n=30)
            records += qa(C, task, length, set(range(30)), n=30)
    md = report.markdown(report.build({"models": {}}, records, resamples=2000), {})
    verdict = row(md, "- **RULER QA, substring match")
    assert "HOLDS: (c) > (b) > (a)" in verdict and "n = 60 questions" in verdict
    assert "= +0.500 [" in verdict  # (b)-(a) and (c)-(b) are each +0.5
    # the reverse ordering is contradicted, not merely "not shown"
    flipped = [{**r, "model": {A: C, C: A}.get(r["model"], r["model"])} for r in records]
    md = report.markdown(report.build({"models": {}}, flipped, resamples=2000), {})
    assert "CONTRADICTED" in row(md, "- **RULER QA, substring match")
    # no difference: not shown
    same = [{**r, "model": m} for m in (A, B, C) for r in qa("x", "ruler-squad", 1024, {1, 2}, n=30)]
    assert "NOT SHOWN: both intervals include zero" in row(report.markdown(report.build({}, same, resamples=2000), {}),
                                                           "- **RULER QA, F1")
    # (b) > (a) shown, (c) = (b): only the first step
    half = [r for r in records if r["model"] != C] + [{**r, "model": C} for r in records if r["model"] == B]
    assert ("NOT SHOWN: only (b) + long, no input loss > (a) ABF + FT-Short only (interval above zero); the other "
            "interval includes zero") in row(report.markdown(report.build({}, half, resamples=2000), {}), "- **RULER QA, F1")


def test_bad_input_is_a_clear_error(tmp_path, report, capsys):
    assert report.main(["--results", str(tmp_path)]) == 2
    assert "results.json: no such file" in capsys.readouterr().err
    dup = qa(A, "ruler-squad", 1024, {1}, n=3)
    write(tmp_path, {"models": {}}, dup + dup[:1])
    assert report.main(["--results", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "question 'q0' is answered twice" in capsys.readouterr().err


def test_a_later_run_fills_cells_and_its_richer_probes_win(tmp_path, report):
    """--also: the later run's records join (a question answered in both runs is refused), its probes replace the
    first run's only where it used more windows, its check17 shows, and the Runs table says who answered what."""
    (tmp_path / "one").mkdir()
    first = partial_run(tmp_path / "one")
    later = tmp_path / "two"
    later.mkdir()
    windows = {str(c): [law(c, beta=0.5) - 0.01, law(c, beta=0.5) + 0.01, law(c, beta=0.5)] for c in (512, 1024, 2048)}
    write(later, {"settings": {"probe_windows": 3}, "ended": "complete",
                  "training_curves": {"ft-input": [3.0] * 40 + [1.0] * 32},
                  "stages": {"gen-train": {"long_instances": 7}},
                  "probes": {"abf": {"loss": {k: sum(v) / 3 for k, v in windows.items()}, "window_losses": windows}},
                  "check17": {"status": "done", "vllm": "0.20.0", "max_model_len": 32768, "pi": {
                      "config": {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e5, "factor": 4.0}},
                      "prompts": [{"prompt_tokens": 8192, "equal": False, "first_difference_at": 3,
                                   "logprob_abs_diff": {"tokens": 31, "max": 0.05, "mean": 0.01},
                                   "transformers_margin": 0.0123}]}}},
          [{"model": C, "task": "first-sentence", "length": 1024, "scores": {"first_sentence": float(k < 2)}}
           for k in range(4)])
    out = tmp_path / "out"
    report.write(first, out, resamples=500, fit_resamples=0, also=[later])
    md = (out / "results.md").read_text()
    assert row(md, "| (c) + long, input loss |", "## FIRST-SENTENCE").startswith("| (c) + long, input loss | 4 | 0.50 [")
    assert row(md, "| two |", "## Runs").endswith("| 7 | ft-input 1.0000 |")
    assert "FIRST-SENTENCE-RETRIEVAL" in row(md, "| two |", "## Runs")
    assert "Context-scaling probes from run two (3 windows a length)." in md
    assert row(md, "| ABF |", "## Context scaling").startswith("| ABF | 512, 1k, 2k |")  # the later run's lengths
    assert row(md, "| two | pi |", "## Checkpoints").endswith("| 8,192 | no | 3 | 0.012 | 0.050 / 0.010 (31 tokens) |")
    fewer = tmp_path / "three"
    fewer.mkdir()
    write(fewer, {"settings": {"probe_windows": 1}, "probes": {"abf": {"loss": {"1024": 9.0}}}}, [])
    report.write(first, tmp_path / "o3", resamples=200, fit_resamples=0, also=[fewer])
    assert "Context-scaling probes from run" not in (tmp_path / "o3" / "results.md").read_text()
    assert report.main(["--results", str(first), "--also", str(first), "--out", str(tmp_path / "o4")]) == 2


def test_runs_on_the_committed_results(tmp_path, report):
    """The committed H200 runs (experiments/recipe_e2e/results: 200 questions per length, records gzipped; run 1 was
    cut before the finetunes' FSR, results/run2 retrained them and measured it) render with their own numbers."""
    committed = REPO / "experiments/recipe_e2e/results"
    path = report.write(committed, tmp_path, resamples=500, fit_resamples=0,
                        also=[committed / "run2", committed / "run3"])
    md = path.read_text()
    assert row(md, "| ABF |", "## RULER-style HotpotQA, substring").startswith("| ABF | 200 | 0.12 [")
    assert "- `gen-train`: 761 of 5184 pairs accepted (14.7%)" in md
    assert "- `ft-noinput`: 160 steps, 884 rows, 48,454 loss tokens" in md
    assert row(md, "| (b) + long, no input loss |", "## FIRST-SENTENCE").startswith(
        "| (b) + long, no input loss | 100 | 0.06 [")
    assert row(md, "| run2 |", "## Runs").startswith("| run2 | complete | 1,200 |")
    assert row(md, "| run2 | abf+ft(input loss) |", "## Checkpoints").startswith("| run2 | abf+ft(input loss) | default, theta")
    assert "0.098 / 0.036 (31 tokens)" in row(md, "| run3 | pi |", "## Checkpoints")
    assert "CONTRADICTED" in row(md, "- **RULER QA, substring match")
