"""The recipe experiment's report: results.md tables with a 95% interval in every cell, paired tests between the
paper's Table 8 rows, the Table 8 verdict computed from the numbers, the Figure 1 power-law fits, and PNGs.

Reads results.json and records.jsonl (one line per answer) from --results DIR; any subset of the five models may
be there (a missing model or task is a "not run" cell, one run.py skipped for time a "skipped" cell). Every number
comes from the per-question records through `evaluation.stats`:
- a cell: the mean over its questions with a percentile-bootstrap 95% interval; for 0/1 scores where every question
  scored the same the bootstrap collapses to a point, so such a cell shows the Wilson interval instead (marked W);
- a comparison: model b - model a on the same question ids (paired bootstrap interval and its p; exact McNemar
  for 0/1 scores); a cell whose question sets differ is reported as not paired, never silently intersected;
- the verdict: per question, its score averaged over the lengths both models were asked at, SQuAD and Hotpot
  questions pooled, so the resampled unit is a question (the lengths of one question are not independent).
Trade-off: no correction for the many comparisons (about 1 in 20 null comparisons shows p < 0.05 by chance); the
verdict rests on the pooled tests only, which are few and named in advance.

    python3 experiments/recipe_e2e/report.py --results experiments/recipe_e2e/results [--also RUN_DIR ...] [--out DIR]

--also adds the records of a later run that filled cells the first one lacked (a question answered in two runs is
refused); its context-scaling probes replace the first run's where it used more windows, its check17 is shown, and
a "Runs" section says which run produced which cells (a later run retrains its models: same seeds, not bit-identical).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from evaluation.stats import (  # noqa: E402
    Interval,
    MisalignedScores,
    PairedComparison,
    bootstrap_mean,
    is_binary,
    mean_over,
    paired_bootstrap,
    wilson_of,
)

ROWS = {"base": "base", "abf": "ABF", "abf+ft-short": "(a) ABF + FT-Short only",
        "abf+ft(no input loss)": "(b) + long, no input loss", "abf+ft(input loss)": "(c) + long, input loss"}
A, B, C = "abf+ft-short", "abf+ft(no input loss)", "abf+ft(input loss)"
JOB_KEYS = {"base": "base", "abf": "abf", A: "ft-short", B: "ft-noinput", C: "ft-input"}  # run.py's eval-<key> jobs
PAIRS = [(A, B), (B, C), (A, C), ("base", "abf"), ("base", C)]  # the last: the whole recipe against its start
RULER = {"ruler-squad": "SQuAD", "ruler-hotpot": "HotpotQA"}
GOLD = {"ruler-squad-gold": "SQuAD, gold only", "ruler-hotpot-gold": "HotpotQA, gold only"}
FSR, FACTORY = "first-sentence", "factory-qa"
QA_METRICS = {"substring_match": "substring match", "f1": "F1"}
TASK_NAMES = {**RULER, **GOLD, FSR: "FIRST-SENTENCE-RETRIEVAL", FACTORY: "held-out factory QA"}
FIT_RESAMPLES = 200


class ReportInputError(ValueError):
    """results.json or records.jsonl is missing or not what run.py writes; the message names the file."""


@dataclass
class Cell:
    """One (model, task, length, metric) cell: {id: score} and its interval."""

    scores: dict[str, float]
    interval: Interval
    errors: int = 0

    def text(self, digits: int = 2) -> str:
        i = self.interval
        mark = " W" if i.method == "wilson" else ""
        return f"{i.mean:.{digits}f} [{i.low:.{digits}f}, {i.high:.{digits}f}]{mark}" + (
            f" ({self.errors} err)" if self.errors else "")


@dataclass
class Report:
    results: dict[str, Any]
    cells: dict[tuple[str, str, int, str], Cell] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    resamples: int = 10_000
    seed: int = 0
    fit_resamples: int = FIT_RESAMPLES
    compared: dict[tuple[str, str, str, int, str], PairedComparison | str] = field(default_factory=dict)


def load(results_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """results.json and records.jsonl (or records.jsonl.gz: how a committed run keeps its records small)."""
    rpath, qpath = results_dir / "results.json", results_dir / "records.jsonl"
    if not qpath.is_file() and qpath.with_suffix(".jsonl.gz").is_file():
        qpath = qpath.with_suffix(".jsonl.gz")
    for p in (rpath, qpath):
        if not p.is_file():
            raise ReportInputError(f"{p}: no such file (run.py writes results.json and records.jsonl into --out)")
    try:
        results = json.loads(rpath.read_text())
        text = gzip.decompress(qpath.read_bytes()).decode() if qpath.suffix == ".gz" else qpath.read_text()
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{results_dir}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    return results, records


def load_runs(results_dir: Path, also: Iterable[Path] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The first run's results with the later runs' records appended; results['runs'] lists every run's cells and
    stage losses. Trade-off: a later run's models are retrained (same seeds), so a comparison across runs pairs
    checkpoints of two trainings; the Runs section says so rather than hiding it."""
    results, records = load(results_dir)
    runs = [run_summary(results_dir.name, results, records)]
    checks = [(results_dir.name, results["check17"])] if isinstance(results.get("check17"), dict) else []
    for extra in also:
        more, extra_records = load(extra)
        records = records + extra_records
        runs.append(run_summary(extra.name, more, extra_records))
        if isinstance(more.get("check17"), dict):
            checks.append((extra.name, more["check17"]))
        windows = probe_windows(more)
        if windows > probe_windows(results):
            results = {**results, "probes": more["probes"], "probe_windows": windows, "probes_from": extra.name}
    return {**results, "runs": runs, "check17_runs": checks}, records


