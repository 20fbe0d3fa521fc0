"""xPos ABF (Sun et al., 2022) as a Llama variant that transformers saves and reloads.

This file is self-contained on purpose: `save_xpos_checkpoint` copies it into the checkpoint as
`modeling_xpos_llama.py` and points `auto_map` at it, so
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` rebuilds the model anywhere.

xPos on top of RoPE: for dimension pair i of a head of size d (i = 0..d/2-1),
    zeta_i = (i / (d/2) + gamma) / (1 + gamma)
the query at position n is multiplied by zeta_i^((n - c)/scale_base) and the key by zeta_i^(-(n - c)/scale_base),
so q_m . k_n carries zeta_i^((m - n)/scale_base): a smooth decay with distance. The centre c cancels in every
score, so it is chosen to keep the factors near 1: each row's c is the middle of the positions of its first
forward (the prefill, or the whole sequence without a cache) and is kept while a KV cache grows, because the
cached keys were scaled with it. So the factors depend on the span of one sequence, not on where it sits: at
position 30000 of a 32k checkpoint they stay near 1 (a fixed centre at max_position_embeddings / 2 put them at
1e17 and float16 at NaN). In float16 a span whose factor would pass FP16_MAX_FACTOR (about 5.6k positions at
gamma 0.4, scale_base 512) is refused with a clear error instead of overflowing; bf16/fp32 have no limit.
A per-pair scale commutes with the pair's rotation, so the scale is applied to the q/k projections' outputs:
the weights, their names and the attention code are Llama's own. The trade-off: the scale for the current
positions is handed from the rotary module to the projections through a small shared state object, set once
per forward of the model.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaRotaryEmbedding


class XPosLlamaConfig(LlamaConfig):
    """LlamaConfig plus xPos: gamma (0.4), scale_base (512) and a switch to turn the scaling off. (An older
    checkpoint's fixed `xpos_center` is accepted and ignored: the centre is each sequence's own.)"""

    model_type = "xpos_llama"

    def __init__(self, xpos_gamma: float = 0.4, xpos_scale_base: float = 512.0, use_xpos_scaling: bool = True,
                 xpos_center: int | None = None, **kwargs):
        self.xpos_gamma = float(xpos_gamma)
        self.xpos_scale_base = float(xpos_scale_base)
        self.use_xpos_scaling = bool(use_xpos_scaling)
        super().__init__(**kwargs)


def xpos_zeta(head_dim: int, gamma: float) -> torch.Tensor:
    """zeta_i = (i/(d/2) + gamma)/(1 + gamma) for the d/2 rotation pairs, in float64."""
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    return (i / (head_dim / 2) + gamma) / (1 + gamma)


FP16_MAX_FACTOR = 1024.0  # float16 tops out at 65504; q/k values times the factor must stay well below it


def xpos_scale(position_ids: torch.Tensor, head_dim: int, gamma: float, scale_base: float,
               center: float | torch.Tensor) -> torch.Tensor:
    """The query factor zeta^((n - c)/scale_base), shape (*position_ids.shape, head_dim), in HF's half layout.
    `center` is a number or one per row (shape (batch, 1))."""
    zeta = xpos_zeta(head_dim, gamma).to(position_ids.device)
    power = (position_ids.to(torch.float64) - center)[..., None] / scale_base
    half = zeta ** power
    return torch.cat((half, half), dim=-1).float()


def row_centers(position_ids: torch.Tensor) -> torch.Tensor:
    """The middle of each row's positions, shape (batch, 1), float64."""
    pos = position_ids.to(torch.float64)
    return (pos.amin(dim=-1, keepdim=True) + pos.amax(dim=-1, keepdim=True)) / 2


def fp16_max_span(gamma: float, scale_base: float) -> int:
    """The widest position span one float16 sequence may cover before a factor passes FP16_MAX_FACTOR."""
    return int(2 * scale_base * math.log(FP16_MAX_FACTOR) / math.log((1 + gamma) / gamma))


