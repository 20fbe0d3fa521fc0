"""Exact token counts of byte-level BPE tokenizers (GPT-2 style: SmolLM2, GPT-2, StarCoder) without running
the tokenizer over the text: the text is split into "words" (a whitespace run and the non-whitespace run
after it), and each distinct word is encoded once and its count cached.

Such a tokenizer splits the text with the GPT-2 regex, whose pieces never cross from non-whitespace into
whitespace, and encodes every piece alone with BPE; so a word as cut here is tokenized alone exactly as in
its text, and a text's count is the sum of its words' counts. Counting a 30 KB document this way costs
~1.5 ms of CPU (a C regex pass, one dictionary look-up a word, numpy sums), ~0.35-0.5 ms for a long text
(byte_words.py: the split and the look-ups in numpy), instead of ~9-17 ms for an encoding with offsets;
the plan of a document (its chunks, the min-doc-tokens filter, the instance's fit) then needs no encoding.

What it gives up: token positions inside a word of several tokens are interpolated (a chunk or an
instance window is cut inside a word only when no paragraph, sentence or word boundary is near; the cut
token count is still exact). Used only where it is exact: a tokenizer without normalizer whose
pre-tokenizer is ByteLevel(use_regex=True, add_prefix_space=False), whose model is BPE without dropout and
whose post-processor does not trim offsets, and a text that holds none of its added tokens (those are split out before the regex); every other
tokenizer or text takes the tokenizer itself. Whitespace follows the Unicode White_Space property (as the
tokenizer's regex engine does, unlike Python's \\s). tests/datafactory/test_df_word_tokens.py checks the
counts and plans against real encodings.
"""
from __future__ import annotations

import json
import re
from array import array
from bisect import bisect_right
from itertools import repeat
from typing import Any

import numpy as np

from datafactory.byte_words import ASCII_WHITESPACE, OTHER_WHITESPACE, WordTable, takes_fast_path, word_counts
from datafactory.chunking import TokenizedText

_WHITESPACE = re.escape(ASCII_WHITESPACE + OTHER_WHITESPACE)  # Unicode White_Space (byte_words.py)
# a "word" here: a whitespace run and the non-whitespace run after it (or a trailing whitespace run)
WORDS = re.compile(f"[{_WHITESPACE}]*[^{_WHITESPACE}]+|[{_WHITESPACE}]+")
CACHE_LIMIT = 500_000  # distinct words remembered (~60 MB); the cache restarts when full


def _supported(config: dict[str, Any]) -> bool:
    pre, model, post = (config.get(k) or {} for k in ("pre_tokenizer", "model", "post_processor"))
    trims_offsets = post.get("type") == "ByteLevel" and post.get("trim_offsets")  # word spans would be off
    return (config.get("normalizer") is None and not trims_offsets and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
            and model.get("type") == "BPE" and not model.get("dropout"))