def probe_windows(results: dict[str, Any]) -> int:
    """Windows a length behind a run's probes, counted from their per-window losses (1 for a mean alone)."""
    counts = [min((len(w) for w in (p.get("window_losses") or {}).values()), default=1)
              for p in (results.get("probes") or {}).values() if isinstance(p, dict) and p.get("loss")]
    return min(counts, default=0)


def run_summary(label: str, results: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    cells: dict[str, set[str]] = {}
    for r in records:
        cells.setdefault(str(r.get("model")), set()).add(str(r.get("task")))
    stages = {k: float(np.mean(v[-32:])) for k, v in (results.get("training_curves") or {}).items()
              if isinstance(v, list) and v}
    gen = (results.get("stages") or {}).get("gen-train") or {}
    return {"label": label, "ended": results.get("ended"), "records": len(records), "long_instances": gen.get("long_instances"),
            "cells": {m: sorted(t) for m, t in sorted(cells.items())}, "final_losses": stages}


def runs_lines(results: dict[str, Any]) -> list[str]:
    runs = results.get("runs") or []
    if len(runs) < 2:
        return []
    out = ["", "## Runs (each retrains its models from the same seeds; cells say which run answered them)", "",
           "| run | ended | records | models: tasks | long instances (gen-train) | training loss, mean of the last 32 steps |",
           "|---|---|---|---|---|---|"]
    for run in runs:
        cells = "; ".join(f"{name(m)}: {', '.join(TASK_NAMES.get(t, t) for t in ts)}" for m, ts in run["cells"].items())
        losses = ", ".join(f"{k} {v:.4f}" for k, v in run["final_losses"].items()) or "-"
        out.append(f"| {run['label']} | {one_line(run['ended'])} | {run['records']:,} | {cells} | "
                   f"{run.get('long_instances') or '-'} | {losses} |")
    if results.get("probes_from"):
        out += ["", f"Context-scaling probes from run {results['probes_from']} "
                f"({results.get('probe_windows')} windows a length)."]
    return out


def check17_lines(results: dict[str, Any]) -> list[str]:
    """Issue 17's check, from every run that made it: greedy continuations, vLLM (bf16) vs transformers (bf16), of
    checkpoints served unchanged; where they part, transformers' margin; vLLM's log-probabilities of transformers'
    own tokens against transformers' (agreement within bf16 noise with parted tokens = a near-tie)."""
    runs = [(label, c) for label, c in results.get("check17_runs") or [("", results.get("check17"))]
            if isinstance(c, dict) and c.get("status") == "done"]
    if not runs:
        return []
    out = ["", f"## Checkpoints served by vLLM {runs[0][1].get('vllm', '?')} unchanged (max_model_len "
           f"{runs[0][1].get('max_model_len')}): greedy 32 tokens vs transformers, both bf16", "",
           "| run | checkpoint | RoPE | prompt tokens | same greedy tokens | first difference at | margin there (nats) | "
           "log-prob difference on transformers' tokens, max / mean |", "|---|---|---|---|---|---|---|---|"]
    for run, c in runs:
        for label, entry in c.items():
            if not isinstance(entry, dict) or "prompts" not in entry:
                continue
            cfg = entry.get("config") or {}
            rope = cfg.get("rope_parameters") or {}
            rope_text = f"{rope.get('rope_type', '?')}, theta {rope.get('rope_theta', cfg.get('rope_theta'))}" + (
                f", factor {rope['factor']}" if "factor" in rope else "")
            for p in entry["prompts"]:
                margin, diff = p.get("transformers_margin"), p.get("logprob_abs_diff")
                out.append(f"| {run} | {label} | {rope_text} | {p['prompt_tokens']:,} | {'yes' if p['equal'] else 'no'} | "
                           f"{'-' if p['equal'] else p.get('first_difference_at')} | "
                           f"{'-' if margin is None else f'{margin:.3f}'} | "
                           + ("-" if not diff else f"{diff['max']:.3f} / {diff['mean']:.3f} ({diff['tokens']} tokens)")
                           + " |")
    return out


def item_scores(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int, str], dict[str, float]]:
    """{(model, task, length, metric): {question id: score}}. FSR: scores.first_sentence, or `correct` (older
    records), id "fsr:<length>:<k>" when absent (windows are seeded by length, so the k-th is the same window for
    every model). A second answer to one question raises MisalignedScores."""
    out: dict[tuple[str, str, int, str], dict[str, float]] = {}
    fsr_count: dict[tuple[str, int], int] = {}
    for n, r in enumerate(records, 1):
        try:
            model, task, length = r["model"], r["task"], int(r["length"])
        except (KeyError, TypeError, ValueError):
            raise ReportInputError(f"records.jsonl line {n}: needs model, task and length") from None
        if task == FSR:
            k = fsr_count.get((model, length), 0)
            fsr_count[(model, length)] = k + 1
            qid = str(r.get("id") or f"fsr:{length}:{k}")
            value = (r.get("scores") or {}).get("first_sentence", r.get("correct"))
            metrics = {"first_sentence": float(value)} if value is not None else {}
        else:
            qid = str(r.get("id"))
            metrics = {m: float(v) for m, v in (r.get("scores") or {}).items() if m in QA_METRICS}
        if not metrics:
            raise ReportInputError(f"records.jsonl line {n}: no scores for {model} {task} {length}")
        for metric, value in metrics.items():
            cell = out.setdefault((model, task, length, metric), {})
            if qid in cell:
                raise MisalignedScores(f"records.jsonl line {n}: {model} {task} {length} question {qid!r} is "
                                       "answered twice (records of two runs concatenated?)")
            cell[qid] = value
    return out