class _XPosState:
    """The scale of the positions being processed (set by the rotary module, read by q/k projections), and
    each row's centre, kept while a KV cache grows (`fresh`: this forward starts a sequence)."""

    scale: torch.Tensor | None = None
    center: torch.Tensor | None = None
    fresh: bool = True


class XPosScaledLinear(nn.Linear):
    """A q or k projection whose output heads are multiplied by the xPos scale (k: its inverse)."""

    _xpos_state: _XPosState
    _xpos_head_dim: int
    _xpos_inverse: bool

    def bind(self, state: _XPosState, head_dim: int, inverse: bool) -> None:
        object.__setattr__(self, "_xpos_state", state)  # plain attribute, not a submodule
        self._xpos_head_dim, self._xpos_inverse = head_dim, inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        state = getattr(self, "_xpos_state", None)
        scale = state.scale if state is not None else None
        if scale is None:
            return out
        factor = (1.0 / scale) if self._xpos_inverse else scale  # (B, T, D), float32
        heads = out.view(*out.shape[:-1], -1, self._xpos_head_dim)
        return (heads * factor.unsqueeze(-2).to(out.dtype)).view(out.shape)


class XPosRotaryEmbedding(LlamaRotaryEmbedding):
    """Llama's rotary embedding (with the config's base) that also publishes the xPos scale."""

    _xpos_state: _XPosState

    def __init__(self, config: XPosLlamaConfig, state: _XPosState):
        super().__init__(config)
        object.__setattr__(self, "_xpos_state", state)

    def forward(self, x, position_ids):
        cfg, state = self.config, self._xpos_state
        if cfg.use_xpos_scaling:
            if state.fresh or state.center is None or state.center.shape[0] != position_ids.shape[0]:
                state.center = row_centers(position_ids)
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            state.scale = xpos_scale(position_ids, head_dim, cfg.xpos_gamma, cfg.xpos_scale_base, state.center)
            if x.dtype == torch.float16:
                _refuse_fp16_overflow(state.scale, position_ids, state.center, cfg)
        else:
            state.scale = None
        return super().forward(x, position_ids)


def _refuse_fp16_overflow(scale: torch.Tensor, position_ids: torch.Tensor, center: torch.Tensor, cfg) -> None:
    largest = float(scale.amax())
    if largest > FP16_MAX_FACTOR:
        span = int((position_ids.to(torch.float64) - center).abs().amax() * 2)
        raise ValueError(f"xPos in float16 overflows: positions spanning {span} tokens need q/k factors up to "
                         f"{largest:.3g} (float16 ends at 65504); keep one sequence within "
                         f"{fp16_max_span(cfg.xpos_gamma, cfg.xpos_scale_base)} positions or run xPos in "
                         "bfloat16 or float32")


class XPosLlamaModel(LlamaModel):
    config_class = XPosLlamaConfig
    _xpos_state: _XPosState

    def __init__(self, config: XPosLlamaConfig):
        super().__init__(config)
        state = _XPosState()
        object.__setattr__(self, "_xpos_state", state)
        self.rotary_emb = XPosRotaryEmbedding(config, state)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        for layer in self.layers:
            attn = layer.self_attn
            for name, inverse in (("q_proj", False), ("k_proj", True)):
                old = getattr(attn, name)
                new = XPosScaledLinear(old.in_features, old.out_features, bias=old.bias is not None,
                                       device=old.weight.device, dtype=old.weight.dtype)
                new.bind(state, head_dim, inverse)
                setattr(attn, name, new)
        self.post_init()

    def forward(self, *args, **kwargs):
        """Llama's forward; a call without a filled KV cache starts a sequence (new centres)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._xpos_state.fresh = cache is None or cache.get_seq_length() == 0
        return super().forward(*args, **kwargs)


class XPosLlamaForCausalLM(LlamaForCausalLM):
    config_class = XPosLlamaConfig

    def __init__(self, config: XPosLlamaConfig):
        super().__init__(config)
        self.model = XPosLlamaModel(config)
        self.post_init()
