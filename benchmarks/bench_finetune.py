"""GPU throughput of the finetune trainer on assembled long data at 16k and 32k tokens.

Runs the same code path as `longscale finetune` (assemble_rows -> datasets rows -> finetune.trainer.build_trainer
-> TRL SFTTrainer.train) on long QA instances cut from the sample books, one sample per row, right-padded to the
sequence length. Models (benchmarks/trainbench.py): a ~0.9B random-initialised Llama (the 853M config of
hf_baseline.py with the real tokenizer's 49,152-token vocabulary), a Llama-2-7B-shaped one (vocabulary 32,000:
token ids are taken modulo 32,000, which changes nothing for throughput) and the embedded SmolLM2-135M-Instruct
(real weights, when --smollm2 is given). Reports tokens/s (all row tokens and real ones), MFU with
hf_baseline.py's formula (dense bf16 peak 989 TFLOP/s, recomputation not counted), peak memory, and the losses.
Run it in the same device call as /work/shared/tools/hf_baseline.py and compare; `--baseline-log` folds that
script's output into the report. benchmarks/bench_train_limits.py runs `run_single` for issue 16's matrix.

    python3 benchmarks/bench_finetune.py --tokenizer DIR [--smollm2 DIR] --out DIR [--seqs 16384,32768]
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transformers import TrainerCallback  # noqa: E402

from benchmarks.trainbench import CUDA, PEAK_FLOPS, StepProfile, peak_memory_gb, random_llama, sync, train_flops  # noqa: E402
from finetune.assemble import assemble_rows, load_tokenizer, to_dataset  # noqa: E402
from finetune.config import FinetuneConfig  # noqa: E402
from finetune.trainer import build_trainer  # noqa: E402
from longscale.common.instances import LongQAInstance  # noqa: E402

BOOKS = sorted((REPO / "datafactory" / "sample_corpus").glob("*.txt"))
TEMPLATE = ('You are given a long text (delimited by triple quotes) and a question. Read the text and answer the '
            'question in the end. """ {doc} """\n\nQuestion: {question}')


def write_long_instances(tokenizer, seq: int, n: int, out: Path) -> Path:
    """n long QA instances whose chat rendering is a little under `seq` tokens (documents cut from the books)."""
    out.mkdir(parents=True, exist_ok=True)
    books = [tokenizer(b.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"] for b in BOOKS]
    lines = []
    for i in range(n):
        question, answer = f"What happens in passage {i}?", f"Passage {i} tells of a visit."
        empty = [{"role": "user", "content": TEMPLATE.format(doc="", question=question)},
                 {"role": "assistant", "content": answer}]
        overhead = len(tokenizer.apply_chat_template(empty, tokenize=True, return_dict=False)) + 8
        book = books[i % len(books)]
        budget = seq - overhead - 64
        start = (i * 7919) % max(1, len(book) - budget)
        doc = tokenizer.decode(book[start:start + budget])
        user = TEMPLATE.format(doc=doc, question=question)
        # through the shared instance contract, as the data factory writes them (finetune reads nothing else)
        lines.append(LongQAInstance.model_validate({
            "id": f"bench-{seq}-{i}", "doc_id": BOOKS[i % len(BOOKS)].stem, "chunk_index": 0, "answer_type": "normal",
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "text": f"[INST] {user} [/INST] {answer}", "question": question, "answer": answer, "truncated": False,
            "document_tokens": budget, "kept_token_span": [start, start + budget], "kept_char_span": [0, len(doc)],
            "chunk_char_span": [0, len(doc)], "approx_tokens": seq - 64, "model": "bench_finetune",
        }).to_record())
    (out / "instances.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def write_short_instances(tokenizer, n: int, out: Path, seed: int = 0) -> Path:
    """n FT-Short-like chat samples (20-1,500-token passages to summarise), for the packed-row path."""
    import random

    rng = random.Random(seed)
    books = [b.read_text(encoding="utf-8") for b in BOOKS]
    lines = []
    for i in range(n):
        text = books[i % len(books)]
        size = int(rng.paretovariate(1.2) * 200) % 6000 + 80  # many short samples, a long tail (characters)
        start = rng.randrange(0, len(text) - size)
        passage = text[start:start + size]
        lines.append({"id": f"short-{i}", "messages": [
            {"role": "user", "content": f"Summarise this passage in one sentence:\n{passage}"},
            {"role": "assistant", "content": "It is " + passage.split(".")[0][:200].strip() + "."}]})
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


class StepClock(TrainerCallback):
    """Wall time between consecutive optimizer-step ends (data loading, forward, backward, optimizer: all of it)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        self.ends.append(time.perf_counter())


