"""Records -> token samples with the target model's tokenizer and chat template.

A chat record is rendered once with the model's template; the assistant turns' character spans are found by
rendering the conversation prefixes, and the text is tokenized once with offsets, so a token is "output"
exactly when it starts inside an assistant span (the end-of-turn token included: the model learns to stop).
This costs a few string renders instead of one tokenization per turn.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune.sources import DataError


@dataclass
class Sample:
    """One tokenized sample; `is_output` marks assistant tokens (all False for pretraining text)."""

    id: str
    kind: str  # short | long | pretrain
    input_ids: list[int]
    is_output: list[bool]
    labels: list[int] = field(default_factory=list)  # filled by masks.apply_loss_masks

    def __len__(self) -> int:
        return len(self.input_ids)


def _render(tokenizer, messages, *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages: list[dict[str, str]], text: str, where: str) -> list[tuple[int, int]]:
    spans = []
    for k, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:k], add_generation_prompt=True)) if k else 0
        end_text = _render(tokenizer, messages[: k + 1])
        if not text.startswith(end_text):
            raise DataError(f"{where}: the chat template does not render conversation prefixes as prefixes; "
                            "cannot locate the assistant turns")
        spans.append((start, len(end_text)))
    return spans


def tokenize_chat(tokenizer, record: dict[str, Any]) -> Sample:
    messages = record["messages"]
    text = _render(tokenizer, messages)
    spans = assistant_char_spans(tokenizer, messages, text, record["id"])
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    is_output = [any(s <= start < e for s, e in spans) for start, _ in enc["offset_mapping"]]
    return Sample(record["id"], record["kind"], list(enc["input_ids"]), is_output)


def tokenize_text(tokenizer, record: dict[str, Any]) -> Sample:
    ids = list(tokenizer(record["text"], add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return Sample(record["id"], record["kind"], ids, [False] * len(ids))


def tokenize_record(tokenizer, record: dict[str, Any]) -> Sample:
    return tokenize_chat(tokenizer, record) if "messages" in record else tokenize_text(tokenizer, record)


def split_sample(sample: Sample, max_tokens: int) -> list[Sample]:
    """Cut a sample longer than `max_tokens` into consecutive pieces (ids suffixed #1, #2, ...)."""
    if len(sample) <= max_tokens:
        return [sample]
    return [Sample(f"{sample.id}#{i // max_tokens + 1}", sample.kind, sample.input_ids[i:i + max_tokens],
                   sample.is_output[i:i + max_tokens]) for i in range(0, len(sample), max_tokens)]
