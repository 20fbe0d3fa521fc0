"""A tiny random Llama with the embedded model's real tokenizer, for the pretrainer and CLI tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def save_tiny_llama(out: Path, tokenizer_dir: Path, *, max_positions: int, rope_theta: float, **config) -> Path:
    """Save a seeded 2-layer Llama (hidden 32) to `out` with the tokenizer files of `tokenizer_dir`."""
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                                 tie_word_embeddings=True,
                                 rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                                 **config)).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out
