"""The numpy word path (datafactory/byte_words.py): its word ends are the regex's (ASCII and UTF-8 texts without
non-ASCII whitespace), its keys tell every word apart, its hash table answers like a dict across growth and
restarts, and its counts and character ends equal the regex path's and a real encoding's (SmolLM2's tokenizer)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from datafactory import byte_words
from datafactory.byte_words import OTHER_WHITESPACE, WordTable, takes_fast_path, word_ends, word_keys
from datafactory.chunking import backend_of
from datafactory.config import GenerationConfig
from datafactory.documents import sample_corpus_dir
from datafactory.pipeline import load_tokenizers
from datafactory.word_tokens import WORDS, WordCounter

_PIECES = ["word", " word", "  ", "\n", "\n\n", "\t", "\x0b", "\x0c", "\r\n", "\x1c", "\x1f", "\x7f", "'s",
           " 123", "...", "!?", " \"quoted\"", "--", "x" * 15, " " + "y" * 15, "z" * 16, "w" * 40, "a", "\x01"]


_UNICODE = ["caf\u00e9", " \u2019tis", "\u201cquoted\u201d", "\u4e2d\u6587", "\U0001F600", " na\u00efve",
            "\u2014", "\u200b", "\ufeff", " \u00e9t\u00e9 " * 3, "\u0416\u0416\u0416\u0416\u0416\u0416\u0416\u0416\u0416"]


def _ascii_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_PIECES) for _ in range(n))


def _unicode_text(rng: random.Random, n: int) -> str:
    """Non-ASCII characters (curly quotes, accents, CJK, emoji, zero-width ones that are not whitespace) among
    ASCII pieces; no non-ASCII whitespace."""
    return "".join(rng.choice(_PIECES + _UNICODE) for _ in range(n))


def _books() -> list[str]:
    return [p.read_text() for p in sorted(sample_corpus_dir().glob("*.txt"))]


@pytest.fixture(scope="module")
def backend(embedded_model_dir):
    return backend_of(load_tokenizers(GenerationConfig(model=str(embedded_model_dir))).generator)


def test_word_ends_are_the_regex_words_ends():
    rng = random.Random(0)
    texts = ["", " ", "a", "  \n", "a ", " a", "a b", "\x1c\x1f", "x\x7f y"] + \
        [_ascii_text(rng, rng.randint(1, 300)) for _ in range(300)]
    texts += [_unicode_text(rng, rng.randint(1, 300)) for _ in range(300)]
    for text in texts:
        expected = np.cumsum([len(w.encode("utf-8")) for w in WORDS.findall(text)])
        got = word_ends(text.encode("utf-8"))
        assert got.tolist() == expected.tolist(), repr(text[:60])


def _keys(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    words = WORDS.findall(text)
    ends = np.cumsum([len(w) for w in words]).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    low, high = word_keys(text.encode("ascii") + b"\x00" * 16, starts, ends - starts)
    return words, list(zip(low.tolist(), high.tolist()))


def test_word_keys_tell_every_short_word_apart_and_leave_long_ones_unkeyed():
    rng = random.Random(1)
    words, keys = _keys(_ascii_text(rng, 5000) + "".join(" " + "q" * n for n in range(1, 30)))
    by_key: dict[tuple[int, int], str] = {}
    for word, key in zip(words, keys):
        if len(word) > byte_words.KEY_BYTES:
            assert key == (0, 0), word
            continue
        assert key[0] != 0
        assert by_key.setdefault(key, word) == word  # one word a key
    assert len(set(by_key.values())) == len(by_key)  # and one key a word
    assert any(len(w) == 16 for w in by_key.values()) and any(len(w) == 9 for w in by_key.values())


def test_the_hash_table_answers_like_a_dict_across_growth_and_restarts():
    rng = np.random.default_rng(2)
    table, reference = WordTable(limit=5000, bits=4), {}
    restarts = 0
    for _ in range(40):
        low = rng.integers(1, 2**63, size=300, dtype=np.uint64) | np.uint64(1)
        high = rng.integers(0, 4, size=300, dtype=np.uint64)  # many keys share a half
        known = table.lookup(low, high)
        for lo, hi, count in zip(low.tolist(), high.tolist(), known.tolist()):
            assert count == reference.get((lo, hi), 0)
        fresh = {(lo, hi) for lo, hi, c in zip(low.tolist(), high.tolist(), known.tolist()) if c == 0}
        fresh_low = np.array([k[0] for k in fresh], dtype=np.uint64)
        fresh_high = np.array([k[1] for k in fresh], dtype=np.uint64)
        counts = rng.integers(1, 50, size=len(fresh), dtype=np.int32)
        before = len(table)
        table.insert(fresh_low, fresh_high, counts)
        if len(table) < before + len(fresh):
            restarts += 1
            reference.clear()
        reference.update(zip(fresh, counts.tolist()))
        assert len(table) == len(reference) and table.size >= 4 * len(table)
    assert restarts >= 1


def test_fast_path_counts_equal_the_regex_path_and_a_real_encoding(backend, monkeypatch):
    counter = WordCounter.for_backend(backend)
    assert counter is not None
    rng = random.Random(3)
    texts = [_ascii_text(rng, rng.randint(700, 3000)) for _ in range(20)]
    texts += [_unicode_text(rng, rng.randint(700, 3000)) for _ in range(20)]
    for book in _books():
        assert takes_fast_path(book)
        for _ in range(10):
            a = rng.randrange(len(book) - 3000)
            texts.append(book[a:a + rng.randint(2048, 40_000)])
    monkeypatch.setattr(counter, "word_table", WordTable(limit=3000))  # restarts along the way
    for text in texts:
        assert takes_fast_path(text)
        ends, counts = counter.word_counts(text)
        words = WORDS.findall(text)
        assert ends.tolist() == np.cumsum([len(w) for w in words]).tolist()
        assert counts.tolist() == counter._counts(words).tolist()
        assert int(counts.sum()) == len(backend.encode(text, add_special_tokens=False).ids)


def test_short_texts_and_texts_with_nul_or_non_ascii_whitespace_take_the_regex():
    long_ascii = "word " * 500
    assert takes_fast_path(long_ascii) and takes_fast_path(long_ascii + "caf\u00e9 \u201cq\u201d")
    assert not takes_fast_path("word " * 10)
    assert not takes_fast_path(long_ascii + "\x00")
    for space in OTHER_WHITESPACE:
        assert not takes_fast_path(long_ascii + "caf\u00e9" + space + "x"), hex(ord(space))
