"""Finetune test data: FT-Short files in all three formats and a data-factory-like long output directory.

The long instances are built here from the sample books with the paper's Figure 10 template and made-up
questions (finetune reads the factory's files, it never imports the factory); each record follows the shared
instance contract (tests/instance_records.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.instance_records import instance_record

REPO = Path(__file__).resolve().parents[2]
BOOKS = sorted((REPO / "datafactory" / "sample_corpus").glob("*.txt"))


def write_short(path: Path, n: int = 12) -> Path:
    """n FT-Short records cycling through messages / prompt-completion / Alpaca formats."""
    lines = []
    for i in range(n):
        q, a = f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}." + " Indeed." * (i % 5)
        if i % 3 == 0:
            lines.append({"id": f"s{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        elif i % 3 == 1:
            lines.append({"id": f"s{i}", "prompt": q, "completion": a})
        else:
            lines.append({"id": f"s{i}", "instruction": "Answer the sum.", "input": q, "output": a})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def write_long_dir(path: Path, sizes_chars: list[int]) -> Path:
    """A generation output dir with `instances.jsonl`: one instance per size, documents cut from the books."""
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, size in enumerate(sizes_chars):
        book = BOOKS[i % len(BOOKS)]
        text = book.read_text(encoding="utf-8")
        start = 5000 + 997 * i
        doc = text[start:start + size]
        lines.append(instance_record(f"long-{i}", book.stem, doc, f"Who speaks in part {i}?",
                                     f"The narrator of part {i}.", answer_type="normal"))
    (path / "instances.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def short_file(tmp_path) -> Path:
    return write_short(tmp_path / "short.jsonl")


@pytest.fixture
def long_dir(tmp_path) -> Path:
    return write_long_dir(tmp_path / "gen", [1500, 2600, 4000])


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir):
    from finetune.assemble import load_tokenizer

    return load_tokenizer(str(embedded_model_dir))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, embedded_model_dir) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with the embedded model's real tokenizer; RoPE ABF theta 5e5."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      rope_theta=500000.0, tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
