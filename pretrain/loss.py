"""Chunked linear + cross-entropy: the seq x vocab fp32 logits are never materialised.

The forward pass walks the tokens in chunks, computes each chunk's logits in fp32, its loss and, at
once, the gradients of the hidden states and of the output matrix (softmax minus one-hot), keeping only
those. Backward just scales them. The trade-off: the gradients are computed even when no backward
follows (evaluation should call `chunked_lm_loss(..., need_grad=False)`), and memory holds one chunk's
logits instead of all of them: at 32k x 49k vocab that is 6.4 GB of fp32 logits avoided.
"""
from __future__ import annotations

import torch

IGNORE = -100


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, compute_dtype):
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        n_valid = (targets != IGNORE).sum().clamp(min=1)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s, e in _chunks(h.shape[0], chunk):
            logits = (h[s:e] @ w.T).float()
            y = targets[s:e]
            valid = y != IGNORE
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            probs = torch.exp(logits - lse[:, None])
            probs[torch.arange(e - s, device=y.device), y.clamp(min=0)] -= 1.0
            probs *= valid[:, None] / n_valid
            grad_h[s:e] = (probs.to(compute_dtype) @ w).to(grad_h.dtype)
            grad_w += (probs.to(compute_dtype).T @ h[s:e]).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out).to(ctx.dtypes[0]), (grad_w * grad_out).to(ctx.dtypes[1]), None, None, None


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor, *, chunk: int = 4096,
                    labels: torch.Tensor | None = None, compute_dtype: torch.dtype | None = None,
                    need_grad: bool = True) -> torch.Tensor:
    """Mean next-token loss of (B, T, H) final hidden states against `labels` (default: input_ids)."""
    labels = input_ids if labels is None else labels
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    compute_dtype = compute_dtype or hidden.dtype
    if not need_grad:
        with torch.no_grad():
            return per_token_losses(hidden, weight, labels, chunk=chunk, compute_dtype=compute_dtype).nanmean()
    return _LinearCrossEntropy.apply(h, weight, y, chunk, compute_dtype)


@torch.no_grad()
def per_token_losses(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, chunk: int = 4096,
                     compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, T-1) loss of predicting token t+1 at each position (NaN where the label is ignored)."""
    compute_dtype = compute_dtype or hidden.dtype
    w = weight.to(compute_dtype)
    h = hidden[:, :-1].to(compute_dtype)
    y = labels[:, 1:]
    out = torch.empty(y.shape, dtype=torch.float32, device=hidden.device)
    for s, e in _chunks(h.shape[1], chunk):
        logits = (h[:, s:e] @ w.T).float()
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(2, y[:, s:e].clamp(min=0)[..., None]).squeeze(-1)
        out[:, s:e] = torch.where(y[:, s:e] != IGNORE, lse - picked, float("nan"))
    return out
