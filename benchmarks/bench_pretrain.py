"""Training throughput of the pretrainer's step on a GPU vs the plain-transformers baseline, same call.

Models (benchmarks/trainbench.py): the baseline's ~853M Llama (16 layers, hidden 2048, GQA 16/4, vocab 32k) and a
Llama-2-7B-shaped one (32 layers, hidden 4096, 32 heads, vocab 32k), random init, one sequence per step at 16k
and 32k. Ours: the trainer's own pieces (bf16 params, the `--attn-kernel` choice of pretrain/attention.py, none,
full or selective activation checkpointing, chunked cross-entropy, fused AdamW, optional per-layer
torch.compile). MFU uses the baseline's formula (no recomputation counted, dense bf16 989 TFLOP/s).
Usage: python3 benchmarks/bench_pretrain.py --out DIR [--baseline path/to/hf_baseline.py]
(benchmarks/bench_train_limits.py runs `bench` for the 1B/7B matrix of issue 16.)
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.trainbench import CUDA, PEAK_FLOPS, peak_memory_gb, profile_step, random_llama, sync, train_flops  # noqa: E402
from pretrain.attention import attn_implementation  # noqa: E402
from pretrain.loss import chunked_lm_loss  # noqa: E402
from pretrain.step_in_backward import StepInBackward  # noqa: E402
from pretrain.trainer import configure_checkpointing  # noqa: E402  (the trainer's own pieces)

VOCAB = 32000


def bench(name: str, shape: str, seq: int, *, kernel: str = "auto", param_dtype=torch.bfloat16, ckpt="none",
          ckpt_every: int = 2, compile_layers=False, steps=4, warmup=None, autocast=False, profile=False,
          step_in_backward=False, offload_state=False) -> dict:
    """One configuration: `warmup` + `steps` timed optimizer steps (+ one profiled step when `profile`);
    `step_in_backward` / `offload_state`: the trainer's --step-in-backward / --offload-optimizer-state."""
    impl = attn_implementation(kernel)
    model = random_llama(shape, VOCAB, seq, attn=impl, dtype=param_dtype)
    configure_checkpointing(model, ckpt, ckpt_every)
    model.train()
    if compile_layers:
        for layer in model.model.layers:
            layer.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=torch.cuda.is_available())
    if step_in_backward or offload_state:
        opt = StepInBackward(opt, offload_state=offload_state)
    n = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    device = model.device
    batches = [torch.randint(0, VOCAB, (1, seq), generator=g).to(device) for _ in range(2)]
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)
    warm = warmup if warmup is not None else (2 if compile_layers else 1)
    losses = []

    def step(i):
        x = batches[i % 2]
        with ctx:
            hidden = model.model(input_ids=x, use_cache=False).last_hidden_state
            loss = chunked_lm_loss(hidden, model.lm_head.weight, x, chunk=4096, compute_dtype=torch.bfloat16)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    for i in range(steps + warm):
        if i == warm:
            sync()
            t = time.perf_counter()
        step(i)
    sync()
    dt = (time.perf_counter() - t) / steps
    r = dict(name=name, shape=shape, seq=seq, params_M=round(n / 1e6), kernel=kernel, attn=impl, ckpt=ckpt if ckpt != "selective" else f"every {ckpt_every}",
             compile=compile_layers, param_dtype=str(param_dtype).split(".")[-1], tok_s=round(seq / dt),
             step_s=round(dt, 3), mfu=round(train_flops(model.config, n, seq) / dt / PEAK_FLOPS, 3),
             peak_mem_GB=peak_memory_gb(), steps_timed=steps, losses=[round(x.item(), 4) for x in losses])
    if isinstance(opt, StepInBackward):
        r["optimizer"] = "step in backward" + (" + state offloaded" if offload_state else "")
    r["loss_first"], r["loss_last"] = r["losses"][0], r["losses"][-1]
    if profile:
        r["profile"] = profile_step(lambda: step(0))
    print(json.dumps(r), flush=True)
    del model, opt, batches
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
    return r


def run_baseline(path: str) -> list[dict]:
    done = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=400)
    rows = []
    for line in done.stdout.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    print(done.stdout[-3000:], done.stderr[-1500:] if done.returncode else "", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--baseline", default=".device/pretrain/hf_baseline.py")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "ours": [], "baseline": []}
    import transformers

    results["transformers"] = transformers.__version__
    runs = [("ours", "1b", 16384, {}), ("ours", "1b", 32768, {}),
            ("ours+compile", "1b", 16384, {"compile_layers": True}), ("ours+compile", "1b", 32768, {"compile_layers": True})]
    for name, shape, seq, kw in runs:
        oom = False
        try:
            results["ours"].append(bench(name, shape, seq, **kw))
        except torch.OutOfMemoryError:
            oom = True  # retried below, once the failed frame (and its tensors) is released
        except Exception as exc:  # noqa: BLE001 - recorded, the next run goes on
            results["ours"].append(dict(name=name, seq=seq, error=repr(exc)[:300]))
        if oom:
            gc.collect()
            torch.cuda.empty_cache()
            try:
                results["ours"].append(bench(name + " (selective ckpt)", shape, seq, ckpt="selective", **kw))
            except Exception as exc:  # noqa: BLE001
                results["ours"].append(dict(name=name, seq=seq, error=repr(exc)[:300]))
            gc.collect()
            torch.cuda.empty_cache()
        (out / "pretrain_gpu.json").write_text(json.dumps(results, indent=2))
    if not args.skip_baseline:
        results["baseline"] = run_baseline(args.baseline)
    (out / "pretrain_gpu.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Pretrainer throughput ({results['gpu']}, torch {results['torch']}, transformers {results['transformers']})",
             "", "Same call, same GPU. MFU excludes recomputation (baseline's formula); one sequence per step.", "",
             "| run | seq | params (M) | ckpt | tokens/s | MFU | peak mem (GB) |", "|---|---|---|---|---|---|---|"]
    for r in results["ours"] + [dict(b, name="hf_baseline " + b.get("attn", "")) for b in results["baseline"] if "seq" in b]:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['seq']} | | | error: {r['error'][:80]} | | |")
        else:
            lines.append(f"| {r['name']} | {r['seq']} | {r['params_M']} | {r.get('ckpt')} | {r['tok_s']:,} | {r['mfu']} | "
                         f"{r['peak_mem_GB']} |")
    (out / "pretrain_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
