"""Attention kernel choice, in one place for both trainers and the probes (`--attn-implementation` in both
trainers; the probes take `auto`).

| choice | causal rows (one sample, right padding at most) | rows with a mask (packed samples, padding) |
|---|---|---|
| `cudnn` | SDPA, cuDNN backend only (fails loudly where cuDNN cannot run); GQA: repeated K/V | FlexAttention block mask |
| `cudnn_gqa` | as `cudnn`, GQA heads passed as they are (`enable_gqa`): no repeated K/V | FlexAttention block mask |
| `flash` | SDPA, flash backend only (FlashAttention-2: ~0.55x cuDNN's speed on an H200) | FlexAttention block mask |
| `flex` (or `flex_attention`) | FlexAttention | FlexAttention |
| `sdpa` | SDPA, torch's own choice (cuDNN on an H200 with torch 2.11) | dense mask (SDPA's slow path) |
| `eager` | transformers' matmul + softmax | dense mask |
| `flash_attention_2` | the flash-attn package (varlen for packed rows, batch of one row) | varlen |
| `auto` | `cudnn` on CUDA with compute capability >= 9.0 and cuDNN >= 9; `flash` on other GPUs; else `sdpa` | |

`cudnn`, `cudnn_gqa` and `flash` (`longscale_cudnn`, `longscale_cudnn_gqa`, `longscale_fa2`) are attention functions registered with transformers'
AttentionInterface (with a mask function that gives no mask for causal rows and a FlexAttention BlockMask
otherwise), so the model config names them like any other implementation. The SDPA backend is chosen by `sdpa_kernel` *inside* the attention function:
dynamo traces that context manager, so the choice lives in each compiled decoder layer's graph (issue 16 saw a
context set around the training step lost once the layers were compiled), and FSDP, PEFT or the Trainer cannot
undo it (seen on an H200: the compiled steps ran `aten::_scaled_dot_product_cudnn_attention` and its backward).
Trade-off: `cudnn` (and so `auto`) gives cuDNN the key/value heads repeated for grouped-query attention (more
activation memory: 2 x (heads - kv heads) x head_dim x 2 bytes a token a layer, plus the copy and the backward's
sum) rather than relying on its own GQA support, which this torch version does not document; `cudnn_gqa` relies on
it (benchmarks/bench_train_limits.py times both on the GPU; it ran there with torch 2.11 / cuDNN 9.19).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from longscale.common.config import ConfigModel
from longscale.common.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it runs: the CLI builds its parser from this module's config
    import torch

AttnKernel = Literal["auto", "cudnn", "cudnn_gqa", "flash", "flex", "flex_attention", "sdpa", "eager", "flash_attention_2"]


class AttentionConfig(ConfigModel):
    """The attention sub-model both trainers use (one spelling: attn_implementation)."""

    attn_implementation: AttnKernel = Field(
        "auto", description="attention kernel (pretrain/attention.py): auto = cudnn on Hopper-class GPUs, flash on "
        "other GPUs (packed rows: FlexAttention), sdpa on CPU; or cudnn, cudnn_gqa (no repeated K/V), flash, flex, sdpa, "
        "eager, flash_attention_2")


KERNELS: tuple[str, ...] = ("auto", "cudnn", "cudnn_gqa", "flash", "flex", "flex_attention", "sdpa", "eager", "flash_attention_2")
# no "flash" in our names: transformers takes such names for the flash-attn package
CUDNN_IMPL, CUDNN_GQA_IMPL, FLASH_IMPL = "longscale_cudnn", "longscale_cudnn_gqa", "longscale_fa2"
_OURS = (CUDNN_IMPL, CUDNN_GQA_IMPL, FLASH_IMPL)
_IMPLEMENTATIONS = {"cudnn": CUDNN_IMPL, "cudnn_gqa": CUDNN_GQA_IMPL, "flash": FLASH_IMPL, "flex": "flex_attention", "flex_attention": "flex_attention",
                    "sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash_attention_2"}
MIN_CUDNN = 90000  # cuDNN 9.0: the first with SDPA training kernels for Hopper


class AttentionKernelError(ConfigError):
    """The requested kernel cannot run on this device (the message says why and what would)."""


@dataclass(frozen=True)
class Hardware:
    """What the kernel choice depends on; `detect()` reads it, tests build it by hand."""

    cuda: bool
    capability: tuple[int, int] = (0, 0)
    cudnn_version: int = 0

    @property
    def cudnn_attention(self) -> bool:
        return self.cuda and self.capability >= (9, 0) and self.cudnn_version >= MIN_CUDNN

    @classmethod
    def detect(cls, device: torch.device | str | None = None) -> "Hardware":
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return cls(cuda=False)
        version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 0
        return cls(cuda=True, capability=torch.cuda.get_device_capability(device), cudnn_version=version or 0)


def choose_kernel(kernel: str, hardware: Hardware | None = None) -> str:
    """The concrete kernel for `kernel` on `hardware` (auto resolved; an impossible explicit choice raises)."""
    if kernel not in KERNELS:
        raise AttentionKernelError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    hardware = hardware or Hardware.detect()
    if kernel == "auto":
        return "cudnn" if hardware.cudnn_attention else "flash" if hardware.cuda else "sdpa"
    if kernel in ("cudnn", "cudnn_gqa") and not hardware.cudnn_attention:
        found = (f"CUDA capability {hardware.capability[0]}.{hardware.capability[1]}, cuDNN {hardware.cudnn_version}"
                 if hardware.cuda else "no CUDA device")
        raise AttentionKernelError(f"attention kernel {kernel} needs a CUDA GPU of compute capability >= 9.0 with "
                                   f"cuDNN >= 9 (found: {found}); use auto or flash")
    return kernel


def attn_implementation(kernel: str, hardware: Hardware | None = None) -> str:
    """The transformers `attn_implementation` name for `kernel` (registering ours first)."""
    register()
    return _IMPLEMENTATIONS[choose_kernel(kernel, hardware)]


def _backends(impl: str):
    from torch.nn.attention import SDPBackend

    cudnn = [SDPBackend.CUDNN_ATTENTION]
    return {CUDNN_IMPL: cudnn, CUDNN_GQA_IMPL: cudnn, FLASH_IMPL: [SDPBackend.FLASH_ATTENTION]}[impl]


def _any_backend():
    """Every SDPA backend enabled: torch's own choice (decoding steps)."""
    from torch.nn.attention import SDPBackend

    return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, heads, length, dim = x.shape
    return x[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


def causal_or_flex_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, *, impl: str, **kwargs):
    """(B, H, T, D) q/k/v -> ((B, T, H, D) output, None). No mask: causal SDPA on the implementation's backend (one
    query token, i.e. decoding: plain SDPA over all keys, torch's backend); a mask (packed samples, padding):
    transformers' FlexAttention forward."""
    import torch
    from torch.nn.attention import sdpa_kernel

    if attention_mask is not None:
        from transformers.integrations.flex_attention import flex_attention_forward

        return flex_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    causal = query.shape[2] > 1
    repeat = groups > 1 and impl == CUDNN_IMPL and causal
    if repeat:
        key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    with sdpa_kernel(_backends(impl) if causal else _any_backend()):
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=groups > 1 and not repeat)
    return out.transpose(1, 2).contiguous(), None


