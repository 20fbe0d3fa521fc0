"""Token-level loss masks on hand-built samples with the embedded model's real tokenizer and chat template."""
from __future__ import annotations

import pytest

from finetune.masks import IGNORE_INDEX, sample_labels
from finetune.tokenization import tokenize_record

QA = [{"role": "user", "content": "Name the heroine of Persuasion."},
      {"role": "assistant", "content": "Anne Elliot."}]
MULTI = [{"role": "user", "content": "First question?"}, {"role": "assistant", "content": "First answer."},
         {"role": "user", "content": "Second question?"}, {"role": "assistant", "content": "Second answer."}]


def loss_text(tokenizer, sample, labels) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX])


def check_aligned(sample, labels):
    assert len(labels) == len(sample.input_ids)
    for tok, lab in zip(sample.input_ids, labels):
        assert lab == IGNORE_INDEX or lab == tok


@pytest.mark.parametrize("kind", ["short", "long"])
def test_output_only_loss_is_exactly_the_assistant_turn(tokenizer, kind):
    sample = tokenize_record(tokenizer, {"id": "a", "kind": kind, "messages": QA})
    labels = sample_labels(sample, loss_on_long_input=False, loss_on_short_input=False)
    check_aligned(sample, labels)
    assert loss_text(tokenizer, sample, labels) == "Anne Elliot.<|im_end|>\n"
    # the loss tokens are one contiguous span at the very end: the assistant content and its end-of-turn
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert all(lab != IGNORE_INDEX for lab in labels[first:])
    assert tokenizer.decode(sample.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_long_input_loss_default_covers_everything_but_the_first_token(tokenizer):
    sample = tokenize_record(tokenizer, {"id": "a", "kind": "long", "messages": QA})
    labels = sample_labels(sample, loss_on_long_input=True, loss_on_short_input=False)
    assert labels[0] == IGNORE_INDEX
    assert labels[1:] == sample.input_ids[1:]
    # the short-input flag does not touch long samples, and vice versa
    assert sample_labels(sample, loss_on_long_input=True, loss_on_short_input=True) == labels
    short = tokenize_record(tokenizer, {"id": "b", "kind": "short", "messages": QA})
    assert sample_labels(short, loss_on_long_input=True, loss_on_short_input=False) == \
        sample_labels(short, loss_on_long_input=False, loss_on_short_input=False)
    assert sample_labels(short, loss_on_long_input=False, loss_on_short_input=True)[1:] == short.input_ids[1:]


def test_multi_turn_trains_every_assistant_turn_and_no_user_turn(tokenizer):
    sample = tokenize_record(tokenizer, {"id": "m", "kind": "short", "messages": MULTI})
    labels = sample_labels(sample, loss_on_long_input=True, loss_on_short_input=False)
    check_aligned(sample, labels)
    assert loss_text(tokenizer, sample, labels) == "First answer.<|im_end|>\nSecond answer.<|im_end|>\n"


def test_pretrain_text_always_has_full_loss(tokenizer):
    sample = tokenize_record(tokenizer, {"id": "p", "kind": "pretrain", "text": "It is a truth universally acknowledged."})
    assert sample.input_ids[-1] == tokenizer.eos_token_id
    for flags in [(False, False), (True, True)]:
        labels = sample_labels(sample, loss_on_long_input=flags[0], loss_on_short_input=flags[1])
        assert labels[0] == IGNORE_INDEX and labels[1:] == sample.input_ids[1:]