def interval(scores: dict[str, float], resamples: int, seed: int) -> Interval:
    values = list(scores.values())
    boot = bootstrap_mean(values, resamples=resamples, seed=seed)
    if boot.low == boot.high and is_binary(values):
        return wilson_of(values)
    return boot


def build(results: dict[str, Any], records: list[dict[str, Any]], *, resamples: int = 10_000, seed: int = 0) -> Report:
    report = Report(results, resamples=resamples, seed=seed)
    errors: dict[tuple[str, str, int], int] = {}
    for r in records:
        if r.get("error"):
            where = (r["model"], r["task"], int(r["length"]))
            errors[where] = errors.get(where, 0) + 1
    for key, scores in item_scores(records).items():
        report.cells[key] = Cell(scores, interval(scores, resamples, seed), errors.get(key[:3], 0))
    seen = list(results.get("models", {})) + [k[0] for k in report.cells]
    report.models = list(ROWS) + sorted({m for m in seen if m not in ROWS})
    return report


def lengths_of(report: Report, tasks: Iterable[str]) -> list[int]:
    tasks = set(tasks)
    return sorted({k[2] for k in report.cells if k[1] in tasks})


def missing(report: Report, model: str, task: str) -> str:
    """Why a cell is empty: "skipped (time)" (run.py's `skipped`, per model and task or per eval job), the eval
    job's own status when it did not finish (e.g. "cut (...)", "failed: ..."), else "not run"."""
    job = f"eval-{JOB_KEYS.get(model, model)}"
    for s in report.results.get("skipped", []):
        if (s.get("model") == model and s.get("task") == task) or s.get("job") == job:
            return "skipped (time)"
    status = (report.results.get("jobs", {}).get(job) or {}).get("status")
    return f"not run ({one_line(status)})" if status and status != "done" else "not run"


