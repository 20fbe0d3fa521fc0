"""What the two training benchmarks share: model shapes, the MFU formula, peak memory, a profiler summary.

MFU follows hf_baseline.py (../shared/tools/hf_baseline.py): 6 N_nonembedding T + 6 V h T (LM head) + 6 L h T^2
(causal attention; summed per sample for packed rows), over the H100/H200 dense bf16 peak of 989 TFLOP/s,
recomputation not counted. For LoRA the same formula gives `mfu` (comparable with full finetuning) and
`mfu_lora` counts what LoRA really computes: no weight gradients for the frozen matrices (4 N T instead of 6 N T).
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch

PEAK_FLOPS = 989e12
CUDA = torch.cuda.is_available()

# ~0.9B: hf_baseline.py's 853M config (the vocabulary is the caller's); 7B: Llama-2-7B's shape
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=4),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),  # CPU smoke runs
}


def random_llama(shape: str, vocab: int, seq: int, *, attn: str = "sdpa", dtype=None):
    """A seeded random-initialised Llama of `shape`, built on the GPU in its final dtype (no CPU init of 7B)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=seq, rope_parameters={"rope_type": "default",
                      "rope_theta": 5e5}, **SHAPES[shape])
    cfg._attn_implementation = attn
    dtype = dtype or (torch.bfloat16 if CUDA else torch.float32)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda" if CUDA else "cpu"):
            return LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)


def train_flops(config, n_params: int, seq: int, sample_lengths: list[int] | None = None, *,
                lora: bool = False) -> float:
    """FLOPs of one row of `seq` tokens (forward + backward) by hf_baseline.py's formula; see the module doc."""
    h, v, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    embed = v * h * (1 if config.tie_word_embeddings else 2)
    squares = sum(x * x for x in sample_lengths) if sample_lengths else seq * seq
    linear = (4 if lora else 6) * (n_params - embed) * seq
    return linear + 6 * v * h * seq + 6 * layers * h * squares


def peak_memory_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 1) if CUDA else None


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def kernel_category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "sdpa", "attention", "attn")):
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "xmma", "gemv", "cublas", "matmul", "wgmma")):
        return "matmul"
    if any(k in n for k in ("multi_tensor", "adam", "foreach")):
        return "optimizer"
    if "nccl" in n:
        return "communication"
    if "memcpy htod" in n or "memcpy dtoh" in n:
        return "host<->device copies"  # the offloaded optimizer state's traffic (copy streams, beside compute)
    if n.startswith("triton"):
        return "fused elementwise (compiled)"
    if any(k in n for k in ("copy", "memcpy", "memset", "fill")):
        return "copies"
    return "other kernels"


def profile_step(step) -> dict:
    """Run `step()` once under torch.profiler and summarise it (`summarize`)."""
    prof = StepProfile()
    with prof:
        step()
    return prof.summary


class StepProfile:
    """A context manager: torch.profiler around a region; `.summary` = GPU kernel time by category (share of the
    wall time) and idle = wall - busy GPU time (the union of kernel intervals, streams may overlap)."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
        sync()
        self._prof = profile(activities=activities)
        self._prof.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync()
        wall = time.perf_counter() - self._started
        self._prof.__exit__(*exc)
        self.summary = summarize(self._prof.events(), wall)
        return False


def _union(intervals) -> float:
    """Seconds covered by the union of (start, end, ...) microsecond intervals."""
    busy, last = 0.0, None
    for start, end, *_ in sorted(intervals):
        if last is None or start > last:
            busy, last = busy + end - start, end
        elif end > last:
            busy, last = busy + end - last, end
    return busy / 1e6


def summarize(events, wall: float) -> dict:
    by_cat: dict[str, float] = defaultdict(float)
    attention: dict[str, float] = defaultdict(float)
    sdpa_ops = set()
    intervals = []
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CUDA:
            if "scaled_dot_product" in event.name:
                sdpa_ops.add(event.name)  # which SDPA backend ran, compiled or not
            continue
        if kernel_category(event.name) == "attention":
            attention[event.name[:100]] += (event.time_range.end - event.time_range.start) / 1e6
        start, end = event.time_range.start, event.time_range.end  # microseconds
        category = kernel_category(event.name)
        by_cat[category] += (end - start) / 1e6
        intervals.append((start, end, category != "host<->device copies"))
    busy, compute_busy = _union(intervals), _union([i for i in intervals if i[2]])
    idle = max(0.0, wall - compute_busy)  # host copies overlapping the kernels do not hide the kernels' gaps
    share = {k: round(v / wall, 3) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])}
    share["idle"] = round(idle / wall, 3)
    top = sorted(attention.items(), key=lambda kv: -kv[1])[:3]
    return {"wall_s": round(wall, 3), "gpu_busy_s": round(busy, 3), "compute_busy_s": round(compute_busy, 3),
            "share": share, "sdpa_ops": sorted(sdpa_ops),
            "attention_kernels": [[name, round(sec, 3)] for name, sec in top]}
