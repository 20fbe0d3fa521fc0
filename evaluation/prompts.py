"""Prompts for evaluation, and left truncation of the context to a token budget.

Two styles. `plain` is the paper's prompt for pretrained models, "{CONTEXT} Q: {QUESTION}, A:" (few-shot
examples, when given, go first in the same form). `chat` puts context and question in one user turn for chat
models. The engines are chat engines (they apply the model's chat template), so a `plain` prompt also
travels as one user turn; the budget counts the template either way.

Truncation cuts the context from the LEFT (the end of a document, nearest the question, is kept, as in the
paper); the question, options, instructions and few-shot examples are never cut. If even an empty context
does not fit, the example is reported as not fitting rather than silently mangled.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

PromptStyle = Literal["plain", "chat"]

CHAT_INSTRUCTION = "Answer the question based on the text above. Answer as concisely as you can, with a short phrase."


@dataclass(frozen=True)
class Example:
    """One evaluation item: a long context, a question, gold answers (and options for multiple choice)."""

    id: str
    context: str
    question: str
    answers: list[str]
    metric: str = "f1"
    options: list[str] | None = None
    gold_index: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def question_text(self) -> str:
        if not self.options:
            return self.question
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        return self.question + "\n" + "\n".join(f"({letters[i]}) {opt}" for i, opt in enumerate(self.options))


class PromptTooLong(ValueError):
    """The prompt does not fit the budget even with the whole context cut away."""


def render(example: Example, context: str, style: PromptStyle, shots: Sequence[Example] = ()) -> list[dict[str, str]]:
    """The prompt as chat messages (one user turn) for `context` (the possibly truncated context)."""
    if style == "plain":
        parts = [f"{s.context} Q: {s.question_text()}, A: {s.answers[0]}" for s in shots]
        parts.append(f"{context} Q: {example.question_text()}, A:")
        return [{"role": "user", "content": "\n\n".join(parts)}]
    parts = [f"{s.context}\n\n{CHAT_INSTRUCTION}\nQuestion: {s.question_text()}\nAnswer: {s.answers[0]}" for s in shots]
    parts.append(f"{context}\n\n{CHAT_INSTRUCTION}\nQuestion: {example.question_text()}")
    return [{"role": "user", "content": "\n\n".join(parts)}]


def count_prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of the rendered prompt as the engine will see it (chat template + generation prompt)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return len(tokenizer(messages[-1]["content"], add_special_tokens=True)["input_ids"])


def fit_prompt(example: Example, tokenizer: Any, max_tokens: int, style: PromptStyle = "chat",
               shots: Sequence[Example] = ()) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Messages of at most `max_tokens` tokens, the context cut from the left; raises PromptTooLong.

    Returns the messages and {"prompt_tokens", "context_tokens", "context_tokens_dropped"}.
    """
    overhead = count_prompt_tokens(tokenizer, render(example, "", style, shots))
    budget = max_tokens - overhead
    if budget <= 0:
        raise PromptTooLong(f"{example.id}: question, instructions and few-shot examples take {overhead} tokens, "
                            f"over the {max_tokens}-token budget")
    ids = tokenizer(example.context, add_special_tokens=False)["input_ids"]
    keep = min(len(ids), budget)
    while True:  # re-tokenizing a cut text can differ by a few tokens at the boundary
        context = tokenizer.decode(ids[len(ids) - keep:]) if keep < len(ids) else example.context
        messages = render(example, context, style, shots)
        total = count_prompt_tokens(tokenizer, messages)
        if total <= max_tokens or keep == 0:
            break
        keep = max(0, keep - (total - max_tokens) - 2)
    if total > max_tokens:
        raise PromptTooLong(f"{example.id}: prompt of {total} tokens does not fit {max_tokens}")
    return messages, {"prompt_tokens": total, "context_tokens": keep, "context_tokens_dropped": len(ids) - keep}
