"""Rows from samples: short/pretrain samples packed best-fit-decreasing, long samples one per row, right-padded.

Packed rows are exactly `pack_length` tokens; the free tail of a row (only where nothing else fits) is padding.
Each row keeps `seq_lengths` (its samples' lengths, in order; padding excluded) and `sample_ids`, so attention
can be kept inside each sample and every sample can be traced. Best-fit-decreasing: samples longest first, each
into the fullest row it still fits (a sorted list of free space, bisected), else a new row; it is within 11/9 of
the optimal row count and, with many short samples, usually within one row of it.
"""
from __future__ import annotations

import bisect
from typing import Any

from finetune.masks import PAD_LABEL
from finetune.tokenization import Sample


def _row(samples: list[Sample], kind: str, length: int, pad_id: int) -> dict[str, Any]:
    ids = [t for s in samples for t in s.input_ids]
    labels = [t for s in samples for t in s.labels]
    pad = length - len(ids)
    if pad < 0:
        raise ValueError(f"row of {len(ids)} tokens does not fit {length}")
    return {"input_ids": ids + [pad_id] * pad, "labels": labels + [PAD_LABEL] * pad,
            "seq_lengths": [len(s) for s in samples], "sample_ids": [s.id for s in samples],
            "kind": kind, "length": length, "num_pad": pad}


def pack_best_fit_decreasing(samples: list[Sample], pack_length: int, pad_id: int) -> list[dict[str, Any]]:
    """Pack samples (each at most `pack_length` tokens) into rows of exactly `pack_length` tokens."""
    if not samples:
        return []
    kind = samples[0].kind
    rows: list[list[Sample]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for sample in sorted(samples, key=len, reverse=True):
        n = len(sample)
        if n > pack_length:
            raise ValueError(f"sample {sample.id} ({n} tokens) is longer than the pack length {pack_length}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, index = free.pop(at)
            rows[index].append(sample)
            bisect.insort(free, (space - n, index))
        else:
            rows.append([sample])
            bisect.insort(free, (pack_length - n, len(rows) - 1))
    return [_row(r, kind, pack_length, pad_id) for r in rows]


def long_row_length(n: int, *, pad_to: str, max_length: int, pad_multiple: int) -> int:
    if pad_to == "max":
        return max_length
    return min(-(-n // pad_multiple) * pad_multiple, max(max_length, n))


def long_rows(samples: list[Sample], *, pad_to: str, max_length: int, pad_multiple: int, pad_id: int) -> list[dict[str, Any]]:
    """One row per long sample, right-padded (never truncated: callers drop/reject overlong samples first)."""
    return [_row([s], "long", long_row_length(len(s), pad_to=pad_to, max_length=max_length, pad_multiple=pad_multiple),
                 pad_id) for s in samples]


def position_ids(seq_lengths: list[int], row_length: int, per_sample: bool) -> list[int]:
    """Positions restarting at 0 for each sample (per-sample) or one running count (across).

    Padding continues the last sample's count: it is never attended to by real tokens (causal, right side).
    """
    if not per_sample or not seq_lengths:
        return list(range(row_length))
    out = [p for n in seq_lengths for p in range(n)]
    start = seq_lengths[-1]
    out += range(start, start + row_length - len(out))
    return out