def causal_or_block_mask(*, q_length: int, kv_length: int, attention_mask=None, allow_is_causal_skip: bool = True,
                         **kwargs):
    """No mask where SDPA needs none: a causal row (query and keys of one length) or one query token (decoding),
    without padding and without packed samples (transformers turns `allow_is_causal_skip` off when the position
    ids restart); otherwise a FlexAttention BlockMask."""
    import torch
    from transformers.masking_utils import flex_attention_mask

    no_padding = attention_mask is None or (not torch.compiler.is_compiling() and bool(attention_mask.all()))
    if allow_is_causal_skip and no_padding and (q_length == kv_length or q_length == 1):
        return None
    return flex_attention_mask(q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, **kwargs)


_registered = False


def register() -> None:
    """Register `longscale_cudnn`, `longscale_cudnn_gqa` and `longscale_fa2` with transformers (attention and mask functions); idempotent."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    for impl in _OURS:
        fn = partial(causal_or_flex_attention, impl=impl)
        fn.__name__ = impl  # type: ignore[attr-defined]  # transformers logs the function's name
        AttentionInterface.register(impl, fn)
        ALL_MASK_ATTENTION_FUNCTIONS.register(impl, causal_or_block_mask)
    _registered = True


def sdpa_ops_in(fn, *args) -> set[str]:
    """Names of the aten SDPA ops that `fn(*args)` runs (one forward + backward under the profiler): the proof
    of which backend a (compiled) model really uses, read by the benchmarks on the GPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn(*args)
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key and "attention" in e.key}