class WordCounter:
    """Token counts of one tokenizer by words; `for_backend` says None where counting would not be exact."""

    def __init__(self, backend: Any, specials: list[str]) -> None:
        self.backend = backend
        self.specials = specials
        self.cache: dict[str, int] = {}
        self.word_table = WordTable(CACHE_LIMIT)  # words of up to 16 bytes of long texts, keyed by their bytes
        # the added tokens by first character: a text without any of those characters (prose: none holds
        # "<") is cleared by a scan or two instead of one per added token
        self._specials_by_first: dict[str, list[str]] = {}
        for special in specials:
            self._specials_by_first.setdefault(special[:1], []).append(special)

    @classmethod
    def for_backend(cls, backend: Any) -> "WordCounter | None":
        counter = _COUNTERS.get(id(backend))
        if counter is not None and counter[0] is backend:
            return counter[1]
        to_str = getattr(backend, "to_str", None)  # a wrapper (a test's counting tokenizer) is not counted by words
        config = json.loads(to_str()) if to_str is not None else {}
        made = cls(backend, [t["content"] for t in config.get("added_tokens", [])]) if _supported(config) else None
        _COUNTERS[id(backend)] = (backend, made)
        return made

    def learn(self, words: list[str]) -> None:
        """Count the words not in the cache yet (each encoded alone: exactly its tokens in context)."""
        cache, unique = self.cache, dict.fromkeys(words)
        if len(cache) + len(unique) > CACHE_LIMIT:
            cache.clear()
        missing = [w for w in unique if w not in cache]
        if missing:
            cache.update(zip(missing, self.encode_counts(missing)))

    def encode_counts(self, words: list[str]) -> list[int]:
        """Each word's token count, encoded alone."""
        encoded = self.backend.encode_batch(words, add_special_tokens=False) if len(words) > 4 \
            else [self.backend.encode(w, add_special_tokens=False) for w in words]
        return list(map(len, encoded))

    def holds_special(self, text: str) -> bool:
        """Whether the text holds an added token's text."""
        return any(first in text and any(special in text for special in group)
                   for first, group in self._specials_by_first.items())

    def _counts(self, words: list[str]) -> np.ndarray:
        """Each word's token count (int32), learning the words not in the cache. One look-up a word when
        all are known (a word always has a token, so 0 marks a miss); misses take a second pass."""
        counts = np.fromiter(map(self.cache.get, words, repeat(0)), np.int32, len(words))
        if words and not counts.all():
            missing = [words[i] for i in np.flatnonzero(counts == 0).tolist()]
            if len(self.cache) + len(missing) > CACHE_LIMIT:  # the restart forgets known words: learn them all
                self.cache.clear()
                missing = words
            self.learn(missing)
            counts = np.fromiter(map(self.cache.__getitem__, words), np.int32, len(words))
        return counts

    def word_counts(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(each word's end offset, each word's token count) of the text: in numpy for a long text without
        non-ASCII whitespace (byte_words.py), else by the regex and the string cache."""
        if takes_fast_path(text):
            return word_counts(text, self.word_table, self._counts, self.encode_counts)
        words = WORDS.findall(text)
        return np.fromiter(map(len, words), np.int64, len(words)).cumsum(), self._counts(words)

    def count(self, text: str) -> int | None:
        """The text's token count, or None when it holds an added token's text."""
        if self.holds_special(text):
            return None
        if takes_fast_path(text):
            return int(self.word_counts(text)[1].sum())
        words = WORDS.findall(text)  # a short text (a question, an answer): plain Python beats numpy's calls
        self.learn(words)
        return sum(map(self.cache.__getitem__, words))

    def tokenize(self, text: str, char_start: int, char_end: int) -> "WordTokenizedText | None":
        """text[char_start:char_end] at word level, or None when it holds an added token's text."""
        part = text[char_start:char_end]
        if self.holds_special(part):
            return None
        ends, counts = self.word_counts(part)
        return WordTokenizedText(text, char_start, char_end, np.diff(ends, prepend=0), counts)


_COUNTERS: dict[int, tuple[Any, WordCounter | None]] = {}


def _compact(values: np.ndarray) -> np.ndarray:
    """Non-negative per-word values as uint16 where they fit (a word of 64K characters or tokens: int32)."""
    return values.astype(np.uint16 if not len(values) or int(values.max()) < 1 << 16 else np.int32)


class WordTokenizedText(TokenizedText):
    """A TokenizedText whose token positions come from word boundaries (exact there, interpolated inside a
    word of several tokens).

    It holds each word's characters and tokens (2 bytes each, ~13 KB for a 30 KB document: what a planner
    process pickles back) and builds the cumulative positions only when a position is first asked for; a
    document whose instance takes it whole never needs them in the parent."""

    def __init__(self, text: str, char_start: int, char_end: int, word_chars: np.ndarray,
                 word_tokens: np.ndarray) -> None:
        super().__init__(text, char_start=char_start, char_end=char_end, offsets=((), ()))
        self.word_chars, self.word_tokens = _compact(word_chars), _compact(word_tokens)
        self.n_tokens = int(self.word_tokens.sum(dtype=np.int64))
        self._ends: tuple[array, array] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ends": None}  # the per-word arrays travel; positions are rebuilt on demand

    def _positions(self) -> tuple[array, array]:
        if self._ends is None:
            char_ends, token_ends = array("i"), array("i")
            char_ends.frombytes(self.word_chars.cumsum(dtype=np.int32).tobytes())
            token_ends.frombytes(self.word_tokens.cumsum(dtype=np.int32).tobytes())
            self._ends = char_ends, token_ends
        return self._ends

    @property
    def char_ends(self) -> array:
        """Each word's end, in characters from the region's start."""
        return self._positions()[0]

    @property
    def token_ends(self) -> array:
        """Tokens up to each word's end."""
        return self._positions()[1]

    def _span(self, token: int) -> tuple[int, int] | None:
        char_ends, token_ends = self._positions()
        word = bisect_right(token_ends, token)
        first = token_ends[word - 1] if word else 0
        lo = char_ends[word - 1] if word else 0
        hi = char_ends[word]
        tokens = token_ends[word] - first
        if tokens == 1:
            return lo, hi
        k = token - first
        return lo + (hi - lo) * k // tokens, lo + (hi - lo) * (k + 1) // tokens
