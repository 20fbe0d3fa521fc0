"""Training throughput of the pretrainer's step on a GPU vs the plain-transformers baseline, same call.

Model: the baseline's ~853M Llama (16 layers, hidden 2048, GQA 16/4, vocab 32k), random init, one
sequence per step at 16k and 32k. Ours: the trainer's own pieces (bf16 params, SDPA flash, no or
selective activation checkpointing, chunked cross-entropy, fused AdamW, optional per-layer
torch.compile). MFU uses the baseline's formula (no recomputation counted, H100 dense bf16 989 TFLOP/s).
Also times the SmolLM2-135M shape at 32k as the rope_variants experiment trains it (fp32 params +
bf16 autocast). Usage: python3 benchmarks/bench_pretrain.py --out DIR [--baseline path/to/hf_baseline.py]
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

from pretrain.loss import chunked_lm_loss  # noqa: E402
from pretrain.trainer import configure_checkpointing  # noqa: E402  (the trainer's own pieces)

PEAK = 989e12
BIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
           num_key_value_heads=4)
SMOL = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)


def flops_per_seq(cfg: dict, n_params: int, seq: int) -> float:
    h, v, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    embed = v * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return 6 * (n_params - embed) * seq + 6 * v * h * seq + 12 * layers * h * seq * seq / 2


def bench(name: str, shape: dict, seq: int, *, param_dtype=torch.bfloat16, ckpt="none", compile_layers=False,
          steps=4, autocast=False) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, max_position_embeddings=seq, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(dtype=param_dtype)
    configure_checkpointing(model, ckpt, 2)
    model.train()
    if compile_layers:
        for layer in model.model.layers:
            layer.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    n = sum(p.numel() for p in model.parameters())
    x = torch.randint(0, shape["vocab_size"], (1, seq), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else torch.autocast("cuda", enabled=False)
    warm = 2 if compile_layers else 1
    for i in range(steps + warm):
        if i == warm:
            torch.cuda.synchronize()
            t = time.perf_counter()
        with ctx:
            hidden = model.model(input_ids=x, use_cache=False).last_hidden_state
            loss = chunked_lm_loss(hidden, model.lm_head.weight, x, chunk=4096, compute_dtype=torch.bfloat16)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    r = dict(name=name, seq=seq, params_M=round(n / 1e6), ckpt=ckpt, compile=compile_layers,
             param_dtype=str(param_dtype).split(".")[-1], tok_s=round(seq / dt), step_s=round(dt, 3),
             mfu=round(flops_per_seq(shape, n, seq) / dt / PEAK, 3),
             peak_mem_GB=round(torch.cuda.max_memory_allocated() / 2**30, 1), loss=round(loss.item(), 3))
    print(json.dumps(r), flush=True)
    del model, opt
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
    runs = [("ours", BIG, 16384, {}), ("ours", BIG, 32768, {}),
            ("ours+compile", BIG, 16384, {"compile_layers": True}), ("ours+compile", BIG, 32768, {"compile_layers": True}),
            ("smollm2-135m fp32+autocast", SMOL, 32768, {"param_dtype": torch.float32, "autocast": True})]
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