class ProfileLastStep(TrainerCallback):
    """torch.profiler around optimizer step `at` (0-based), which the timing leaves out."""

    def __init__(self, at: int):
        self.at, self.prof, self.summary = at, None, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            self.prof = StepProfile().__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self.prof is not None and self.summary is None:
            self.prof.__exit__(None, None, None)
            self.summary = self.prof.summary


def parse_ckpt(ckpt) -> tuple[str, int]:
    """none | full | every:N (selective: every N-th decoder layer recomputes) -> (mode, N)."""
    ckpt = {True: "full", False: "none"}.get(ckpt, ckpt)
    if str(ckpt).startswith("every:"):
        return "selective", int(ckpt.split(":")[1])
    return str(ckpt), 1


def measure(name, model, tokenizer, seq, data_dir, out_dir, *, steps, warmup, ckpt, rows=1, attn="auto",
            compile_="off", short_file=None, lora_r=0, profile=False, step_in_backward=False, offload_state=False):
    data_kw = {"short_data": [str(short_file)]} if short_file else {"long_data": [str(data_dir)]}
    mode, every = parse_ckpt(ckpt)
    config = FinetuneConfig(model=name, output=str(out_dir), **data_kw, pack_length=seq, max_length=seq,
                            pad_to="max", drop_overlong=True, batch_tokens=seq * rows, per_device_rows=rows,
                            max_steps=warmup + steps + (1 if profile else 0), gradient_checkpointing=mode != "none",
                            ckpt_every_layers=every,
                            attn_implementation=attn, bf16=CUDA, torch_compile=compile_, save_steps=10**6,
                            logging_steps=1, warmup_ratio=0.0, lora_r=lora_r, lora_alpha=2 * max(lora_r, 1),
                            step_in_backward=step_in_backward or offload_state, offload_optimizer_state=offload_state)
    data, stats = assemble_rows(config, tokenizer)
    vocab = model.config.vocab_size
    if vocab < len(tokenizer):  # the 7B shape's 32k vocabulary: ids modulo 32k (labels keep -100)
        for r in data:
            r["input_ids"] = [t % vocab for t in r["input_ids"]]
            r["labels"] = [t % vocab if t >= 0 else t for t in r["labels"]]
    clock, profiler = StepClock(), ProfileLastStep(warmup + steps)
    trainer = build_trainer(config, to_dataset(data), tokenizer, model=model, callbacks=[clock, profiler])
    trainer.args.save_strategy = "no"  # no multi-GB checkpoint at the end of a timing run
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    dts = [b - a for a, b in zip(clock.ends[warmup - 1:warmup + steps - 1], clock.ends[warmup:warmup + steps])]
    dt = sum(dts) / len(dts)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    if lora_r:  # the formula counts the base model (as for full finetuning); `mfu_lora` what LoRA computes
        n_params = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n)
    lengths = [r["seq_lengths"] for r in data] if short_file else [None]
    flops = {lora: rows * sum(train_flops(model.config, n_params, seq, x, lora=lora) for x in lengths) / len(lengths)
             for lora in (False, True)}
    seq_tokens = seq * rows
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = dict(model=name + (" packed FT-Short" if short_file else ""), seq=seq, params_M=round(n_params / 1e6),
                  kernel=attn, attn=model.config._attn_implementation, ckpt=ckpt, compile=compile_, lora_r=lora_r,
                  rows_per_step=rows, steps_timed=len(dts), step_s=round(dt, 3), tok_s=round(seq_tokens / dt),
                  real_tok_s=round(seq_tokens * (1 - stats["pad_fraction"]) / dt),
                  mfu=round(flops[False] / dt / PEAK_FLOPS, 3), peak_mem_GB=peak_memory_gb(),
                  pad_fraction=stats["pad_fraction"], packing_efficiency=stats["packing_efficiency"],
                  losses=[round(x, 4) for x in losses], loss_first=round(losses[0], 4), loss_last=round(losses[-1], 4))
    if lora_r:
        result["mfu_lora"] = round(flops[True] / dt / PEAK_FLOPS, 3)
    if config.optimizer.step_in_backward:
        inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        result["optimizer"] = "step in backward" + (" + state offloaded" if offload_state else "")
        if getattr(inner, "offload", None) is not None:
            result["offload_prefetch_hits"], result["offload_pinned"] = inner.offload.hits, inner.offload.pin
    if profiler.summary:
        result["profile"] = profiler.summary
    del trainer
    return result


def run_single(label, make_model, tokenizer, seq, data_dir, work, args, **kw):
    model = None
    try:
        model = make_model()
        result = measure(label, model, tokenizer, seq, data_dir, work / f"{label}-{seq}", steps=args.steps,
                         warmup=args.warmup, **kw)
    except Exception as exc:  # an OOM or a kernel refusal is a result too
        import traceback
        traceback.print_exc()
        result = dict(model=label, seq=seq, error=repr(exc)[:400], oom=isinstance(exc, torch.OutOfMemoryError),
                      **{k: str(v) for k, v in kw.items()})
    print(json.dumps(result), flush=True)
    del model
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
    return result


