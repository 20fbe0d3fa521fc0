"""Per-sample attention inside packed rows really isolates samples (tiny random Llama, real transformers kernels)."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from finetune.collate import RowCollator


def tiny_llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation(attn)
    return model


def row(a, b, pad=6):
    return {"input_ids": a + b + [0] * pad, "labels": a + b + [-100] * pad, "seq_lengths": [len(a), len(b)]}


def logits(model, rows, per_sample):
    batch = RowCollator(pad_id=0, per_sample_attention=per_sample)(rows)
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch, use_cache=False).logits  # as in training: no KV cache, so packing is detected


ATTN = ["sdpa", "eager", "flex_attention"]


@pytest.mark.parametrize("attn", ATTN)
def test_changing_one_sample_leaves_the_other_unchanged(attn):
    model = tiny_llama(attn)
    g = torch.Generator().manual_seed(1)
    a, a2, b = (torch.randint(1, 128, (n,), generator=g).tolist() for n in (10, 10, 12))
    first, second = logits(model, [row(a, b)], True), logits(model, [row(a2, b)], True)
    assert not torch.allclose(first[0, :10], second[0, :10])  # sample A did change
    torch.testing.assert_close(first[0, 10:22], second[0, 10:22], atol=1e-5, rtol=1e-5)  # sample B did not
    # and B alone, at positions 0..11, gives the same logits as B inside the packed row
    alone = logits(model, [{"input_ids": b, "labels": b, "seq_lengths": [12]}], True)
    torch.testing.assert_close(alone[0], first[0, 10:22], atol=1e-5, rtol=1e-5)


def test_across_mode_lets_samples_see_each_other():
    """The control: plain concatenation (the paper's) does mix samples, so the test above can fail."""
    model = tiny_llama("sdpa")
    g = torch.Generator().manual_seed(1)
    a, a2, b = (torch.randint(1, 128, (n,), generator=g).tolist() for n in (10, 10, 12))
    assert not torch.allclose(logits(model, [row(a, b)], False)[0, 10:22],
                              logits(model, [row(a2, b)], False)[0, 10:22], atol=1e-4)


def test_right_padding_never_reaches_real_tokens():
    model = tiny_llama("sdpa")
    a, b = list(range(1, 11)), list(range(20, 32))
    short_row = {"input_ids": a + b, "labels": a + b, "seq_lengths": [10, 12]}
    padded = row(a, b, pad=9)
    padded["input_ids"][-9:] = [77] * 9  # whatever sits in the padding
    out = logits(model, [short_row, padded], True)  # batch of two: the first is right-padded by the collator
    torch.testing.assert_close(out[0, :22], out[1, :22], atol=1e-5, rtol=1e-5)
