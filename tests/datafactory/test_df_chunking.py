"""Chunk budgets and boundaries with the real embedded tokenizer; seeded chunk choice and answer-type mix."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from datafactory.chunking import choose_answer_type, choose_chunks, chunk_document, count_tokens, tokenize_texts
from datafactory.documents import sample_corpus_dir


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


def _sentences(n: int, start: int = 0) -> str:
    return " ".join(f"Sentence number {i} tells of the walk that Anne took to the village of Uppercross."
                    for i in range(start, start + n))


def _check_cover(tokenized, chunks, budget):
    assert chunks[0].token_start == 0 and chunks[-1].token_end == tokenized.n_tokens
    for before, after in zip(chunks, chunks[1:]):
        assert before.token_end == after.token_start  # contiguous, no token lost or repeated
    for chunk in chunks:
        assert 1 <= chunk.n_tokens <= budget
        assert chunk.text == tokenized.text[chunk.char_start:chunk.char_end]
        assert chunk.text == chunk.text.strip() and chunk.text


def test_paragraph_boundaries(tokenizer):
    text = "\n\n".join(_sentences(3, 3 * i) for i in range(40))
    tokenized = tokenize_texts([text], tokenizer)[0]
    chunks = chunk_document(tokenized, 300)
    _check_cover(tokenized, chunks, 300)
    assert len(chunks) > 3
    for chunk in chunks[:-1]:
        assert text[chunk.char_end:].startswith("\n\n"), "a chunk must end where a paragraph ends"
        assert chunk.n_tokens >= 150


def test_sentence_boundaries_when_no_paragraphs(tokenizer):
    text = _sentences(120)
    tokenized = tokenize_texts([text], tokenizer)[0]
    chunks = chunk_document(tokenized, 200)
    _check_cover(tokenized, chunks, 200)
    for chunk in chunks[:-1]:
        assert chunk.text.endswith("."), chunk.text[-40:]
        assert chunk.n_tokens >= 100


def test_token_boundaries_as_last_resort(tokenizer):
    text = " ".join(f"word{i}" for i in range(3000))  # no paragraph, no sentence end
    tokenized = tokenize_texts([text], tokenizer)[0]
    chunks = chunk_document(tokenized, 256)
    _check_cover(tokenized, chunks, 256)
    assert all(c.n_tokens == 256 for c in chunks[:-1])


def test_budget_on_a_real_book(tokenizer):
    text = (sample_corpus_dir() / "persuasion.txt").read_text()[:120_000]
    tokenized = tokenize_texts([text], tokenizer)[0]
    chunks = chunk_document(tokenized, 500)
    _check_cover(tokenized, chunks, 500)
    on_paragraph = sum(bool(re.match(r"\s*\n\s*\n", text[c.char_end:c.char_end + 10])) for c in chunks[:-1])
    assert on_paragraph / (len(chunks) - 1) > 0.9
    recounted = count_tokens([c.text for c in chunks], tokenizer)
    assert max(recounted) <= 502  # re-tokenizing a cut text may merge differently at its edges


def test_chunk_choice_is_seeded(tokenizer):
    tokenized = tokenize_texts(["\n\n".join(_sentences(3, 3 * i) for i in range(60))], tokenizer)[0]
    chunks = chunk_document(tokenized, 128)
    first = choose_chunks(chunks, 3, seed=1, doc_id="d", chunk_tokens=128)
    assert first == choose_chunks(chunks, 3, seed=1, doc_id="d", chunk_tokens=128)
    assert len(first) == 3 and [c.index for c in first] == sorted(c.index for c in first)
    picks = {tuple(c.index for c in choose_chunks(chunks, 3, seed=s, doc_id="d", chunk_tokens=128)) for s in range(10)}
    assert len(picks) > 1
    assert choose_chunks(chunks, "all", 0, "d") == chunks
    assert len(choose_chunks(chunks, 10_000, 0, "d")) <= len(chunks)


def test_short_tail_chunk_is_not_picked(tokenizer):
    text = "\n\n".join(_sentences(3, 3 * i) for i in range(9)) + "\n\nThe end."
    chunks = chunk_document(tokenize_texts([text], tokenizer)[0], 200)
    assert chunks[-1].n_tokens < 50
    for seed in range(20):
        assert chunks[-1] not in choose_chunks(chunks, 1, seed, "d", chunk_tokens=200)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_answer_type_ratio(ratio):
    kinds = Counter(choose_answer_type(7, f"doc{d}", c, ratio) for d in range(40) for c in range(50))
    share = kinds["short"] / 2000
    assert abs(share - ratio) < 0.04
    assert choose_answer_type(7, "doc1", 3, ratio) == choose_answer_type(7, "doc1", 3, ratio)
