"""The recipe end to end at small scale: SmolLM2-135M-Instruct -> ABF continual pretraining at 32k -> factory
self-instruct long QA (the chat model served by a real `transformers serve` process on the same device, the
factory's `openai` engine as its client; `--gen-engine transformers` runs it in process instead) -> finetuning on
FT-Short (SQuAD-style short QA) + that long data, with and without LM loss on the long inputs -> RULER-style QA
(SQuAD, HotpotQA) and FIRST-SENTENCE-RETRIEVAL at 4k-32k for base, ABF, ABF+ft(no input loss), ABF+ft(input loss).

Order: train (ABF, generate, both finetunes), then evaluate the two finetuned models task by task, then ABF, then
base, so that a run cut short keeps the comparison the experiment is for. `--time-budget` (device_run.sh passes
what is left of RECIPE_TIMEOUT) skips an evaluation step that a measured step of the same kind says will not fit,
and SIGTERM (from `timeout`) ends the run cleanly: the server is stopped, results and figures are written.

Writes into --out (at most 8 files, the device tool's limit): results.json, results.md, records.jsonl (every
eval answer), factory_qa.jsonl (every generated pair), ruler_qa.png, first_sentence.png, training.png, and
the log (by the shell script). Each step rewrites results.json as it ends, so a cut-off run keeps what it did.
`--scale tiny` shrinks everything for a CPU dry run of the whole script.
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from datafactory.config import GenerationConfig
from datafactory.documents import load_documents
from datafactory.engines import build_engine
from datafactory.pipeline import run_generation
from evaluation.config import EvalConfig
from evaluation.prompts import Example, render
from evaluation.ruler import RulerBuilder, read_hotpot, read_squad
from evaluation.runner import run_eval
from finetune.config import FinetuneConfig
from finetune.run import run_finetune
from longscale.common.plotting import new_figure, save_figure
from pretrain.config import PretrainConfig
from pretrain.probes.first_sentence import plot_accuracy, run_first_sentence
from pretrain.probes.model import HFModel
from pretrain.trainer import Pretrainer

T0 = time.time()
SCALES = {  # everything that sizes the run
    "gpu": {"pt_seq": 32768, "pt_tokens": 96 * 32768, "pt_step_tokens": 32768, "pt_warmup": 5, "lengths": [4096, 8192, 16384, 32768],
                "samples": 20, "fsr_samples": 10, "chunks_per_doc": 40, "gen_batch": 64, "gen_concurrency": 256,
                "max_context": 16384, "n_short": 600, "ft_steps": 60, "ft_batch_tokens": 32768, "pack": 8192,
                "eval_batch": 10, "device": "cuda"},
    "tiny": {"pt_seq": 512, "pt_tokens": 2 * 512, "pt_step_tokens": 512, "pt_warmup": 0, "lengths": [512, 1024],
                 "samples": 2, "fsr_samples": 2, "chunks_per_doc": 1, "gen_batch": 4, "gen_concurrency": 8,
                 "max_context": 1024, "n_short": 8, "ft_steps": 2, "ft_batch_tokens": 1024, "pack": 512,
                 "eval_batch": 2, "device": "cpu"},
}
STAGES = ("base", "abf", "generate", "ft-noinput", "ft-input")
FT_RUNS = {"ft-noinput": ("abf+ft(no input loss)", False), "ft-input": ("abf+ft(input loss)", True)}
LABELS = {"base": "base", "abf": "abf", **{k: v[0] for k, v in FT_RUNS.items()}}
RULER_TASKS = ("ruler-squad", "ruler-hotpot")


class TimeUp(KeyboardInterrupt):
    """SIGTERM (the device script's `timeout`): unwinds like Ctrl-C, so the server is stopped and results written."""


def on_sigterm(signum, frame):
    raise TimeUp(f"signal {signum}")


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f}s] {msg}", flush=True)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def positions_extended(model: Path, work: Path, length: int) -> Path:
    """The untouched model with max_position_embeddings raised (RoPE unchanged), so 16k-32k prompts are run
    rather than refused: the paper's view of a short-context model beyond its window."""
    out = work / "base"
    out.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    cfg = json.loads((model / "config.json").read_text())
    cfg["max_position_embeddings"] = max(length, cfg.get("max_position_embeddings", 0))
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out