def one_line(text: object, limit: int = 60) -> str:
    """A status or error as one short table-safe line."""
    flat = " ".join(str(text).split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def k_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def name(model: str) -> str:
    """A row's name; run.py's job names ("probe-abf", a failed job that never learnt its label) map too."""
    label = {key: lab for lab, key in JOB_KEYS.items()}.get(model.removeprefix("probe-"), model)
    return ROWS.get(label, label)


def score_table(report: Report, task: str, metric: str, digits: int = 2) -> list[str]:
    lengths = lengths_of(report, [task])
    if not lengths:
        return [f"_{TASK_NAMES.get(task, task)}: not run for any model._"]
    lines = ["| model | n | " + " | ".join(k_label(n) for n in lengths) + " |", "|---" * (len(lengths) + 2) + "|"]
    for model in report.models:
        cells = [report.cells.get((model, task, n, metric)) for n in lengths]
        ns = sorted({c.interval.n for c in cells if c})
        lines.append(f"| {name(model)} | {'/'.join(map(str, ns)) or '-'} | "
                     + " | ".join(c.text(digits) if c else missing(report, model, task) for c in cells) + " |")
    return lines


def compare(report: Report, a: str, b: str, task: str, length: int, metric: str) -> PairedComparison | str:
    key = (a, b, task, length, metric)
    if key not in report.compared:  # the table and report.json show the same comparisons
        ca, cb = report.cells.get((a, task, length, metric)), report.cells.get((b, task, length, metric))
        if ca is None or cb is None:
            report.compared[key] = "not run"
        else:
            try:
                report.compared[key] = paired_bootstrap(ca.scores, cb.scores, resamples=report.resamples,
                                                        seed=report.seed)
            except MisalignedScores:
                report.compared[key] = "not paired: question sets differ"
    return report.compared[key]


def p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def comparison_row(label: str, res: PairedComparison | str) -> str:
    if isinstance(res, str):
        return f"| {label} | {res} | | | | |"
    mcn = f"{p_text(res.mcnemar_p)} ({res.b_only} vs {res.a_only})" if res.mcnemar_p is not None else "-"
    return (f"| {label} | {res.n} | {res.mean_a:.3f} -> {res.mean_b:.3f} | {res.diff:+.3f} [{res.low:+.3f}, "
            f"{res.high:+.3f}] | {p_text(res.p_value)} | {mcn} |")


def comparison_table(report: Report, a: str, b: str) -> list[str]:
    lines = [f"**{name(b)} minus {name(a)}**", "",
             "| task, length, metric | n | mean a -> b | b - a [95% CI] | p (bootstrap) | p McNemar (b only vs a only right) |",
             "|---|---|---|---|---|---|"]
    for task in (*RULER, FSR, FACTORY, *GOLD):
        metrics = ["first_sentence"] if task == FSR else list(QA_METRICS)
        for length in lengths_of(report, [task]):
            for metric in metrics:
                label = f"{TASK_NAMES[task]} {k_label(length)} {QA_METRICS.get(metric, 'exact match')}"
                lines.append(comparison_row(label, compare(report, a, b, task, length, metric)))
    if all(line.endswith("| not run | | | | |") for line in lines[4:]):
        ran = [m for m in (a, b) if any(k[0] == m for k in report.cells)]
        absent = [name(m) for m in (a, b) if m not in ran]
        return [f"**{name(b)} minus {name(a)}**: not run ({', '.join(absent) or 'no task both ran'} has no records)."]
    return lines


def pooled(report: Report, a: str, b: str, tasks: Iterable[str], metric: str) -> tuple[PairedComparison | str, str]:
    """b - a with each question's score averaged over the lengths both were asked at, the tasks' questions pooled."""
    per: dict[str, dict[str, float]] = {a: {}, b: {}}
    used = []
    for task in tasks:
        lengths = [n for n in lengths_of(report, [task])
                   if (a, task, n, metric) in report.cells and (b, task, n, metric) in report.cells]
        if not lengths:
            continue
        used.append(f"{TASK_NAMES[task]} {'/'.join(k_label(n) for n in lengths)}")
        for model in (a, b):
            try:
                means = mean_over([report.cells[(model, task, n, metric)].scores for n in lengths])
            except MisalignedScores:
                return "not paired: a model's question sets differ between lengths", ", ".join(used)
            per[model].update({f"{task}:{q}": v for q, v in means.items()})
    if not per[a] or not per[b]:
        return "not run", ""
    try:
        return paired_bootstrap(per[a], per[b], resamples=report.resamples, seed=report.seed), ", ".join(used)
    except MisalignedScores:
        return "not paired: question sets differ", ", ".join(used)


def verdict(report: Report, tasks: Iterable[str], metric: str, what: str) -> list[str]:
    """The Table 8 ordering c > b > a, judged on pooled paired differences whose 95% intervals exclude zero."""
    tasks = list(tasks)
    steps = [(A, B), (B, C)]
    found = [(x, y, *pooled(report, x, y, tasks, metric)) for x, y in steps]
    parts: list[str] = []
    signs: list[int | None] = []
    for x, y, res, used in found:
        if isinstance(res, str):
            parts.append(f"{name(y)} - {name(x)}: {res}")
            signs.append(None)
            continue
        parts.append(f"{name(y)} - {name(x)} = {res.diff:+.3f} [{res.low:+.3f}, {res.high:+.3f}], p {p_text(res.p_value)}"
                     f" (n = {res.n} questions; {used})")
        signs.append(1 if res.low > 0 else -1 if res.high < 0 else 0)
    if None in signs:
        outcome = "CANNOT BE JUDGED (a row is missing or unpaired)"
    elif signs == [1, 1]:
        outcome = "HOLDS: (c) > (b) > (a), both intervals exclude zero"
    elif -1 in signs:
        worse = [f"{name(y)} < {name(x)}" for (x, y, _, _), s in zip(found, signs) if s == -1]
        outcome = "CONTRADICTED: " + "; ".join(worse) + " (interval below zero)"
    else:
        shown = [f"{name(y)} > {name(x)}" for (x, y, _, _), s in zip(found, signs) if s == 1]
        outcome = "NOT SHOWN: " + (f"only {shown[0]} (interval above zero); the other interval includes zero" if shown
                                   else "both intervals include zero") + " (no difference detectable at this n)"
    return [f"- **{what}, {QA_METRICS.get(metric, metric)}: {outcome}.** " + "; ".join(parts) + "."]


def probe_points(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{label: context-scaling result} from results['probes'] or models[label]['context_scaling']."""
    found = dict(results.get("probes") or {})
    for label, m in results.get("models", {}).items():
        if isinstance(m, dict) and "context_scaling" in m:
            found.setdefault(label, m["context_scaling"])
    return {k: v for k, v in found.items() if isinstance(v, dict) and v.get("loss")}


def fit_with_interval(probe: dict[str, Any], resamples: int, seed: int) -> dict[str, Any]:
    """L(c) = (alpha/c)^beta + gamma fitted to the mean loss per length (pretrain's fit_power_law); with per-window
    losses, a bootstrap interval over windows (resampled within each length) for alpha, beta, gamma."""
    from pretrain.probes.losses import fit_power_law

    xs = sorted(int(k) for k in probe["loss"])
    if len(xs) < 3:
        return {"lengths": xs, "error": "fewer than 3 lengths"}
    fit = fit_power_law(xs, [probe["loss"][str(x)] for x in xs])
    out: dict[str, Any] = {"lengths": xs, "loss": {str(x): probe["loss"][str(x)] for x in xs}, **fit}
    windows = probe.get("window_losses") or {}
    if resamples > 0 and all(len(windows.get(str(x), [])) >= 2 for x in xs):
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(resamples):
            ys = [float(np.mean(rng.choice(np.asarray(windows[str(x)], dtype=float), len(windows[str(x)]))))
                  for x in xs]
            draws.append(fit_power_law(xs, ys))
        for key in ("alpha", "beta", "gamma"):
            vals = np.array([d[key] for d in draws if math.isfinite(d[key])])
            if vals.size:
                out[f"{key}_ci"] = [float(v) for v in np.percentile(vals, [2.5, 97.5])]
        out["loss_ci"] = {str(x): [float(v) for v in np.percentile(
            [np.mean(rng.choice(np.asarray(windows[str(x)]), len(windows[str(x)]))) for _ in range(1000)],
            [2.5, 97.5])] for x in xs}
        out["fit_resamples"] = resamples
    return out


def fits(report: Report) -> dict[str, dict[str, Any]]:
    return {label: fit_with_interval(p, report.fit_resamples, report.seed) for label, p in probe_points(report.results).items()}


def fit_lines(fitted: dict[str, dict[str, Any]], results: dict[str, Any] | None = None) -> list[str]:
    failed = {label: p.get("status") for label, p in ((results or {}).get("probes") or {}).items()
              if isinstance(p, dict) and not p.get("loss") and label not in fitted}
    if not fitted and not failed:
        return ["_Context-scaling probe: not run (no `probes` in results.json)._"]
    lines = ["| model | lengths | alpha | beta | gamma | RMS |", "|---|---|---|---|---|---|"]
    lines += [f"| {name(label)} | not run ({one_line(status)}) | | | | |" for label, status in failed.items()]
    for label, f in fitted.items():
        if "error" in f:
            lines.append(f"| {name(label)} | {', '.join(map(k_label, f['lengths']))} | {f['error']} | | | |")
            continue

        values = [f"{f[k]:.4g}" + (f" [{f[k + '_ci'][0]:.4g}, {f[k + '_ci'][1]:.4g}]" if k + "_ci" in f else "")
                  for k in ("alpha", "beta", "gamma")]
        lines.append(f"| {name(label)} | {', '.join(map(k_label, f['lengths']))} | " + " | ".join(values)
                     + f" | {f['rms']:.3g} |")
    return lines


def stage_lines(results: dict[str, Any]) -> list[str]:
    """One line per training/generation stage from results.json `stages` (what each had to work with)."""
    lines = []
    for stage, st in (results.get("stages") or {}).items():
        if not isinstance(st, dict):
            continue
        bits = []
        counts = st.get("counts") or {}
        if "qa" in counts:
            rate = counts.get("acceptance_rate")
            bits.append(f"{counts.get('accepted')} of {counts['qa']} pairs accepted"
                        + (f" ({rate:.1%})" if isinstance(rate, (int, float)) else ""))
        reasons = st.get("rejection_reasons")
        if isinstance(reasons, dict) and reasons:
            bits.append("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
        if "long_instances" in st:
            bits.append(f"{st['long_instances']} long instances")
        if "final_loss" in st:
            bits.append(f"{st.get('steps')} steps, final loss {st['final_loss']:.4f}")
        data = st.get("dataset") or {}
        if "loss_tokens" in data:
            bits.append(f"{st.get('steps')} steps, {data.get('rows')} rows, {data['loss_tokens']:,} loss tokens")
        if isinstance(st.get("seconds"), (int, float)):
            bits.append(f"{st['seconds']} s")
        if bits:
            lines.append(f"- `{stage}`: " + "; ".join(bits))
    return lines or ["- (no stages recorded)"]


def markdown(report: Report, fitted: dict[str, dict[str, Any]]) -> str:
    r = report.results
    s = r.get("settings", {})
    out = ["# Recipe end to end: base, ABF and the Table 8 finetunes, with 95% intervals", "",
           f"Written by `report.py` from `results.json` + `records.jsonl` (run ended: {r.get('ended', '?')}; "
           f"settings: {s.get('samples', '?')} RULER questions per length, {s.get('fsr_samples', '?')} FSR windows "
           f"per length). Every cell: mean [95% interval] over its questions; percentile bootstrap "
           f"({report.resamples:,} resamples, seed {report.seed}); **W** = every question scored the same, so the "
           "bootstrap is a point and the Wilson interval is shown. n = questions per cell. \"not run\" = no records.",
           "", "## Table 8 verdict (computed)", "",
           "Paired over the same questions, each question's score averaged over its lengths; SQuAD and HotpotQA "
           "questions pooled. The ordering holds only if both differences have intervals above zero.", ""]
    out += verdict(report, RULER, "substring_match", "RULER QA")
    out += verdict(report, RULER, "f1", "RULER QA")
    if lengths_of(report, [FACTORY]):
        out += verdict(report, [FACTORY], "f1", "held-out factory QA")
    for task, title in RULER.items():
        for metric, mname in QA_METRICS.items():
            out += ["", f"## RULER-style {title}, {mname}", ""] + score_table(report, task, metric,
                                                                              3 if metric == "f1" else 2)
    out += ["", "## FIRST-SENTENCE-RETRIEVAL (exact match)", ""] + score_table(report, FSR, "first_sentence")
    out += ["", "## Held-out factory QA (questions the factory wrote from held-out books)", ""]
    for metric, mname in QA_METRICS.items():
        out += [f"{mname}:", ""] + score_table(report, FACTORY, metric, 3 if metric == "f1" else 2) + [""]
    out += ["## Short-context check (the same RULER questions, only their gold paragraph)", ""]
    for task, title in GOLD.items():
        for metric, mname in QA_METRICS.items():
            out += [f"{title}, {mname}:", ""] + score_table(report, task, metric, 3 if metric == "f1" else 2) + [""]
    out += ["## Paired comparisons (same question ids; b - a)", "",
            "Per cell: paired bootstrap of the mean difference with its 95% interval and two-sided p; for 0/1 scores "
            "also the exact McNemar test with the counts of questions only b / only a got right: with few discordant "
            "questions the bootstrap p runs small (5 vs 0 gives a bootstrap p near 0.006, McNemar 0.062), so for 0/1 "
            "scores trust McNemar. Many cells are tested: expect about 1 in 20 p < 0.05 by chance where nothing "
            "differs.", ""]
    for a, b in PAIRS:
        out += comparison_table(report, a, b) + [""]
    out += ["## Context scaling (Figure 1): L(c) = (alpha/c)^beta + gamma", ""]
    out += fit_lines(fitted, r)
    out += ["", "## Stages (from results.json)", ""] + stage_lines(r)
    out += runs_lines(r) + check17_lines(r)
    out += ["", "Figures: `ruler_qa.png`, `first_sentence.png`, `factory_qa.png`, `short_context.png`, "
            "`context_scaling.png` (error bars = the 95% intervals above)."]
    return "\n".join(out) + "\n"


def error_bars(cells: list[Cell]) -> list[list[float]]:
    """Matplotlib's [below, above] distances from each mean to its interval's ends."""
    return [[max(0.0, c.interval.mean - c.interval.low) for c in cells],
            [max(0.0, c.interval.high - c.interval.mean) for c in cells]]


def _errorbar(ax: Any, xs: list[float], cells: list[Cell], **kw: Any) -> None:
    means = [c.interval.mean for c in cells]
    err = error_bars(cells)
    ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, **kw)


def plot_by_length(report: Report, tasks: list[str], metrics: list[str], path: Path, title: str) -> Path | None:
    from longscale.common.plotting import new_figure, save_figure

    if not lengths_of(report, tasks):
        return None
    fig, ax0 = new_figure(title, "context length (tokens)", "score", size=(5.5 * len(metrics), 3.8 * len(tasks)))
    fig.delaxes(ax0)
    axes = fig.subplots(len(tasks), len(metrics), squeeze=False)
    for i, task in enumerate(tasks):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for k, model in enumerate(report.models):
                pts = [(n, report.cells[(model, task, n, metric)]) for n in lengths_of(report, [task])
                       if (model, task, n, metric) in report.cells]
                if pts:  # a small offset per model keeps the bars apart
                    _errorbar(ax, [n * 2 ** ((k - 2) * 0.04) for n, _ in pts], [c for _, c in pts], label=name(model))
            ax.set_xscale("log", base=2), ax.set_ylim(-0.03, 1.03), ax.grid(alpha=0.3)
            ticks = lengths_of(report, [task])
            ax.set_xticks(ticks, [k_label(n) for n in ticks]), ax.set_xlabel("context length (tokens)", fontsize=8)
            ax.set_title(f"{TASK_NAMES[task]}: {QA_METRICS.get(metric, 'exact match')}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_bars(report: Report, tasks: list[str], metric: str, path: Path, title: str) -> Path | None:
    from longscale.common.plotting import new_figure, save_figure

    groups = [(t, n) for t in tasks for n in lengths_of(report, [t])]
    if not groups:
        return None
    fig, ax = new_figure(title, "", QA_METRICS[metric], size=(7, 4))
    width = 0.8 / len(report.models)
    for k, model in enumerate(report.models):
        pts = [(g, report.cells[(model, t, n, metric)]) for g, (t, n) in enumerate(groups)
               if (model, t, n, metric) in report.cells]
        if pts:
            cells = [c for _, c in pts]
            means = [c.interval.mean for c in cells]
            err = error_bars(cells)
            ax.bar([g + (k - len(report.models) / 2 + 0.5) * width for g, _ in pts], means, width, yerr=err, capsize=3,
                   label=name(model))
    ax.set_xticks(range(len(groups)), [f"{TASK_NAMES[t]} {k_label(n)}" for t, n in groups], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_fits(fitted: dict[str, dict[str, Any]], path: Path) -> Path | None:
    from longscale.common.plotting import new_figure, save_figure

    good = {k: f for k, f in fitted.items() if "error" not in f}
    if not good:
        return None
    fig, ax = new_figure("validation loss vs context length (Figure 1 fit)", "context length (tokens)", "loss")
    for label, f in good.items():
        xs = f["lengths"]
        ys = [f["loss"][str(x)] for x in xs]
        ci = f.get("loss_ci")
        yerr = [[y - ci[str(x)][0] for x, y in zip(xs, ys)], [ci[str(x)][1] - y for x, y in zip(xs, ys)]] if ci else None
        line = ax.errorbar(xs, ys, yerr=yerr, fmt="o", capsize=3, label=name(label))
        if math.isfinite(f["alpha"]):
            grid = np.geomspace(xs[0], xs[-1], 100)
            ax.plot(grid, (f["alpha"] / grid) ** f["beta"] + f["gamma"], "-", color=line[0].get_color(),
                    label=f"({f['alpha']:.3g}/c)^{f['beta']:.3g} + {f['gamma']:.3g}")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def as_json(report: Report, fitted: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cells = [{"model": m, "task": t, "length": n, "metric": k, "errors": c.errors, **c.interval.to_dict()}
             for (m, t, n, k), c in sorted(report.cells.items(), key=str)]
    pairs = []
    for a, b in PAIRS:
        for task in (*RULER, FSR, FACTORY, *GOLD):
            for n in lengths_of(report, [task]):
                for metric in (["first_sentence"] if task == FSR else list(QA_METRICS)):
                    res = compare(report, a, b, task, n, metric)
                    pairs.append({"a": a, "b": b, "task": task, "length": n, "metric": metric,
                                  **(res.to_dict() if isinstance(res, PairedComparison) else {"status": res})})
    return {"resamples": report.resamples, "seed": report.seed, "cells": cells, "pairs": pairs, "fits": fitted}


def write(results_dir: Path, out: Path | None = None, *, resamples: int = 10_000, seed: int = 0,
          fit_resamples: int = FIT_RESAMPLES, also: Iterable[Path] = ()) -> Path:
    out = out or results_dir
    out.mkdir(parents=True, exist_ok=True)
    results, records = load_runs(results_dir, also)
    report = build(results, records, resamples=resamples, seed=seed)
    report.fit_resamples = fit_resamples
    fitted = fits(report)
    (out / "results.md").write_text(markdown(report, fitted))
    (out / "report.json").write_text(json.dumps(as_json(report, fitted), indent=1))
    plot_by_length(report, list(RULER), list(QA_METRICS), out / "ruler_qa.png", "RULER-style QA (95% intervals)")
    plot_by_length(report, [FSR], ["first_sentence"], out / "first_sentence.png", "FIRST-SENTENCE-RETRIEVAL")
    plot_bars(report, list(GOLD), "substring_match", out / "short_context.png",
              "short-context check: gold paragraph only (95% intervals)")
    plot_bars(report, [FACTORY], "f1", out / "factory_qa.png", "held-out factory QA (95% intervals)")
    plot_fits(fitted, out / "context_scaling.png")
    return out / "results.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, type=Path, help="folder with results.json and records.jsonl")
    ap.add_argument("--also", type=Path, action="append", default=[], metavar="RUN_DIR",
                    help="a later run's folder (results.json + records.jsonl[.gz]) whose cells are added")
    ap.add_argument("--out", type=Path, help="where results.md, report.json and the PNGs go (default: --results)")
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-resamples", type=int, default=FIT_RESAMPLES, help="bootstrap refits of the power law")
    args = ap.parse_args(argv)
    try:
        path = write(args.results, args.out, resamples=args.resamples, seed=args.seed,
                     fit_resamples=args.fit_resamples, also=args.also)
    except (ReportInputError, MisalignedScores) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
