"""The recipe end to end at small scale: SmolLM2-135M-Instruct -> ABF continual pretraining at 32k -> factory
self-instruct long QA (transformers engine, in process, on the GPU) -> finetuning on FT-Short (SQuAD-style short
QA) + that long data, with and without LM loss on the long inputs -> RULER-style QA (SQuAD, HotpotQA) and
FIRST-SENTENCE-RETRIEVAL at 4k-32k for base, ABF, ABF+ft(no input loss), ABF+ft(input loss).

Writes into --out (at most 8 files, the device tool's limit): results.json, results.md, records.jsonl (every
eval answer), factory_qa.jsonl (every generated pair), ruler_qa.png, first_sentence.png, training.png, and
the log (by the shell script). Each stage appends to results.json as it ends, so a cut-off run keeps what it did.
`--scale tiny` shrinks everything for a CPU dry run of the whole script.
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from datafactory.config import GenerationConfig
from datafactory.documents import load_documents
from datafactory.pipeline import run_generation
from finetune.config import FinetuneConfig
from finetune.run import run_finetune
from pretrain.config import PretrainConfig
from pretrain.evaluation.config import EvalConfig
from pretrain.evaluation.prompts import Example, render
from pretrain.evaluation.ruler import RulerBuilder, read_hotpot, read_squad
from pretrain.evaluation.runner import build_engine, run_eval
from pretrain.probes.common import HFModel, new_figure, save_figure
from pretrain.probes.first_sentence import plot_accuracy, run_first_sentence
from pretrain.trainer import Pretrainer

T0 = time.time()
SCALES = {  # everything that sizes the run
    "gpu": {"pt_seq": 32768, "pt_tokens": 96 * 32768, "pt_step_tokens": 32768, "pt_warmup": 5, "lengths": [4096, 8192, 16384, 32768],
                "samples": 20, "fsr_samples": 10, "chunks_per_doc": 40, "gen_batch": 64, "max_context": 16384, "n_short": 600,
                "ft_steps": 60, "ft_batch_tokens": 32768, "pack": 8192, "eval_batch": 10, "device": "cuda"},
    "tiny": {"pt_seq": 512, "pt_tokens": 2 * 512, "pt_step_tokens": 512, "pt_warmup": 0, "lengths": [512, 1024],
                 "samples": 2, "fsr_samples": 2, "chunks_per_doc": 1, "gen_batch": 4, "max_context": 1024, "n_short": 8,
                 "ft_steps": 2, "ft_batch_tokens": 1024, "pack": 512, "eval_batch": 2, "device": "cpu"},
}


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


def ft_short(squad: Path, tokenizer, eval_ids: set[str], eval_docs: set[int], n: int, path: Path) -> int:
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


def evaluate(label: str, model_dir: Path, args, s: dict, tokenizer, heldout: list[str], results: dict, out: Path,
             builders: dict[str, RulerBuilder]) -> None:
    say(f"evaluating {label}")
    entry = results["models"].setdefault(label, {"path": str(model_dir)})
    engine = build_engine(EvalConfig(model=str(model_dir), task="ruler-squad", data="x", output="x",
                                     batch_size=s["eval_batch"], lengths=s["lengths"]))
    try:
        for task, data in (("ruler-squad", args.squad), ("ruler-hotpot", args.hotpot)):
            cfg = EvalConfig(model=str(model_dir), task=task, data=str(data), output=str(Path(args.work) / "eval" / label / task),
                             lengths=s["lengths"], num_samples=s["samples"], batch_size=s["eval_batch"], label=label,
                             seed=0)
            r = run_eval(cfg, engine=engine, tokenizer=tokenizer, progress=False, ruler=builders[task])
            entry[task] = r["by_length"]
            with (out / "records.jsonl").open("a") as fh:
                for line in (Path(cfg.output) / "records.jsonl").read_text().splitlines():
                    fh.write(json.dumps({"model": label, "task": task, **json.loads(line)}) + "\n")
            say(f"{label} {task}: " + ", ".join(f"{k} {v['score']:.2f}" for k, v in r["by_length"].items()))
    finally:
        engine.close()
        free()
    m = HFModel(model_dir, device=s["device"])
    fs = run_first_sentence(m.answer, m.tokenizer, heldout, s["lengths"], samples=s["fsr_samples"], seed=0, label=label,
                            progress=False, batch_size=s["fsr_samples"])
    del m
    free()
    entry["first_sentence"] = fs["accuracy"]
    with (out / "records.jsonl").open("a") as fh:
        fh.writelines(json.dumps({"model": label, "task": "first-sentence", **r}) + "\n" for r in fs["records"])
    say(f"{label} first-sentence: {fs['accuracy']}")


def table(results: dict) -> str:
    models = results["models"]
    lengths = sorted({int(k) for m in models.values() for k in m.get("ruler-squad", {})})
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
    for ax, task in zip(axes, ("ruler-squad", "ruler-hotpot")):
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
    ap.add_argument("--stages", default="base,abf,generate,ft-noinput,ft-input",
                    help="base/abf: evaluate those models; ft-*: finetune and evaluate (ABF training and generation "
                         "always run, since the finetunes start from them)")
    ap.add_argument("--samples", type=int, help="RULER questions per length (overrides the scale)")
    ap.add_argument("--fsr-samples", type=int, help="FIRST-SENTENCE-RETRIEVAL windows per length")
    ap.add_argument("--eval-batch", type=int, help="prompts per generation batch")
    args = ap.parse_args()
    s = dict(SCALES[args.scale])
    s.update({k: v for k, v in (("samples", args.samples), ("fsr_samples", args.fsr_samples),
                                ("eval_batch", args.eval_batch)) if v})
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (out / "records.jsonl").write_text("")
    stages = args.stages.split(",")
    books = sorted(Path(args.corpus).glob("*.txt"))
    heldout_names = set(args.heldout.split(","))
    train_books = [b for b in books if b.name not in heldout_names]
    heldout = [b.read_text() for b in books if b.name in heldout_names]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    results = {"scale": args.scale, "settings": s, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "train_books": [b.name for b in train_books], "heldout_books": sorted(heldout_names), "models": {},
               "stages": {}, "training_curves": {}}

    def dump() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "results.md").write_text(table(results) + "\n")

    builders = {"ruler-squad": RulerBuilder(read_squad(args.squad), tokenizer, seed=0),
                "ruler-hotpot": RulerBuilder(read_hotpot(args.hotpot), tokenizer, seed=0)}
    model = Path(args.model)
    if "base" in stages:
        evaluate("base", positions_extended(model, work, max(s["lengths"])), args, s, tokenizer, heldout, results, out, builders)
        dump()

    say(f"ABF continual pretraining: {s['pt_tokens']:,} tokens at {s['pt_seq']}")
    t = time.time()
    pt = Pretrainer(PretrainConfig(model=str(model), output=str(work / "abf"), variant="abf", rope_base=1e6,
                                   source=[f"{b.stem}={b}:1" for b in train_books], seq_len=s["pt_seq"],
                                   tokens_per_step=s["pt_step_tokens"], max_micro_batch=1, total_tokens=s["pt_tokens"],
                                   lr=2e-4, warmup_steps=s["pt_warmup"], min_lr_ratio=0.1, param_dtype="fp32",
                                   grad_ckpt="none", seed=0, device=s["device"]), show_progress=False)
    summary = pt.run()
    abf = Path(summary["output"])
    results["stages"]["abf"] = {"seconds": round(time.time() - t, 1), "steps": len(pt.history),
                                "final_loss": pt.history[-1]["loss"], "tokens": s["pt_tokens"]}
    results["training_curves"]["ABF pretraining (32k)"] = [h["loss"] for h in pt.history]
    del pt
    free()
    say(f"ABF done: {results['stages']['abf']}")
    if "abf" in stages:
        evaluate("abf", abf, args, s, tokenizer, heldout, results, out, builders)
    dump()

    say("factory: self-instruct long QA from the training books (transformers engine, in process)")
    t = time.time()
    gen_dir = work / "generated"
    gcfg = GenerationConfig(engine="transformers", model=str(model), prompt_mode="demonstration", chunk_tokens=256,
                            chunks_per_doc=s["chunks_per_doc"], critique="filter", max_context=s["max_context"],
                            max_new_tokens=128, temperature=0.7, seed=0, batch_size=s["gen_batch"], min_doc_tokens=1024)
    manifest = run_generation(load_documents([str(b) for b in train_books], gcfg), gcfg, gen_dir, progress=False)
    free()
    results["stages"]["generate"] = {"seconds": round(time.time() - t, 1), "counts": manifest.get("counts"),
                                     "this_run": manifest.get("this_run"), "status": manifest.get("status")}
    shutil.copy(gen_dir / "qa.jsonl", out / "factory_qa.jsonl")
    n_long = sum(1 for _ in (gen_dir / "instances.jsonl").open())
    say(f"generated: {n_long} long instances in {time.time() - t:.0f}s")
    dump()

    eval_builder = builders["ruler-squad"]
    order = eval_builder.question_order()[:s["samples"]]
    eval_qs = [eval_builder.pool.questions[i] for i in order]
    short = work / "ft_short.jsonl"
    n_short = ft_short(args.squad, tokenizer, {q["id"] for q in eval_qs}, {d for q in eval_qs for d in q["gold"]},
                       s["n_short"], short)
    results["stages"]["ft_short"] = {"samples": n_short, "long_instances": n_long}
    for label, input_loss in (("abf+ft(no input loss)", False), ("abf+ft(input loss)", True)):
        key = "ft-input" if input_loss else "ft-noinput"
        if key not in stages:
            continue
        say(f"finetuning {label}")
        t = time.time()
        fcfg = FinetuneConfig(model=str(abf), output=str(work / key), short_data=[str(short)], long_data=[str(gen_dir)],
                              pack_length=s["pack"], max_length=s["max_context"] + 256, drop_overlong=True,
                              loss_on_long_input=input_loss, learning_rate=5e-5, warmup_ratio=0.05,
                              batch_tokens=s["ft_batch_tokens"], max_steps=s["ft_steps"], gradient_checkpointing=False,
                              save_steps=10**6, logging_steps=1, seed=0)
        r = run_finetune(fcfg)
        free()
        results["stages"][key] = {"seconds": round(time.time() - t, 1), "dataset": r["stats"],
                                  "steps": r["training"].get("global_step")}
        results["training_curves"][f"finetune {label}"] = r["training"]["losses"]
        dump()
        evaluate(label, Path(r["outputs"]["final_model"]), args, s, tokenizer, heldout, results, out, builders)
        dump()
    plots(results, out)
    dump()
    say("done")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