def ft_short(squad: Path, eval_ids: set[str], eval_docs: set[int], n: int, path: Path) -> int:
    """SQuAD-style short QA in the eval's chat form, from questions and paragraphs the eval never asks about."""
    pool = read_squad(squad)
    rows = []
    for q in pool.questions:
        if q["id"] in eval_ids or set(q["gold"]) & eval_docs:
            continue
        ctx = pool.docs[q["gold"][0]]
        ex = Example(id=q["id"], context=ctx, question=q["query"], answers=q["answers"])
        rows.append({"messages": render(ex, ctx, "chat") + [{"role": "assistant", "content": q["answers"][0]}]})
        if len(rows) >= n:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


class Budget:
    """Seconds left of --time-budget, and how long each kind of evaluation step took so far (its estimate)."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.time() + seconds
        self.took: dict[str, float] = {}

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.time()

    def fits(self, kind: str) -> bool:
        return self.took.get(kind, 0.0) < self.left()


def eval_ruler(label: str, model_dir: Path, task: str, data: Path, args, s: dict, tokenizer, entry: dict, out: Path,
               builder: RulerBuilder) -> None:
    engine = build_engine(EvalConfig(model=str(model_dir), task=task, data=str(data), output="x",
                                     batch_size=s["eval_batch"], lengths=s["lengths"]))
    try:
        cfg = EvalConfig(model=str(model_dir), task=task, data=str(data), output=str(Path(args.work) / "eval" / label / task),
                         lengths=s["lengths"], num_samples=s["samples"], batch_size=s["eval_batch"], label=label, seed=0)
        r = run_eval(cfg, engine=engine, tokenizer=tokenizer, progress=False, ruler=builder)
    finally:
        engine.close()
        free()
    entry[task] = r["by_length"]
    with (out / "records.jsonl").open("a") as fh:
        for line in (Path(cfg.output) / "records.jsonl").read_text().splitlines():
            fh.write(json.dumps({"model": label, "task": task, **json.loads(line)}) + "\n")
    say(f"{label} {task}: " + ", ".join(f"{k} {v['score']:.2f}" for k, v in r["by_length"].items()))


def eval_first_sentence(label: str, model_dir: Path, s: dict, heldout: list[str], entry: dict, out: Path) -> None:
    m = HFModel(model_dir, device=s["device"])
    try:
        fs = run_first_sentence(m.answer, m.tokenizer, heldout, s["lengths"], samples=s["fsr_samples"], seed=0,
                                label=label, progress=False, batch_size=s["fsr_samples"])
    finally:
        del m
        free()
    entry["first_sentence"] = fs["accuracy"]
    with (out / "records.jsonl").open("a") as fh:
        fh.writelines(json.dumps({"model": label, "task": "first-sentence", **r}) + "\n" for r in fs["records"])
    say(f"{label} first-sentence: {fs['accuracy']}")


def serve_args(s: dict, continuous_batching: bool) -> tuple[str, ...]:
    """Flags for `transformers serve`. TransformersServe passes `--device cpu` first; the last --device wins."""
    extra = ("--device", s["device"])
    if continuous_batching:  # without it transformers serve runs one request's generate() at a time
        extra += ("--continuous-batching",)
        # the paged KV cache takes 0.9 of free memory by default; 135M parameters need little (and on a CPU,
        # sizing it from RAM took ~40 s in one try)
        extra += ("--cb-max-memory-percent", "0.2") if s["device"] == "cuda" else ("--cb-num-blocks", "64")
    return extra


def generate(args, s: dict, model: Path, books: list[Path], gen_dir: Path) -> dict:
    """Self-instruct long QA from `books`: through a real `transformers serve` (--gen-engine serve) or in process."""
    import transformers

    common = dict(model=str(model), prompt_mode="demonstration", chunk_tokens=256, chunks_per_doc=s["chunks_per_doc"],
                  critique="filter", max_context=s["max_context"], max_new_tokens=128, temperature=0.7, seed=0,
                  min_doc_tokens=1024)
    t = time.time()
    if args.gen_engine == "transformers":
        gcfg = GenerationConfig(engine="transformers", batch_size=s["gen_batch"], **common)
        manifest = run_generation(load_documents([str(b) for b in books], gcfg), gcfg, gen_dir, progress=False)
        engine = {"engine": f"transformers {transformers.__version__}, in process on {s['device']}",
                  "batch_size": s["gen_batch"]}
    else:
        from datafactory.testing import TransformersServe

        extra = serve_args(s, args.continuous_batching)
        with TransformersServe(model, extra_args=extra, startup_timeout=300) as srv:  # stopped on leaving
            started = time.time() - t
            say(f"transformers serve {transformers.__version__} ready at {srv.base_url} in {started:.0f}s "
                f"({' '.join(extra)})")
            try:
                # the served name is the folder's path (GET /v1/models); the tokenizer for chunking is read from it
                gcfg = GenerationConfig(engine="openai", base_url=srv.base_url, concurrency=s["gen_concurrency"],
                                        request_timeout=900, max_retries=2, **common)
                manifest = run_generation(load_documents([str(b) for b in books], gcfg), gcfg, gen_dir, progress=False)
            finally:
                tail = [line for line in srv.log_tail(20000).splitlines()
                        if "Request received" not in line and "POST /v1/chat/completions" not in line]
                print("--- transformers serve log (request lines left out) ---\n" + "\n".join(tail[-25:]), flush=True)
        engine = {"engine": f"transformers serve {transformers.__version__} on {s['device']}"
                            + (" (continuous batching)" if args.continuous_batching else "") + ", openai engine",
                  "serve_args": list(extra), "server_start_s": round(started, 1), "concurrency": s["gen_concurrency"]}
    this_run = manifest.get("this_run", {})
    return {**engine, "seconds": round(time.time() - t, 1),
            "generation_s": manifest.get("timings", {}).get("generation_s"),
            "requests": this_run.get("requests"), "requests_per_s": this_run.get("requests_per_s"),
            "counts": manifest.get("counts"), "this_run": this_run, "status": manifest.get("status")}


def table(results: dict) -> str:
    models = results["models"]
    lengths = sorted({int(k) for m in models.values() for t in RULER_TASKS for k in m.get(t, {})})
    cols = [(t, n) for t in ("ruler-squad", "ruler-hotpot", "first_sentence") for n in lengths]
    names = {"ruler-squad": "SQuAD", "ruler-hotpot": "Hotpot", "first_sentence": "FSR"}
    lines = ["| model | " + " | ".join(f"{names[t]} {n // 1024}k" if n % 1024 == 0 else f"{names[t]} {n}" for t, n in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, m in models.items():
        cells = []
        for t, n in cols:
            cell = m.get(t, {}).get(str(n))
            v = cell["score"] if isinstance(cell, dict) else cell
            errors = cell.get("engine_errors") if isinstance(cell, dict) else 0
            cells.append("-" if v is None else f"{v:.2f}" + (f" ({errors} err)" if errors else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, task in zip(axes, RULER_TASKS):
        for label, m in results["models"].items():
            if task in m:
                xs = sorted(int(k) for k in m[task])
                ax.plot(xs, [m[task][str(x)]["score"] for x in xs], marker="o", label=label)
        ax.set_xscale("log", base=2), ax.set_title(f"RULER-style QA: {task[6:]} (substring match)")
        ax.set_xlabel("context length (tokens)"), ax.grid(alpha=0.3), ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("score"), axes[0].legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out / "ruler_qa.png", dpi=120), plt.close(fig)
    plot_accuracy({k: v["first_sentence"] for k, v in results["models"].items() if "first_sentence" in v},
                  out / "first_sentence.png")
    fig, ax = new_figure("training loss", "step", "loss")
    for name, hist in results.get("training_curves", {}).items():
        ax.plot(range(1, len(hist) + 1), hist, label=name)
    ax.legend(fontsize=8)
    save_figure(fig, out / "training.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="SmolLM2-135M-Instruct HF folder")
    ap.add_argument("--corpus", required=True, help="folder of the seven books (.txt)")
    ap.add_argument("--squad", required=True, type=Path)
    ap.add_argument("--hotpot", required=True, type=Path)
    ap.add_argument("--heldout", default="persuasion.txt,northangerabbey.txt")
    ap.add_argument("--scale", choices=sorted(SCALES), default="gpu")
    ap.add_argument("--work", default="/tmp/recipe_e2e")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stages", default=",".join(STAGES),
                    help="base/abf: evaluate those models; generate: self-instruct data; ft-*: finetune and evaluate. "
                         "ABF training runs for any stage but base, generation for generate and ft-*")
    ap.add_argument("--gen-engine", choices=["serve", "transformers"], default="serve",
                    help="serve: a real `transformers serve` of --model on the run's device, the factory's openai "
                         "engine as client (the issue's path); transformers: the in-process engine")
    ap.add_argument("--continuous-batching", action=argparse.BooleanOptionalAction, default=True,
                    help="pass --continuous-batching to transformers serve")
    ap.add_argument("--gen-concurrency", type=int, help="requests in flight to the server (overrides the scale)")
    ap.add_argument("--chunks-per-doc", type=int, help="questions asked per training book (overrides the scale)")
    ap.add_argument("--samples", type=int, help="RULER questions per length (overrides the scale)")
    ap.add_argument("--fsr-samples", type=int, help="FIRST-SENTENCE-RETRIEVAL windows per length")
    ap.add_argument("--eval-batch", type=int, help="prompts per generation batch")
    ap.add_argument("--time-budget", type=float,
                    help="seconds this run may take: an evaluation step is skipped when a step of the same kind took "
                         "longer than what is left")
    args = ap.parse_args()
    s = dict(SCALES[args.scale])
    s.update({k: v for k, v in (("samples", args.samples), ("fsr_samples", args.fsr_samples),
                                ("eval_batch", args.eval_batch), ("gen_concurrency", args.gen_concurrency),
                                ("chunks_per_doc", args.chunks_per_doc)) if v})
    stages = args.stages.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        ap.error(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    budget = Budget(args.time_budget)
    signal.signal(signal.SIGTERM, on_sigterm)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (out / "records.jsonl").write_text("")
    books = sorted(Path(args.corpus).glob("*.txt"))
    heldout_names = set(args.heldout.split(","))
    train_books = [b for b in books if b.name not in heldout_names]
    heldout = [b.read_text() for b in books if b.name in heldout_names]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    results = {"scale": args.scale, "settings": s, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "stages_run": stages, "gen_engine": args.gen_engine, "train_books": [b.name for b in train_books],
               "heldout_books": sorted(heldout_names), "models": {LABELS[k]: {} for k in STAGES if k in stages and k != "generate"},
               "stages": {}, "training_curves": {}, "skipped": [], "ended": "running"}

    def dump() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "results.md").write_text(table(results) + "\n")

    model = Path(args.model)
    try:
        run_stages(args, s, stages, budget, model, work, out, tokenizer, train_books, heldout, results, dump)
        results["ended"] = "complete"
    except TimeUp as exc:
        results["ended"] = f"cut by {exc} after {time.time() - T0:.0f}s"
        say(f"stopped: {results['ended']}")
    finally:
        if results["ended"] == "running":
            results["ended"] = f"failed after {time.time() - T0:.0f}s"
        dump()
        try:
            plots(results, out)
        except Exception as exc:  # a figure must not hide why the run ended
            say(f"figures not written: {type(exc).__name__}: {exc}")
    say(f"done ({results['ended']})")
    print(table(results))
    return 0 if results["ended"] == "complete" else 1


def run_stages(args, s: dict, stages: list[str], budget: Budget, model: Path, work: Path, out: Path, tokenizer,
               train_books: list[Path], heldout: list[str], results: dict, dump) -> None:
    builders = {"ruler-squad": RulerBuilder(read_squad(args.squad), tokenizer, seed=0),
                "ruler-hotpot": RulerBuilder(read_hotpot(args.hotpot), tokenizer, seed=0)}
    data = {"ruler-squad": args.squad, "ruler-hotpot": args.hotpot}
    ft_keys = [k for k in FT_RUNS if k in stages]
    checkpoints: dict[str, Path] = {}
    if "base" in stages:
        checkpoints["base"] = positions_extended(model, work, max(s["lengths"]))

    if set(stages) - {"base"}:
        say(f"ABF continual pretraining: {s['pt_tokens']:,} tokens at {s['pt_seq']}")
        t = time.time()
        pt = Pretrainer(PretrainConfig(model=str(model), output=str(work / "abf"), variant="abf", rope_base=1e6,
                                       source=[f"{b.stem}={b}:1" for b in train_books], seq_len=s["pt_seq"],
                                       tokens_per_step=s["pt_step_tokens"], max_micro_batch=1, total_tokens=s["pt_tokens"],
                                       learning_rate=2e-4, warmup_steps=s["pt_warmup"], min_lr_ratio=0.1, param_dtype="fp32",
                                       gradient_checkpointing="none", seed=0, device=s["device"]), show_progress=False)
        summary = pt.run()
        checkpoints["abf"] = Path(summary["output"])
        results["stages"]["abf"] = {"seconds": round(time.time() - t, 1), "steps": len(pt.history),
                                    "final_loss": pt.history[-1]["loss"], "tokens": s["pt_tokens"]}
        results["training_curves"]["ABF pretraining (32k)"] = [h["loss"] for h in pt.history]
        del pt
        free()
        say(f"ABF done: {results['stages']['abf']}")
        dump()

    gen_dir = work / "generated"
    if "generate" in stages or ft_keys:
        say(f"factory: self-instruct long QA from the training books ({args.gen_engine})")
        shutil.rmtree(gen_dir, ignore_errors=True)  # a fresh run, not a resume of an earlier one's output
        results["stages"]["generate"] = gen = generate(args, s, model, train_books, gen_dir)
        shutil.copy(gen_dir / "qa.jsonl", out / "factory_qa.jsonl")
        gen["long_instances"] = sum(1 for _ in (gen_dir / "instances.jsonl").open())
        say(f"generated: {gen['long_instances']} long instances, {gen['requests']} requests in {gen['generation_s']}s "
            f"({gen['requests_per_s']} req/s); {gen['engine']}")
        dump()

    if ft_keys:
        eval_builder = builders["ruler-squad"]
        eval_qs = [eval_builder.pool.questions[i] for i in eval_builder.question_order()[:s["samples"]]]
        short = work / "ft_short.jsonl"
        n_short = ft_short(args.squad, {q["id"] for q in eval_qs}, {d for q in eval_qs for d in q["gold"]},
                           s["n_short"], short)
        results["stages"]["ft_short"] = {"samples": n_short, "long_instances": results["stages"]["generate"]["long_instances"]}
    for key in ft_keys:
        label, input_loss = FT_RUNS[key]
        say(f"finetuning {label}")
        t = time.time()
        fcfg = FinetuneConfig(model=str(checkpoints["abf"]), output=str(work / key), short_data=[str(short)],
                              long_data=[str(gen_dir)], pack_length=s["pack"], max_length=s["max_context"] + 256,
                              drop_overlong=True, loss_on_long_input=input_loss, learning_rate=5e-5, warmup_ratio=0.05,
                              batch_tokens=s["ft_batch_tokens"], max_steps=s["ft_steps"], gradient_checkpointing=False,
                              save_steps=10**6, logging_steps=1, seed=0,
                              torch_compile="off")  # 60 steps of a 135M model: compiling would cost more than it saves
        r = run_finetune(fcfg)
        free()
        checkpoints[key] = Path(r["outputs"]["final_model"])
        results["stages"][key] = {"seconds": round(time.time() - t, 1), "dataset": r["stats"],
                                  "steps": r["training"].get("global_step")}
        results["training_curves"][f"finetune {label}"] = r["training"]["losses"]
        dump()

    # evaluation, most decisive first: the two finetunes task by task, cheapest first (on an H200: FSR 31-67 s,
    # SQuAD 38-75 s, Hotpot 52-79 s a model), then ABF, then base
    steps = [(key, task) for task in ("first-sentence", *RULER_TASKS) for key in ft_keys]
    steps += [(key, task) for key in ("abf", "base") if key in stages for task in (*RULER_TASKS, "first-sentence")]
    for key, task in steps:
        label = LABELS[key]
        if not budget.fits(task):
            results["skipped"].append({"model": label, "task": task, "left_s": round(budget.left()),
                                       "estimate_s": round(budget.took[task])})
            say(f"skipping {label} {task}: {budget.left():.0f}s left, the last {task} took {budget.took[task]:.0f}s")
            continue
        say(f"evaluating {label} {task}")
        entry = results["models"][label]
        entry["path"] = str(checkpoints[key])
        t = time.time()
        if task == "first-sentence":
            eval_first_sentence(label, checkpoints[key], s, heldout, entry, out)
        else:
            eval_ruler(label, checkpoints[key], task, data[task], args, s, tokenizer, entry, out, builders[task])
        budget.took[task] = time.time() - t
        entry.setdefault("eval_seconds", {})[task] = round(budget.took[task], 1)
        dump()


if __name__ == "__main__":
    sys.exit(main())
