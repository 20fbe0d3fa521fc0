"""Batching of assembled rows: right-pad to the batch's longest row, position ids per the attention mode.

No attention mask is passed on purpose: padding is only ever on the right of causal rows, so no real token can
attend to it, and with `position_ids` restarting per sample transformers builds the block-diagonal causal mask
itself (FlexAttention block mask, varlen FlashAttention, or a dense mask for SDPA/eager).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from finetune.masks import PAD_LABEL
from finetune.packing import position_ids


@dataclass
class RowCollator:
    pad_id: int
    per_sample_attention: bool = True

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), PAD_LABEL, dtype=torch.long)
        positions = torch.empty((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.as_tensor(row["input_ids"])
            labels[i, :n] = torch.as_tensor(row["labels"])
            positions[i] = torch.as_tensor(position_ids(list(row["seq_lengths"]), width, self.per_sample_attention))
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
