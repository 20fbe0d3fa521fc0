"""How a probe talks to a model: two small callables, so that a model-free oracle can stand in for it.

`Answerer(prompts: list[list[int]], max_new_tokens) -> list[str]` (greedy continuations, batched) and
`TokenLosses(input_ids: LongTensor[1, T]) -> FloatTensor[T-1]` (next-token loss at each position);
`HFModel` provides both for a transformers causal LM.

Rows are scored without a KV cache and, for a packed row, with its `position_ids` (restarting at 0 per
sample): transformers keeps attention inside each sample only when it sees restarting positions and no
cache (with `use_cache=True` it builds an empty cache, skips that detection and lets samples attend to
each other). This is the one place outside the trainers that runs a model on rows; evaluation only
generates from padded prompts (datafactory engines), never from packed rows.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

Answerer = Callable[[list[list[int]], int], list[str]]
TokenLosses = Callable[[torch.Tensor], torch.Tensor]


class HFModel:
    """A transformers causal LM as an Answerer and a TokenLosses (greedy decoding, chunked losses)."""

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto"):
        from longscale.common.tokenizers import load_tokenizer
        from pretrain.attention import Hardware, attn_implementation
        from pretrain.modeling import load_model

        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        torch_dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
                       "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        attn = attn_implementation("auto", Hardware.detect(self.device))  # cuDNN on Hopper, as in training
        self.model = load_model(model_dir, dtype=torch_dtype, attn_implementation=attn).to(self.device).eval()
        self.tokenizer = load_tokenizer(str(model_dir), flag="--model")

    @torch.no_grad()
    def answer(self, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
        """Greedy answers; prompts of one length go together unpadded (no mask: SDPA stays on flash)."""
        answers: dict[int, str] = {}
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        for idx in by_len.values():
            for s in range(0, len(idx), batch_size):
                part = idx[s:s + batch_size]
                ids = torch.tensor([prompts[i] for i in part], device=self.device)
                out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.eos_token_id)
                for i, row in zip(part, out[:, ids.shape[1]:]):
                    answers[i] = self.tokenizer.decode(row, skip_special_tokens=True)
        return [answers[i] for i in range(len(prompts))]

    @torch.no_grad()
    def token_losses(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token losses of one row (1, T). With `position_ids` of a packed row each sample is scored as
        if alone; the loss of a sample's first token (predicted across the boundary) is NaN."""
        from pretrain.loss import per_token_losses

        ids = input_ids.to(self.device)
        extra = {} if position_ids is None else {"position_ids": position_ids.to(self.device)}
        hidden = self.model.model(input_ids=ids, use_cache=False, **extra).last_hidden_state
        losses = per_token_losses(hidden, self.model.lm_head.weight, ids)[0].float().cpu()
        if position_ids is not None:
            losses[position_ids[0, 1:].cpu() == 0] = float("nan")
        return losses
