"""experiments/recipe_e2e/run.py's job graph on a CPU, with real job processes: a job that ends well is kept and not
run again; a failing job is tried MAX_TRIES times and what depends on it is blocked, not run; FT-Short never holds
an evaluated question or a question on an evaluated question's gold paragraph; the merged results.json says all of
it. (The GPU jobs themselves ran on an H200: experiments/recipe_e2e/results.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.experiments.conftest import load_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_module():
    return load_script("experiments/recipe_e2e/run.py", "recipe_run")


def squad(path: Path, paragraphs: int = 30, per_paragraph: int = 2) -> Path:
    pars = [{"context": f"Paragraph {p} says that the value of item {p} is {p * 7}.",
             "qas": [{"id": f"q{p}-{k}", "question": f"What is the value of item {p} (ask {k})?", "is_impossible": False,
                      "answers": [{"text": str(p * 7), "answer_start": 0}]} for k in range(per_paragraph)]}
            for p in range(paragraphs)]
    path.write_text(json.dumps({"data": [{"title": "T", "paragraphs": pars}]}))
    return path


def test_without_flag_drops_the_flag_and_its_value(run_module):
    argv = ["--out", "o", "--time-budget", "5", "--jobs", "a", "--time-budget=7"]
    assert run_module.without_flag(argv, "--time-budget") == ["--out", "o", "--jobs", "a"]


def test_failure_is_retried_then_blocks_its_dependents_and_done_jobs_are_kept(run_module, tmp_path, capsys):
    data = squad(tmp_path / "squad.json")
    (tmp_path / "books").mkdir()
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--model", str(tmp_path / "no-such-model"), "--corpus", str(tmp_path / "books"), "--squad", str(data),
            "--hotpot", str(data), "--scale", "tiny", "--engine", "transformers", "--work", str(work), "--out", str(out),
            "--jobs", "ft-data,abf,ft-short"]
    assert run_module.main(argv) == 1
    results = json.loads((out / "results.json").read_text())
    jobs = results["jobs"]
    assert jobs["ft-data"]["status"] == "done"
    assert jobs["abf"]["status"].startswith("failed:") and jobs["abf"]["tries"] == run_module.MAX_TRIES
    assert "no-such-model" in (work / "jobs" / "abf" / "error.txt").read_text()
    assert jobs["ft-short"]["status"].startswith("blocked: abf failed") and jobs["ft-short"]["tries"] == 0

    ft = results["stages"]["ft-data"]
    assert ft["samples"] == 16 and ft["excluded_eval_questions"] == 4  # --scale tiny: 4 evaluated, 16 FT-Short
    from evaluation.ruler import RulerBuilder, read_squad

    pool = read_squad(data)
    asked = [pool.questions[i] for i in RulerBuilder(pool, None, seed=0).question_order()[:4]]
    asked_paragraphs = {pool.docs[d] for q in asked for d in q["gold"]}
    rows = [json.loads(line) for line in Path(ft["path"]).read_text().splitlines()]
    assert not {r["id"] for r in rows} & {q["id"] for q in asked}
    assert not any(p in r["messages"][0]["content"] for r in rows for p in asked_paragraphs)

    done = (work / "jobs" / "ft-data" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run_module.main(argv + ["--time-budget", "120"]) == 1
    assert "1 already done" in capsys.readouterr().out
    assert (work / "jobs" / "ft-data" / "result.json").stat().st_mtime_ns == done  # not run again
