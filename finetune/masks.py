"""The loss masks, in exactly one place.

`sample_labels` turns a tokenized sample into labels (the input id where the token is trained on, -100
elsewhere; the model shifts them itself). Rules:
  - pretrain samples: every token (full LM loss);
  - long samples: output tokens, plus input tokens when `loss_on_long_input` (default on, paper section 4.3);
  - short samples: output tokens, plus input tokens when `loss_on_short_input` (default off);
  - the first token of every sample never carries loss: it would be predicted from the token before it,
    which belongs to another sample (or to nothing), and per-sample attention cannot see it;
  - padding never carries loss (`PAD_LABEL` is what the packer writes there).
"""
from __future__ import annotations

from finetune.tokenization import Sample

IGNORE_INDEX = -100
PAD_LABEL = IGNORE_INDEX


def sample_labels(sample: Sample, *, loss_on_long_input: bool, loss_on_short_input: bool) -> list[int]:
    if sample.kind == "pretrain":
        on_input = True
    elif sample.kind == "long":
        on_input = loss_on_long_input
    elif sample.kind == "short":
        on_input = loss_on_short_input
    else:
        raise ValueError(f"unknown sample kind {sample.kind!r}")
    labels = [tok if (out or on_input) else IGNORE_INDEX for tok, out in zip(sample.input_ids, sample.is_output)]
    if labels:
        labels[0] = IGNORE_INDEX
    return labels


def apply_loss_masks(samples: list[Sample], *, loss_on_long_input: bool, loss_on_short_input: bool) -> None:
    for sample in samples:
        sample.labels = sample_labels(sample, loss_on_long_input=loss_on_long_input,
                                      loss_on_short_input=loss_on_short_input)
