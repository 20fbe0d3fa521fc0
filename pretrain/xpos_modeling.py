"""xPos ABF (Sun et al., 2022) as a Llama variant that transformers saves and reloads.

This file is self-contained on purpose: `save_xpos_checkpoint` copies it into the checkpoint as
`modeling_xpos_llama.py` and points `auto_map` at it, so
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` rebuilds the model anywhere.

xPos on top of RoPE: for dimension pair i of a head of size d (i = 0..d/2-1),
    zeta_i = (i / (d/2) + gamma) / (1 + gamma)
the query at position n is multiplied by zeta_i^((n - c)/scale_base) and the key by zeta_i^(-(n - c)/scale_base),
so q_m . k_n carries zeta_i^((m - n)/scale_base): a smooth decay with distance. The centre c only keeps the
factors in range (it cancels in every score). A per-pair scale commutes with the pair's rotation, so the
scale is applied to the q/k projections' outputs: the weights, their names and the attention code are
Llama's own. The trade-off: the scale for the current positions is handed from the rotary module to the
projections through a small shared state object, set once per forward of the model.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaRotaryEmbedding


class XPosLlamaConfig(LlamaConfig):
    """LlamaConfig plus xPos: gamma (0.4), scale_base (512), centre, and a switch to turn the scaling off."""

    model_type = "xpos_llama"

    def __init__(self, xpos_gamma: float = 0.4, xpos_scale_base: float = 512.0, xpos_center: int | None = None,
                 use_xpos_scaling: bool = True, **kwargs):
        self.xpos_gamma = float(xpos_gamma)
        self.xpos_scale_base = float(xpos_scale_base)
        self.use_xpos_scaling = bool(use_xpos_scaling)
        super().__init__(**kwargs)
        self.xpos_center = int(xpos_center if xpos_center is not None else self.max_position_embeddings // 2)


def xpos_zeta(head_dim: int, gamma: float) -> torch.Tensor:
    """zeta_i = (i/(d/2) + gamma)/(1 + gamma) for the d/2 rotation pairs, in float64."""
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    return (i / (head_dim / 2) + gamma) / (1 + gamma)


def xpos_scale(position_ids: torch.Tensor, head_dim: int, gamma: float, scale_base: float,
               center: int) -> torch.Tensor:
    """The query factor zeta^((n - c)/scale_base), shape (*position_ids.shape, head_dim), in HF's half layout."""
    zeta = xpos_zeta(head_dim, gamma).to(position_ids.device)
    power = (position_ids.to(torch.float64) - center)[..., None] / scale_base
    half = zeta ** power
    return torch.cat((half, half), dim=-1).float()


class _XPosState:
    """The scale of the positions being processed (set by the rotary module, read by q/k projections)."""

    scale: torch.Tensor | None = None


class XPosScaledLinear(nn.Linear):
    """A q or k projection whose output heads are multiplied by the xPos scale (k: its inverse)."""

    def bind(self, state: _XPosState, head_dim: int, inverse: bool) -> None:
        object.__setattr__(self, "_xpos_state", state)  # plain attribute, not a submodule
        self._xpos_head_dim, self._xpos_inverse = head_dim, inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        scale = getattr(self, "_xpos_state", None) and self._xpos_state.scale
        if scale is None:
            return out
        factor = (1.0 / scale) if self._xpos_inverse else scale  # (B, T, D), float32
        heads = out.view(*out.shape[:-1], -1, self._xpos_head_dim)
        return (heads * factor.unsqueeze(-2).to(out.dtype)).view(out.shape)


class XPosRotaryEmbedding(LlamaRotaryEmbedding):
    """Llama's rotary embedding (with the config's base) that also publishes the xPos scale."""

    def __init__(self, config: XPosLlamaConfig, state: _XPosState):
        super().__init__(config)
        object.__setattr__(self, "_xpos_state", state)

    def forward(self, x, position_ids):
        cfg = self.config
        if cfg.use_xpos_scaling:
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            self._xpos_state.scale = xpos_scale(position_ids, head_dim, cfg.xpos_gamma, cfg.xpos_scale_base,
                                                cfg.xpos_center)
        else:
            self._xpos_state.scale = None
        return super().forward(x, position_ids)


class XPosLlamaModel(LlamaModel):
    config_class = XPosLlamaConfig

    def __init__(self, config: XPosLlamaConfig):
        super().__init__(config)
        state = _XPosState()
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


class XPosLlamaForCausalLM(LlamaForCausalLM):
    config_class = XPosLlamaConfig

    def __init__(self, config: XPosLlamaConfig):
        super().__init__(config)
        self.model = XPosLlamaModel(config)
        self.post_init()
