"""Prompts: the paper's plain form, chat form, and left truncation that always keeps the question."""
import pytest
from transformers import AutoTokenizer

from evaluation.prompts import (
    Example,
    PromptTooLong,
    count_prompt_tokens,
    fit_prompt,
    render,
)


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    return AutoTokenizer.from_pretrained(embedded_model_dir)


def long_example():
    words = " ".join(f"word{i}" for i in range(3000))
    return Example(id="e1", context=f"START {words} THE-END", question="What is the last word?", answers=["THE-END"])


def test_plain_prompt_is_the_papers_form_with_shots():
    ex = Example(id="q", context="CTX", question="Who?", answers=["Ann"])
    shot = Example(id="s", context="C0", question="What?", answers=["A0"])
    assert render(ex, "CTX", "plain")[0]["content"] == "CTX Q: Who?, A:"
    assert render(ex, "CTX", "plain", [shot])[0]["content"] == "C0 Q: What?, A: A0\n\nCTX Q: Who?, A:"


@pytest.mark.parametrize("style", ["plain", "chat"])
def test_left_truncation_keeps_question_and_end(tokenizer, style):
    ex = long_example()
    messages, info = fit_prompt(ex, tokenizer, 500, style)
    text = messages[0]["content"]
    assert count_prompt_tokens(tokenizer, messages) <= 500
    assert info["prompt_tokens"] <= 500 and info["prompt_tokens"] > 450  # the budget is used, not wasted
    assert ex.question in text and "THE-END" in text  # the question and the end of the context survive
    assert "START" not in text  # the beginning was cut
    assert info["context_tokens_dropped"] > 0


def test_context_that_fits_is_untouched(tokenizer):
    ex = Example(id="s", context="A short context.", question="Q?", answers=["x"])
    messages, info = fit_prompt(ex, tokenizer, 200, "chat")
    assert messages[0]["content"].startswith("A short context.") and info["context_tokens_dropped"] == 0


def test_question_alone_over_budget_is_an_error(tokenizer):
    ex = Example(id="big", context="ctx", question="why " * 300, answers=["x"])
    with pytest.raises(PromptTooLong, match="big"):
        fit_prompt(ex, tokenizer, 100, "chat")


def test_options_are_listed_with_letters():
    ex = Example(id="m", context="c", question="Pick", answers=["b"], options=["a", "b"], gold_index=1)
    assert ex.question_text() == "Pick\n(A) a\n(B) b"
