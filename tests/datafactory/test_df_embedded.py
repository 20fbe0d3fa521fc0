"""The embedded model's HF folder: its tokenizer's special tokens agree with the model config."""
from __future__ import annotations

import json
from types import SimpleNamespace

from transformers import AutoTokenizer

from datafactory.embedded import align_special_tokens


def test_converted_tokenizer_ends_turns_with_the_config_eos(embedded_model_dir):
    config = json.loads((embedded_model_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    assert tokenizer.eos_token_id == config["eos_token_id"] and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token_id == config["bos_token_id"]


def test_a_wrong_gguf_eos_is_replaced_by_the_config_one(embedded_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    tokenizer.eos_token = "<|im_start|>"  # what transformers 5.17's GGUF conversion produced
    align_special_tokens(tokenizer, SimpleNamespace(bos_token_id=1, eos_token_id=2))
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.bos_token_id == 1
