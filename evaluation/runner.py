"""run_eval(config): build the prompts per length, generate through a datafactory engine, score, and write
results.json, results.md, records.jsonl and score_by_length.png into the output folder.

Scoring: every metric reads the whole answer, as each benchmark's own script does (`metrics.py`); with
`answer_scope: first_line` F1 and exact match read its first non-empty line instead (the paper's rule, for
models that keep talking after a short answer). A length's score is `metrics.aggregate` of its items (for
ROUGE the geometric mean of the averaged R1/R2/RL). A failed request (engine error) scores 0 and is counted;
a prompt that cannot fit a length is skipped and counted. Records are written as each length finishes, so an interrupted run keeps them.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from evaluation.config import EvalConfig
from evaluation.metrics import aggregate, score_prediction, scoring_name
from evaluation.prompts import Example, PromptTooLong, fit_prompt
from evaluation.ruler import GoldOnlyBuilder, RulerBuilder, read_essays, read_hotpot, read_squad
from evaluation.tasks import ACCENT_FOLDING_TASKS, FILE_LOADERS, TaskDataError, task_metric
from longscale.common.models import model_label
from longscale.common.progress import progress as progress_bar
from longscale.common.tokenizers import load_tokenizer

SHOT_CONTEXT_TOKENS = 200


def eval_tokenizer(config: EvalConfig):
    name, flag = config.tokenizer, "--tokenizer"
    if not name:
        name, flag = config.model, "--model (give --tokenizer)"
    if not name:
        from datafactory.embedded import ensure_embedded_model

        name, flag = str(ensure_embedded_model()), "(embedded model)"
    return load_tokenizer(name, flag=flag, error=TaskDataError)


def first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def score(example: Example, metric: str, answer: str, fold_accents: bool = False,
          answer_scope: str = "whole") -> dict[str, float]:
    """The item's scores on the whole answer; with answer_scope "first_line", F1 and exact match on its first
    non-empty line."""
    scores = score_prediction(metric, answer, example.answers, example.options, example.gold_index, fold_accents)
    if answer_scope == "first_line" and "f1" in scores:
        line = score_prediction("f1", first_line(answer), example.answers, fold_accents=fold_accents)
        scores.update(f1=line["f1"], exact_match=line["exact_match"])
    return scores


def prompts_for_length(config: EvalConfig, tokenizer, length: int, ruler: RulerBuilder | None,
                       examples: list[Example], shots: list[Example]) -> tuple[list[tuple[Example, list, dict]], int]:
    """(example, messages, info) for one length, and how many examples did not fit."""
    budget = length - config.max_new_tokens
    if ruler is not None:
        built = ruler.build(length, config.num_samples, max_new_tokens=config.max_new_tokens, depths=config.depths)
        return [(ex, fit_prompt(ex, tokenizer, budget, config.prompt_style)[0], dict(ex.meta)) for ex in built], 0
    out, skipped = [], 0
    for ex in examples:
        try:
            messages, info = fit_prompt(ex, tokenizer, budget, config.prompt_style, shots)
        except PromptTooLong:
            skipped += 1
            continue
        out.append((ex, messages, info))
    return out, skipped


def equal_length_batches(items: list[tuple[Example, list, dict]], batch_size: int) -> list[list[int]]:
    """Indices in batches of prompts with the same token count where possible: a batch that needs no padding
    needs no attention mask, so SDPA stays on its flash kernel (RULER prompts are built to the exact length)."""
    groups: dict[Any, list[int]] = {}
    for i, (_, _, info) in enumerate(items):
        groups.setdefault(info.get("prompt_tokens"), []).append(i)
    batches = [idx[s:s + batch_size] for idx in groups.values() if len(idx) > 1 for s in range(0, len(idx), batch_size)]
    singles = sorted((idx[0] for idx in groups.values() if len(idx) == 1),
                     key=lambda i: items[i][2].get("prompt_tokens") or 0)  # the rest: padded, neighbours by length
    return batches + [singles[s:s + batch_size] for s in range(0, len(singles), batch_size)]


def _shots(examples: list[Example], tokenizer, n: int) -> list[Example]:
    cut = []
    for ex in examples[:n]:
        ids = tokenizer(ex.context, add_special_tokens=False)["input_ids"]
        cut.append(Example(ex.id, tokenizer.decode(ids[-SHOT_CONTEXT_TOKENS:]), ex.question, ex.answers, ex.metric,
                           ex.options, ex.gold_index))
    return cut


def load_examples(config: EvalConfig, tokenizer, ruler: RulerBuilder | None = None
                  ) -> tuple[RulerBuilder | None, list[Example], list[Example], int]:
    if ruler is not None:
        return ruler, [], [], 0
    data = config.data
    assert data is not None  # EvalConfig requires --data
    if config.task.startswith("ruler"):
        pool = read_squad(data) if config.task.startswith("ruler-squad") else read_hotpot(data)
        essays = read_essays(config.essays) if config.essays else None
        builder = GoldOnlyBuilder if config.task.endswith("-gold") else RulerBuilder
        return builder(pool, tokenizer, filler=config.filler, essays=essays, style=config.prompt_style,
                       seed=config.seed), [], [], 0
    examples, skipped = FILE_LOADERS[config.task](data)
    if not examples:
        raise TaskDataError(f"{config.data}: no {config.task} examples with gold answers ({skipped} without)")
    shots = _shots(examples, tokenizer, config.few_shot)
    rest = examples[config.few_shot:]
    random.Random(config.seed).shuffle(rest)
    return None, rest[:config.num_samples], shots, skipped


def run_eval(config: EvalConfig, engine: Any = None, tokenizer: Any = None, progress: bool = True,
             ruler: RulerBuilder | None = None) -> dict[str, Any]:
    """Evaluate one model on one task at every length. `engine`, `tokenizer` and a RULER builder (whose built
    haystacks are cached) may be passed in to share them across calls; otherwise they are built from `config`."""
    from datafactory.engines import build_engine, generate_sync, sampling_params_from_config

    out = Path(config.output)
    if out.exists() and not out.is_dir():
        raise TaskDataError(f"--output {out} is a file, not a folder: choose a folder path")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or eval_tokenizer(config)
    metric = config.metric or task_metric(config.task, config.data)
    fold = config.task in ACCENT_FOLDING_TASKS
    ruler, examples, shots, no_gold = load_examples(config, tokenizer, ruler)
    own_engine = engine is None
    engine = engine or build_engine(config)
    label = config.label or model_label(config.model or "SmolLM2-135M-Instruct")
    params = sampling_params_from_config(config)
    scoring = scoring_name(metric, fold) + (", first line" if config.answer_scope == "first_line" else "")
    result: dict[str, Any] = {"task": config.task, "model": label, "metric": metric, "scoring": scoring,
                              "config": config.model_dump(mode="json", exclude={"api_key"}),
                              "skipped_without_gold": no_gold, "by_length": {}}
    records_path = out / "records.jsonl"
    records_path.write_text("")
    t0 = time.perf_counter()
    try:
        for length in config.lengths:
            items, too_long = prompts_for_length(config, tokenizer, length, ruler, examples, shots)
            answers: list[Any] = [None] * len(items)
            with progress_bar(total=len(items), desc=f"{config.task} {label} @{length}", unit="q", disable=not progress) as bar:
                for batch in equal_length_batches(items, config.batch_size):
                    for i, res in zip(batch, generate_sync(engine, [items[i][1] for i in batch], params), strict=True):
                        answers[i] = res
                    bar.update(len(batch))
            rows, errors = [], 0
            for (ex, _, info), res in zip(items, answers, strict=True):
                text = res.text if res.ok else ""
                errors += not res.ok
                rows.append({"length": length, "id": ex.id, "question": ex.question, "answers": ex.answers,
                             "prediction": text, "error": res.error, "scores": score(ex, metric, text, fold, config.answer_scope), **info})
            with records_path.open("a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
            means = aggregate([r["scores"] for r in rows])
            fed = [r["prompt_tokens"] for r in rows if r.get("prompt_tokens") is not None]
            result["by_length"][str(length)] = {
                "n": len(rows), "score": means.get(metric), "scores": means, "engine_errors": errors,
                "first_error": next((r["error"] for r in rows if r["error"]), None), "did_not_fit": too_long,
                # what the model was really fed: a short document stays short at every asked length
                "fed_tokens_mean": round(sum(fed) / len(fed)) if fed else None, "fed_tokens_max": max(fed, default=None)}
            write_outputs(result, out)
    finally:
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        write_outputs(result, out)
        if own_engine:
            engine.close()
    return result


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per (model, task), one column per length: the primary metric (errors where any), and the
    official script that metric equals."""
    lengths = sorted({int(k) for r in results for k in r["by_length"]})
    head = "| model | task | metric | " + " | ".join(f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in lengths)
    lines = [head + " | scoring |", "|" + "---|" * (4 + len(lengths))]
    for r in results:
        cells = []
        for n in lengths:
            cell = r["by_length"].get(str(n))
            if not cell or cell["score"] is None:
                cells.append("-")
                continue
            note = f" ({cell['engine_errors']} err)" if cell["engine_errors"] else ""
            fed = cell.get("fed_tokens_max")
            if fed is not None and fed < 0.9 * (n - r["config"].get("max_new_tokens", 0)):
                note += f" (fed ≤{fed} tokens)"  # the asked length was not reached: say what was measured
            cells.append(f"{cell['score']:.3f}{note}")
        lines.append(f"| {r['model']} | {r['task']} | {r['metric']} | " + " | ".join(cells)
                     + f" | {r.get('scoring', '')} |")
    return "\n".join(lines)


def plot_scores(results: list[dict[str, Any]], path: Path, title: str = "score by context length") -> Path:
    from longscale.common.plotting import new_figure, save_figure

    fig, ax = new_figure(title, "context length (tokens)", "score")
    for r in results:
        xs = sorted(int(k) for k, v in r["by_length"].items() if v["score"] is not None)
        if xs:
            ax.plot(xs, [r["by_length"][str(x)]["score"] for x in xs], marker="o", label=f"{r['model']} ({r['task']})")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(f"# {result['task']}: {result['model']}\n\n" + markdown_table([result]) + "\n")
    if result["by_length"]:
        plot_scores([result], out / "score_by_length.png")


def summary_line(result: dict[str, Any]) -> str:
    parts = [f"{k}: {v['score']:.3f}" for k, v in result["by_length"].items() if v["score"] is not None
             and not math.isnan(v["score"])]
    return f"{result['task']} {result['model']} ({result['metric']}): " + ", ".join(parts)