def report(results, baseline, out: Path) -> None:
    env = {m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "datasets")}
    env["gpu"] = torch.cuda.get_device_name(0) if CUDA else "cpu (smoke test)"
    (out / "finetune_gpu.json").write_text(json.dumps({"env": env, "finetune": results, "baseline": baseline}, indent=2))
    lines = ["# finetune trainer throughput (GPU)", "", f"Device: {env['gpu']}; " +
             ", ".join(f"{k} {v}" for k, v in env.items() if k != "gpu"), "",
             "| run | model | seq | rows/step | params (M) | attn | ckpt | tokens/s | MFU | peak mem (GB) | loss first -> last |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in baseline:
        if "tok_s" in r:
            lines.append(f"| hf_baseline | random Llama | {r['seq']} | 1 | {r['params_M']} | {r['attn']} | {r['ckpt']} | "
                         f"{r['tok_s']} | {r['mfu']} | {r['peak_mem_GB']} | - |")
    for r in results:
        if "error" in r:
            lines.append(f"| finetune | {r['model']} | {r['seq']} | {r.get('rows', 1)} | - | {r.get('attn')} | {r.get('ckpt')} | error: "
                         f"{r['error'][:80]} | - | - | - |")
        else:
            lines.append(f"| finetune | {r['model']} | {r['seq']} | {r['rows_per_step']} | {r['params_M']} | {r['attn']}{'' if r['compile'] == 'off' else '+compile ' + r['compile']} | {r['ckpt']} | "
                         f"{r['tok_s']} | {r['mfu']} | {r['peak_mem_GB']} | {r['loss_first']} -> {r['loss_last']} |")
    (out / "finetune_gpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="HF folder whose tokenizer/chat template builds the data")
    parser.add_argument("--smollm2", help="HF folder of SmolLM2-135M-Instruct (real weights) to finetune too")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seqs", default="16384,32768")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--micro-batch-tokens", type=int, default=0,
                        help="~0.9B model: rows per micro-batch = max(1, this // seq) (0: one row)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--packed", action="store_true",
                        help="also time packed FT-Short rows (per-sample attention: FlexAttention under --attn-kernel auto) for the ~0.9B model")
    parser.add_argument("--compile", default="off,layers",
                        help="torch_compile modes to time for the ~0.9B model at every seq (off, layers, model)")
    parser.add_argument("--ckpt-fallback", action="store_true", help="also run with gradient checkpointing")
    parser.add_argument("--small", action="store_true", help="tiny random model instead of ~0.9B (CPU smoke test)")
    parser.add_argument("--baseline-log", help="stdout of hf_baseline.py run in the same call")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    baseline = []
    if args.baseline_log and Path(args.baseline_log).exists():
        for line in Path(args.baseline_log).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "seq" in row:
                baseline.append(row)
    tokenizer = load_tokenizer(args.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    results: list[dict] = []

    def run_one(*a, **kw):  # write the report after every run, so a cut-off call still brings figures back
        result = run_single(*a, **kw)
        results.append(result)
        report(results, baseline, out)
        return result

    modes = args.compile.split(",")
    for seq in map(int, args.seqs.split(",")):
        rows = max(1, args.micro_batch_tokens // seq)
        data_dir = write_long_instances(tokenizer, seq, rows * (args.warmup + args.steps) + 1, work / f"data-{seq}")
        for mode in modes:  # the modes side by side at each length: the comparison is within one call
            run_one("random-0.9B", lambda: random_llama("small" if args.small else "1b", len(tokenizer), seq), tokenizer, seq,
                    data_dir, work, args, ckpt=False, rows=rows, compile_=mode)
        if args.ckpt_fallback or "error" in results[-1]:
            run_one("random-0.9B", lambda: random_llama("small" if args.small else "1b", len(tokenizer), seq), tokenizer, seq,
                    data_dir, work, args, ckpt=True, compile_=modes[-1])
        if args.smollm2:
            from transformers import AutoModelForCausalLM

            run_one("SmolLM2-135M", lambda: AutoModelForCausalLM.from_pretrained(
                args.smollm2, dtype=torch.bfloat16), tokenizer, seq, data_dir, work, args, ckpt=False, compile_=modes[-1])
    if args.packed:
        seq = int(args.seqs.split(",")[0])
        short_file = write_short_instances(tokenizer, 1500 if not args.small else 200, work / "short.jsonl")
        run_one("random-0.9B", lambda: random_llama("small" if args.small else "1b", len(tokenizer), seq), tokenizer, seq,
                None, work, args, ckpt=False, short_file=short_file,
                compile_=modes[-1])
    report(results, baseline, out)


if __name__ == "__main__":
    main()
